"""Software stacks: which libraries an image (or a native environment) carries, and whether a config can run on it.

The stacks are data (env/stacks.toml, schema "kit.stacks/2"): per stack its Dockerfile, its image variants (each
for one accelerator vendor's devices: lock files, base image, build args) and what it provides (package ->
version, or false). Which variant a host runs is the vendor's to say (kit/vendors: `image_variants`,
`choose_variant`); this module only reads the rows. `kit build --stack NAME`
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

STACKS_SCHEMA = "kit.stacks/2"
STACKS_TOML = Path(__file__).resolve().parents[2] / "env" / "stacks.toml"
LABEL_STACK = "kit.build.stack"
LABEL_LOCK = "kit.build.lock-sha256"
LABEL_VARIANT = "kit.build.variant"
LABEL_CONTENT = "kit.build.content-hash"
UNKNOWN = "unknown"

_TOP = {"schema": str, "default": str, "image_variant_labels": list, "stack": dict, "need": list}
_STACK = {"description": str, "dockerfile": str, "python": str, "variant": list, "provides": dict}
_VARIANT = {"vendor": str, "name": str, "title": str, "short": str, "locks": list, "base": str, "args": dict,
            "dockerfile": str}
_VARIANT_REQUIRED = ("vendor", "name", "short", "locks", "base")
_NEED = {"key": str, "value": (str, int, float, bool), "package": str, "why": str, "instead": str}


class StacksError(ValueError):
    """A stacks file that does not follow the schema; the message names the file and the key."""


@dataclass(frozen=True)
class Variant:
    """One image variant of a stack, for one vendor's devices."""

    vendor: str  # the vendor whose devices it runs on (a kit/vendors name): "nvidia"
    name: str  # what `kit build --variant` takes and the kit.build.variant label holds: "12.1"
    short: str  # the tag's variant part: "cu121"
    locks: tuple[str, ...]  # relative to the build context
    base: str
    title: str = ""  # how reports name it ("CUDA 12.1"); empty: the name
    args: tuple[tuple[str, str], ...] = ()  # build args the Dockerfile takes for it: (("CUDA_VARIANT", "12.1"),)
    dockerfile: str = ""  # the variant's own Dockerfile (relative to the context); empty: the stack's

    @property
    def label(self) -> str:
        return self.title or self.name

    def build_args(self) -> dict[str, str]:
        return dict(self.args)


@dataclass(frozen=True)
class Stack:
    name: str
    description: str
    dockerfile: str
    python: str
    variants: tuple[Variant, ...]  # in order of preference
    provides: dict[str, str | bool] = field(default_factory=dict)

    def variant(self, name: str, vendor: str | None = None) -> Variant | None:
        return next((v for v in self.variants if v.name == name and vendor in (None, v.vendor)), None)

    def of_vendor(self, vendor: str) -> list[Variant]:
        """The variants for one vendor's devices, in order of preference."""
        return [v for v in self.variants if v.vendor == vendor]

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
    variant_labels: tuple[str, ...] = ("kit.build.variant",)  # image labels that name an image's variant, in order

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


def _relative(p: Any) -> bool:
    return isinstance(p, str) and bool(p) and not p.startswith("/") and ".." not in Path(p).parts


def _variant(path: Path, where: str, raw: Any) -> Variant:
    raw = _table(path, where, raw, _VARIANT, _VARIANT_REQUIRED)
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", raw["vendor"]):
        raise _fail(path, f"{where}.vendor", f"{raw['vendor']!r} is not a vendor's name (lower case, like 'amd')")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", raw["name"]):
        raise _fail(path, f"{where}.name", f"{raw['name']!r} is not a variant name (letters, digits, '.', like '12.1')")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", raw["short"]):
        raise _fail(path, f"{where}.short", f"{raw['short']!r} is not a tag part (lower case, like 'cu121')")
    locks = raw["locks"]
    if not locks or not all(_relative(p) for p in locks):
        raise _fail(path, f"{where}.locks", "must be a non-empty list of paths relative to the build context")
    if "dockerfile" in raw and not _relative(raw["dockerfile"]):
        raise _fail(path, f"{where}.dockerfile", "must be a path relative to the build context")
    args = raw.get("args", {})
    for key, value in args.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or not isinstance(value, str):
            raise _fail(path, f"{where}.args.{key}", f"must be a build arg NAME = \"string\", got {value!r}")
    return Variant(raw["vendor"], raw["name"], raw["short"], tuple(locks), raw["base"], raw.get("title", ""),
                   tuple(args.items()), raw.get("dockerfile", ""))  # fmt: skip


def _stack(path: Path, name: str, raw: Any) -> Stack:
    where = f"[stack.{name}]"
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise _fail(path, where, "a stack name is lowercase letters, digits and '-' (it is part of image tags)")
    raw = _table(path, where, raw, _STACK, ("description", "dockerfile", "python", "variant", "provides"))
    variants = tuple(_variant(path, f"{where}.variant #{i + 1}", v) for i, v in enumerate(raw["variant"]))
    if not variants:
        raise _fail(path, f"{where}.variant", "a stack needs at least one image variant")
    keys = [(v.vendor, v.name) for v in variants]
    if len(set(keys)) != len(keys):
        raise _fail(path, f"{where}.variant", "a variant is listed twice (" + ", ".join(f"{a} {n}" for a, n in keys) + ")")
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
    labels = data.get("image_variant_labels", [LABEL_VARIANT])
    if not labels or not all(isinstance(x, str) and x for x in labels):
        raise _fail(p, "image_variant_labels", "must be a non-empty list of label names")
    return Stacks(p, data["default"], stacks, tuple(needs), tuple(labels))


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
    variant = next((labels[k] for k in stacks(path).variant_labels if labels.get(k)), None)
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
        parts.append(variant_title(str(stack["name"]), str(stack["variant"]), stack.get("vendor")))
    return f"{stack['name']} ({', '.join(parts)})"


def variant_title(stack: str, variant: str, vendor: str | None = None) -> str:
    """A variant as reports name it ("CUDA 12.1", its row's title), or the variant as recorded when no row of
    env/stacks.toml has it (an image the kit did not build, a stack since changed)."""
    try:
        st = stacks().stacks.get(stack)
    except StacksError:
        st = None
    row = st.variant(variant, vendor) if st is not None else None
    return row.label if row is not None else variant


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
