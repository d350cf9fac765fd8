"""Software stacks: which libraries an image (or a native environment) carries, and whether a config can run on it.

The stacks are data (env/stacks.toml, schema "kit.stacks/1"): per stack its Dockerfile, its CUDA variants
(lock files and base image) and what it provides (package -> version, or false). `kit build --stack NAME`
builds one; the image then carries the labels `kit.build.stack` and `kit.build.lock-sha256`. The same file
lists what configs need (`[[need]]`: config key = value needs a package), so that `kit run` refuses, before
anything starts, a config its image cannot run (`model.kernels = "liger"` in an image without liger-kernel
would otherwise fail minutes in, after the model loaded).

This module never imports docker, torch or the case: it reads dicts (labels, the resolved config, the case's
environment probe) and answers with dicts and messages.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

STACKS_SCHEMA = "kit.stacks/1"
STACKS_TOML = Path(__file__).resolve().parents[2] / "env" / "stacks.toml"
LABEL_STACK = "kit.build.stack"
LABEL_LOCK = "kit.build.lock-sha256"
LABEL_VARIANT = "kit.build.variant"
LABEL_CONTENT = "kit.build.content-hash"
UNKNOWN = "unknown"

_TOP = {"schema": str, "default": str, "stack": dict, "need": list}
_STACK = {"description": str, "dockerfile": str, "python": str, "variant": list, "provides": dict}
_VARIANT = {"cuda": str, "short": str, "locks": list, "base": str}
_NEED = {"key": str, "value": (str, int, float, bool), "package": str, "why": str, "instead": str}


class StacksError(ValueError):
    """A stacks file that does not follow the schema; the message names the file and the key."""


@dataclass(frozen=True)
class Variant:
    cuda: str  # "12.1"
    short: str  # "cu121": the tag's variant part
    locks: tuple[str, ...]  # relative to the build context
    base: str


@dataclass(frozen=True)
class Stack:
    name: str
    description: str
    dockerfile: str
    python: str
    variants: tuple[Variant, ...]  # in order of preference
    provides: dict[str, str | bool] = field(default_factory=dict)

    def variant(self, cuda: str) -> Variant | None:
        return next((v for v in self.variants if v.cuda == cuda), None)

    def has(self, package: str) -> str | None:
        """The version of `package` this stack installs, or None when it does not."""
        v = self.provides.get(_norm(package))
        return v if isinstance(v, str) and v else None


@dataclass(frozen=True)
class Need:
    key: str  # a dotted config key: "model.kernels"
    value: Any
    package: str
    why: str = ""
    instead: str = ""  # the --set override that runs without the package


@dataclass(frozen=True)
class Stacks:
    path: Path
    default: str
    stacks: dict[str, Stack]
    needs: tuple[Need, ...]

    def get(self, name: str) -> Stack:
        if name not in self.stacks:
            raise StacksError(f"{self.path}: no stack {name!r}; the stacks are {', '.join(self.stacks)}")
        return self.stacks[name]

    def names(self) -> list[str]:
        return list(self.stacks)


def _norm(package: str) -> str:
    """Package names as the index compares them: 'Liger_Kernel' -> 'liger-kernel'."""
    return re.sub(r"[-_.]+", "-", package).lower()


def _fail(path: Path, where: str, why: str) -> StacksError:
    return StacksError(f"{path}: {where}: {why}")


def _table(path: Path, where: str, raw: Any, types: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(path, where, "must be a table")
    unknown = sorted(set(raw) - set(types))
    if unknown:
        raise _fail(path, where, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(types)}")
    for key in required:
        if key not in raw:
            raise _fail(path, where, f"missing {key!r}")
    for key, value in raw.items():
        want = types[key]
        if not isinstance(value, want) or (want is str and not value):
            name = want.__name__ if isinstance(want, type) else "string or number"
            raise _fail(path, f"{where}.{key}", f"must be a {'non-empty ' if want is str else ''}{name}, got {value!r}")
    return raw


def _variant(path: Path, where: str, raw: Any) -> Variant:
    raw = _table(path, where, raw, _VARIANT, tuple(_VARIANT))
    if not re.fullmatch(r"\d+\.\d+", raw["cuda"]):
        raise _fail(path, f"{where}.cuda", f"{raw['cuda']!r} is not a CUDA version like '12.1'")
    if not re.fullmatch(r"cu\d+", raw["short"]):
        raise _fail(path, f"{where}.short", f"{raw['short']!r} is not like 'cu121'")
    locks = raw["locks"]
    if not locks or not all(isinstance(p, str) and p and not p.startswith("/") and ".." not in Path(p).parts
                            for p in locks):  # fmt: skip
        raise _fail(path, f"{where}.locks", "must be a non-empty list of paths relative to the build context")
    return Variant(raw["cuda"], raw["short"], tuple(locks), raw["base"])


def _stack(path: Path, name: str, raw: Any) -> Stack:
    where = f"[stack.{name}]"
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise _fail(path, where, "a stack name is lowercase letters, digits and '-' (it is part of image tags)")
    raw = _table(path, where, raw, _STACK, ("description", "dockerfile", "python", "variant", "provides"))
    variants = tuple(_variant(path, f"{where}.variant #{i + 1}", v) for i, v in enumerate(raw["variant"]))
    if not variants:
        raise _fail(path, f"{where}.variant", "a stack needs at least one CUDA variant")
    cudas = [v.cuda for v in variants]
    if len(set(cudas)) != len(cudas):
        raise _fail(path, f"{where}.variant", f"a CUDA variant is listed twice ({', '.join(cudas)})")
    provides: dict[str, str | bool] = {}
    for pkg, version in raw["provides"].items():
        if not (version is False or (isinstance(version, str) and version)):
            raise _fail(path, f"{where}.provides.{pkg}", f"must be a version string or false, got {version!r}")
        provides[_norm(pkg)] = version
    return Stack(name, raw["description"], raw["dockerfile"], raw["python"], variants, provides)


def load(path: str | Path | None = None) -> Stacks:
    """env/stacks.toml (or `path`), validated; StacksError names the file and the key."""
    p = Path(path) if path is not None else STACKS_TOML
    try:
        data = tomllib.loads(p.read_text())
    except OSError as e:
        raise StacksError(f"{p}: cannot be read ({e.strerror or e})") from e
    except tomllib.TOMLDecodeError as e:
        raise StacksError(f"{p}: not valid TOML ({e})") from e
    if data.get("schema") != STACKS_SCHEMA:
        raise StacksError(f"{p}: schema = {data.get('schema')!r}, expected {STACKS_SCHEMA!r}")
    _table(p, "top level", data, _TOP, ("schema", "default", "stack"))
    stacks = {name: _stack(p, name, raw) for name, raw in data["stack"].items()}
    if data["default"] not in stacks:
        raise _fail(p, "default", f"{data['default']!r} is not a stack here ({', '.join(stacks)})")
    needs = []
    for i, raw in enumerate(data.get("need", [])):
        raw = _table(p, f"[[need]] #{i + 1}", raw, _NEED, ("key", "value", "package"))
        needs.append(Need(raw["key"], raw["value"], _norm(raw["package"]), raw.get("why", ""), raw.get("instead", "")))
    return Stacks(p, data["default"], stacks, tuple(needs))


@functools.lru_cache(maxsize=4)
def _cached(path: Path) -> Stacks:
    return load(path)


def stacks(path: str | Path | None = None) -> Stacks:
    """The stacks file, read once per process."""
    return _cached(Path(path) if path is not None else STACKS_TOML)


# ---- what an image or an environment is ----


def image_stack(labels: dict[str, str] | None, path: str | Path | None = None) -> dict[str, Any]:
    """An image's stack from its labels: {"name", "lock_sha256", "variant"}.

    `kit build --stack X` labels the image `kit.build.stack=X`. A reference build made before stacks existed
    has no such label, but it carries the build's labels (content hash, variant, lock sha256) with a variant
    of the reference stack: that is the reference. Anything else (a hand-made image, another builder's) is
    "unknown": nothing says which libraries it holds.
    """
    labels = labels or {}
    lock = labels.get(LABEL_LOCK) or labels.get("kit.lock.sha256")
    lock = lock if lock and lock != "unknown" else None
    variant = labels.get(LABEL_VARIANT) or labels.get("kit.cuda")
    name = labels.get(LABEL_STACK)
    if not name:
        ref = stacks(path).get("reference") if "reference" in stacks(path).stacks else None
        built_by_kit = bool(labels.get(LABEL_CONTENT) and labels.get(LABEL_VARIANT) and labels.get(LABEL_LOCK))
        name = "reference" if built_by_kit and ref is not None and ref.variant(labels[LABEL_VARIANT]) else UNKNOWN
    return {"name": name, "lock_sha256": lock, "variant": variant}


def native_stack(probe: dict[str, Any] | None, path: str | Path | None = None) -> dict[str, Any]:
    """A native run's stack from the case's environment probe (cases/<case>/env.py: its `versions`).

    {"name": "native", "packages": {package: version or None}, "python": ..., "matches": stack or None}:
    `matches` names the stack whose every provided version the environment has (the bench/results GPU
    figures ran natively on the current stack's versions), else None.
    """
    probe = probe or {}
    versions = probe.get("versions") if isinstance(probe.get("versions"), dict) else {}
    packages = {_norm(k): v for k, v in versions.items()}
    matches = None
    for st in stacks(path).stacks.values():
        if st.provides and all(packages.get(k) == v if v else not packages.get(k) for k, v in st.provides.items()):
            matches = st.name
            break
    return {"name": "native", "packages": packages, "python": probe.get("python"), "matches": matches}


def provided(stack: dict[str, Any], package: str, path: str | Path | None = None) -> str | None | bool:
    """The version of `package` in a stack record (image_stack's or native_stack's); None when absent;
    False when the record cannot tell (an unknown image)."""
    package = _norm(package)
    if stack.get("name") == "native":
        v = (stack.get("packages") or {}).get(package)
        return v if v else None
    all_stacks = stacks(path).stacks
    if stack.get("name") not in all_stacks:
        return False
    return all_stacks[stack["name"]].has(package)


def describe(stack: dict[str, Any] | None) -> str:
    """One line: 'current (lock 1a2b3c4d5e6f, CUDA 13.0)', 'native (torch 2.11.0, ...)', 'unknown'."""
    if not isinstance(stack, dict) or not stack.get("name"):
        return "unknown (not recorded)"
    if stack["name"] == "native":
        pk = stack.get("packages") or {}
        libs = ", ".join(f"{k} {pk[k]}" for k in ("torch", "deepspeed", "transformers", "liger-kernel", "flash-attn")
                         if pk.get(k))  # fmt: skip
        like = f"; the {stack['matches']} stack's versions" if stack.get("matches") else ""
        return f"native ({libs or 'no versions recorded'}{like})"
    lock = stack.get("lock_sha256")
    parts = [f"lock {lock[:12]}" if lock else "lock unknown"]
    if stack.get("variant"):
        parts.append(f"CUDA {stack['variant']}" if re.fullmatch(r"\d+\.\d+", str(stack["variant"])) else str(stack["variant"]))
    return f"{stack['name']} ({', '.join(parts)})"


# ---- what a config needs ----


def _lookup(cfg: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def config_needs(cfg_dict: dict[str, Any], path: str | Path | None = None) -> list[Need]:
    """The needs (env/stacks.toml [[need]]) the resolved config (cfg.to_dict()) has."""
    out = []
    for need in stacks(path).needs:
        found, value = _lookup(cfg_dict, need.key)
        if found and value == need.value:
            out.append(need)
    return out


def config_problem(cfg_dict: dict[str, Any], stack: dict[str, Any], image: str, path: str | Path | None = None) -> str | None:
    """None when `stack` (image_stack's or native_stack's record) provides every need of the resolved config;
    else the message: the config key and value, the image and its stack, and what works instead."""
    all_stacks = stacks(path)
    problems = []
    for need in config_needs(cfg_dict, path):
        have = provided(stack, need.package, path)
        if have:
            continue
        setting = f"{need.key} = {need.value!r}"
        why = f" ({need.why})" if need.why else ""
        if have is False:
            state = (f"the image {image} has no kit stack labels ({LABEL_STACK}), so nothing shows that it has "
                     f"{need.package} (it was not built by `kit build`)")  # fmt: skip
        elif stack.get("name") == "native":
            state = f"this Python environment ({describe(stack)}) has no {need.package}"
        else:
            state = f"the image {image} is of the stack {describe(stack)}, which has no {need.package}"
        offers = [s for s in all_stacks.stacks.values() if s.has(need.package)]
        fixes = []
        if stack.get("name") == "native":
            version = offers[0].has(need.package) if offers else None
            fixes.append(f"pip install {need.package}" + (f"=={version}" if version else ""))
        for s in offers:
            fixes.append(f"`kit build --stack {s.name}`, then run with --image TAG (the tag it prints)")
        if need.instead:
            fixes.append(f"run without it: --set {need.instead}")
        problems.append(f"the config sets {setting}, which needs {need.package}{why}, but {state}; fix: "
                        + "; or ".join(fixes))  # fmt: skip
    return "\n".join(problems) if problems else None


# ---- what a run ran on (run.json `stack`, written by `kit run`) ----


def run_stack(run: dict[str, Any] | None, environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """run.json's `stack` record; {"name": "unknown"} for a run made before the kit recorded it. A native run's
    versions are known only once the environment probe ran, after run.json was written: environment.json's
    `stack` then completes it."""
    st = (run or {}).get("stack")
    later = (environment or {}).get("stack")
    if isinstance(later, dict) and later.get("name") and (not isinstance(st, dict) or not st.get("packages")):
        if not isinstance(st, dict) or st.get("name") in (None, "native"):
            return later
    return st if isinstance(st, dict) and st.get("name") else {"name": UNKNOWN, "lock_sha256": None, "variant": None}


def stack_key(stack: dict[str, Any] | None) -> tuple[str, str]:
    """What decides whether two runs ran the same software stack: the name and the lock (native: the versions)."""
    st = stack if isinstance(stack, dict) and stack.get("name") else {"name": UNKNOWN}
    if st["name"] == "native":
        pk = st.get("packages") or {}
        return "native", ",".join(f"{k}={pk[k]}" for k in sorted(pk))
    return str(st["name"]), str(st.get("lock_sha256") or "")
