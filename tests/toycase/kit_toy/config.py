"""The toy case's config schema: the few fields the host reads of any case's config, and its own."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    pass


@dataclass
class Stage:
    micro_batch: int = 8
    global_batch: int = 32
    zero_stage: int = 0
    lr: float = 0.05
    steps: int = 12
    template: str = "plain"


@dataclass
class Data:
    skip_bad_records: int = 0
    num_workers: int = 0


@dataclass
class Train:
    seed: int = 7


@dataclass
class Quiz:
    questions: int = 24


@dataclass
class Model:
    width: int = 16


@dataclass
class Config:
    name: str = "tiny"
    description: str = ""
    device: str = "cpu"
    nodes: int = 1
    gpus_per_node: int = 2
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    train: Train = field(default_factory=Train)
    fit: Stage = field(default_factory=Stage)
    quiz: Quiz = field(default_factory=Quiz)
    path: str = ""

    def stage(self, name: str) -> Stage:
        return self.fit

    def grad_accum(self, stage: str, world: int) -> int:
        s = self.stage(stage)
        if s.global_batch % (s.micro_batch * world):
            raise ConfigError(f"stage {stage}: global_batch {s.global_batch} is not a multiple of micro_batch "
                              f"{s.micro_batch} x {world} ranks")
        return s.global_batch // (s.micro_batch * world)

    def check_world_size(self, world: int, stages: Any = ("fit",)) -> None:
        for s in stages:
            self.grad_accum(s, world)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d


def _parse(data: dict[str, Any], name: str) -> Config:
    try:
        return Config(name=data.get("name", name), description=data.get("description", ""),
                      device=data.get("device", "cpu"), nodes=int(data.get("nodes", 1)),
                      gpus_per_node=int(data.get("gpus_per_node", 2)), model=Model(**data.get("model", {})),
                      data=Data(**data.get("data", {})), train=Train(**data.get("train", {})),
                      fit=Stage(**data.get("fit", {})), quiz=Quiz(**data.get("quiz", {})))
    except TypeError as e:
        raise ConfigError(f"config {name}: {e}") from None


def load(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    p = Path(name_or_path)
    if not p.suffix:
        p = CONFIG_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        raise ConfigError(f"no config {name_or_path!r}; available: {', '.join(available())}")
    data = tomllib.loads(p.read_text())
    for item in overrides:
        key, _, raw = item.partition("=")
        *heads, leaf = key.strip().split(".")
        node = data
        for h in heads:
            node = node.setdefault(h, {})
        node[leaf] = tomllib.loads(f"v = {raw}")["v"] if raw.strip()[:1].isdigit() or raw.strip()[:1] in "-[\"" else raw
    cfg = _parse(data, p.stem)
    cfg.path = str(p)
    return cfg


def available() -> list[str]:
    return sorted(q.stem for q in CONFIG_DIR.glob("*.toml"))


def default_for(nodes: int, gpus: int | None) -> str:
    return "tiny"


def dumps(cfg: Config) -> str:
    lines = []
    d = cfg.to_dict()
    for k, v in d.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_value(v)}")
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace('"', '\\"') + '"'
