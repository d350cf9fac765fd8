"""The cases this kit knows: where their code, configs and reference table live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    name: str
    package: str  # importable inside the container (or natively)
    stages: tuple[str, ...]  # the order of `--stage all`
    entry: tuple[tuple[str, str], ...]  # stage -> the case module that runs it under torchrun

    @property
    def dir(self) -> Path:
        return ROOT / "cases" / self.name

    @property
    def reference(self) -> Path:
        return self.dir / "reference.toml"

    def module(self, name: str) -> str:
        return f"{self.package}.{name}"

    def stage_module(self, stage: str) -> str:
        return self.module(dict(self.entry)[stage])


CASES = {
    "llava1_5_7b": Case(
        "llava1_5_7b",
        "cases.llava1_5_7b",
        ("pretrain", "finetune", "eval"),
        (("pretrain", "train"), ("finetune", "train"), ("eval", "evaluate")),
    )
}


class UnknownCase(KeyError):
    def __str__(self) -> str:
        return f"unknown case {self.args[0]!r}; known cases: {', '.join(CASES)}"


def get(name: str) -> Case:
    try:
        return CASES[name]
    except KeyError:
        raise UnknownCase(name) from None


def config_module(case: Case):
    """The case's config schema (standard library only: no torch on the host)."""
    import importlib

    return importlib.import_module(case.module("config"))


def load_config(case: Case, name: str, overrides: list[str] | tuple[str, ...] = ()):
    return config_module(case).load(name, overrides)
