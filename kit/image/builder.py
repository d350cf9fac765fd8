"""`kit build`: the image of one software stack and image variant, tagged by what it is made of, with a record of
what it was built on.

Stacks (env/stacks.toml, kit/image/stacks.py): `reference` (the default: the reference's pins, Dockerfile) and
`current` (the versions of the bench/results GPU figures, Dockerfile.current). The reference's plan is exactly
what it was before stacks existed (same hash inputs, tag, args and labels); another stack adds `stack NAME` to
the hash, its name to the tag (kit-llava:VERSION-NAME-cuXXX-HASH12) and the label kit.build.stack=NAME.

Two steps, so that the decisions are testable without an engine:

- `plan_build(...)` decides everything: the vendor and the variant (each variant of env/stacks.toml is for one
  vendor's devices; with `variant="auto"` the vendor of this host's devices picks the one its driver runs), the
  base image, the lock files, the content hash, the tag, the build args and labels, and the exact SDK call. It
  touches no engine; `kit build --dry-run` prints it.
- `run_build(plan, client, console)` makes that call on the Docker engine (`client.api.build`, the classic
  builder with `pull=False`, so the base image the build uses is exactly the one whose digest is recorded),
  streams its output, and writes the build record `<results>/builds/<tag>.json` (`:` and `/` become `_`)
  next to the full log `<tag>.log`.

Content hash: sha256 over the Dockerfile, the variant's lock file(s), kit's version, the variant, the base
image reference and any extra `--build-arg` that changes what is installed (the index URLs, CA bundle and
MAX_JOBS do not: every package is pinned by its sha256). The same inputs give the same tag, so a tag never
silently changes meaning; different inputs give a different tag.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kit import __version__, vendors
from kit import case as cases
from kit.checks import docker as dc
from kit.image.stacks import StacksError, stacks
from kit.vendors.base import VariantChoice
from kit.vendors.images import first_variant, not_yet

KIT_ROOT = Path(__file__).resolve().parents[2]
REFERENCE = "reference"


def stack_variants(name: str = REFERENCE, vendor: str | None = None) -> dict[str, dict[str, Any]]:
    """Variant -> lock files (relative to the build context: the Dockerfile COPYs env/lock-*.txt from there) and
    the default base image (each lock's "# base-image:" line wins when present), from env/stacks.toml, in the
    stack's order of preference; only `vendor`'s variants when named."""

    return {v.name: {"short": v.short, "locks": list(v.locks), "base": v.base}
            for v in stacks().get(name).variants if vendor in (None, v.vendor)}  # fmt: skip


def __getattr__(name: str) -> Any:
    """`VARIANTS`: the reference stack's variants (they agree with the Dockerfile), read from env/stacks.toml when
    first asked for, never at import: kit installed without the source tree (in an image) must still start."""
    if name == "VARIANTS":
        return stack_variants(REFERENCE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The CA bundle is copied into the context under this name for the build and removed afterwards; the
# Dockerfile's CA_BUNDLE arg is a path in the context (it COPYs it and installs it as a system CA).
CA_IN_CONTEXT = ".kit-build-ca.crt"
# Build args kit sets itself, each with the option that sets it (and those of the variant's row: --variant).
RESERVED_ARGS = {
    "BASE_IMAGE": "--base-image", "KIT_VERSION": "(kit's own version)", "KIT_LOCK_SHA256": "(computed from the lock)",
    "PIP_INDEX_URL": "--pip-index-url", "CA_BUNDLE": "--ca-bundle",
}  # fmt: skip
# Build args that change how packages are fetched or built, not which (every package is hash-pinned).
TRANSPORT_ARGS = {"PIP_EXTRA_INDEX_URL", "TORCH_INDEX_URL", "DEADSNAKES_URL", "KEYSERVER_URL", "MAX_JOBS",
                  "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}
LOCK_FIX = ("run `bash env/lock.sh` on a machine that reaches PyPI (and download.pytorch.org for a variant whose torch "
            "comes from there), then build again")
TAG_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?$")
LABEL_PREFIX = "kit.build"


class BuildRequestError(ValueError):
    """The request cannot be built as asked (exit 2): nothing was sent to the engine."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(f"{message}; fix: {fix}" if fix else message)
        self.message, self.fix = message, fix


class EngineUnavailable(RuntimeError):
    """No engine to build on, or no base image it can use (exit 3)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(f"{message}; fix: {fix}")
        self.message, self.fix = message, fix


class BuildFailed(RuntimeError):
    """The engine ran the build and it failed (exit 1); `step` is the Dockerfile step that failed."""

    def __init__(self, message: str, step: str | None, log: Path | None) -> None:
        super().__init__(message)
        self.message, self.step, self.log = message, step, log


@dataclass
class BuildPlan:
    variant: str  # a variant's name in env/stacks.toml: "12.1" or "11.8" (reference), "13.0" (current)
    variant_reason: str  # why this variant (explicit, or the vendor's verdict on this host's driver)
    base_image: str
    dockerfile: Path
    context: Path
    locks: list[Path]
    lock_sha256: str  # sha256 of the variant's lock file(s), concatenated in order (= `cat LOCKS | sha256sum`)
    content_hash: str
    tag: str
    build_args: dict[str, str]
    labels: dict[str, str]
    ca_bundle: Path | None = None  # the host file; copied to CONTEXT/CA_IN_CONTEXT during the build
    results: Path = Path("runs")
    warnings: list[str] = field(default_factory=list)
    stack: str = REFERENCE  # env/stacks.toml
    vendor: str = ""  # the vendor whose devices the variant runs on (kit/vendors)
    variant_title: str = ""  # how reports name the variant ("CUDA 12.1")

    @property
    def record_path(self) -> Path:
        return self.results / "builds" / f"{safe_name(self.tag)}.json"

    @property
    def log_path(self) -> Path:
        return self.results / "builds" / f"{safe_name(self.tag)}.log"

    def dockerfile_arg(self) -> str:
        """The Dockerfile as the SDK wants it: relative to the context when inside it (the SDK ships an outside
        Dockerfile itself)."""
        try:
            return str(self.dockerfile.relative_to(self.context))
        except ValueError:
            return str(self.dockerfile)

    def sdk_call(self) -> dict[str, Any]:
        """The keyword arguments of `client.api.build` (pull=False: build on the base image whose digest is recorded)."""
        return {
            "path": str(self.context), "dockerfile": self.dockerfile_arg(), "tag": self.tag,
            "buildargs": dict(self.build_args), "labels": dict(self.labels), "rm": True, "forcerm": True,
            "pull": False, "decode": True,
        }  # fmt: skip

    def sdk_call_text(self) -> str:
        shown = self.sdk_call()
        shown["buildargs"] = redact_args(shown["buildargs"])
        return "client.api.build(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("dockerfile", "context", "ca_bundle", "results"):
            d[k] = None if d[k] is None else str(d[k])
        d["locks"] = [str(p) for p in self.locks]
        d["build_args"] = redact_args(self.build_args)
        d["sdk_call"] = self.sdk_call_text()
        d["record"] = str(self.record_path)
        return d


def safe_name(tag: str) -> str:
    return re.sub(r"[/:@]", "_", tag)


def redact_url(url: str) -> str:
    """An index URL without its password or token (they end up in shell history and records otherwise)."""
    parts = urlsplit(url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else f"***@{host}"))


def redact_args(args: dict[str, str]) -> dict[str, str]:
    return {k: redact_url(v) if "://" in v else v for k, v in args.items()}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_build_args(items: list[str] | None, reserved: dict[str, str] | None = None) -> dict[str, str]:
    """['K=V', ...] -> {K: V}; a reserved key (RESERVED_ARGS, and the variant's own args) is refused with the option
    that sets it."""
    reserved = RESERVED_ARGS if reserved is None else reserved
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise BuildRequestError(f"--build-arg {item!r} is not KEY=VALUE", "write it as --build-arg MAX_JOBS=8")
        if key in reserved:
            raise BuildRequestError(f"--build-arg {key} is set by kit build", f"use {reserved[key]} instead")
        out[key] = value
    return out


def _flag(vendor: Any) -> str:
    """The option a vendor's variants are asked by: its own (--cuda), else --variant."""
    return getattr(vendor, "variant_option", "") or "--variant"


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _same_version(a: str, b: str) -> bool:
    """'11.8' names the same variant as '11.8' and '11.8.0' (a base image's tag is often more precise)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _vendor_variants(stack: str) -> dict[str, tuple[Any, list[Any]]]:
    """name -> (vendor, its variants of `stack`) for every registered vendor that has some; a vendor package that
    does not load is left out (`kit build --vendor NAME` names its error)."""

    out: dict[str, tuple[Any, list[Any]]] = {}
    for name in vendors.names():
        try:
            v = vendors.get(name)
            rows = list(v.image_variants(stack))
        except Exception:  # noqa: BLE001 - one broken plug-in does not stop a build for another vendor
            continue
        if rows:
            out[name] = (v, rows)
    return out


def _named_vendor(name: str, stack: str) -> tuple[Any, list[Any]]:

    try:
        v = vendors.get(name)
    except vendors.UnknownVendor as e:
        raise BuildRequestError(str(e), f"pass --vendor {' or --vendor '.join(vendors.names())}") from None
    images = getattr(v, "image_variants", None)  # a vendor package from before images were the vendor's has none
    return v, list(images(stack)) if images else []


def _not_yet(v: Any, stack: str) -> BuildRequestError:

    c = not_yet(v, stack)
    return BuildRequestError(c.reason, c.fix)


def choose(stack: str, asked: str = "auto", vendor: str | None = None, driver: Any = None) -> tuple[Any, Any, Any]:
    """(vendor, variant row, VariantChoice) for a build of `stack`; BuildRequestError with the fix when none fits.

    The vendor: `vendor` when named (KIT_VENDOR too, with "auto"); with an explicit variant, the one whose variants
    have it; with "auto", the vendor of this host's devices (the only one with variants of the stack when no devices are
    found here, or when `driver` is given: a reading of the driver the vendor takes, such as NVIDIA's driver
    version or an opened NVML). The variant: `asked`, else the vendor's `choose_variant` on this host's driver.
    """

    owners = _vendor_variants(stack)
    # KIT_VENDOR names this host's vendor: it decides "auto" on this host, not a given reading or an explicit variant
    name = vendor or (vendors.forced() if asked == "auto" and driver is None else None)
    if name:
        v, rows = _named_vendor(name, stack)
        if not rows:
            raise _not_yet(v, stack)
    elif asked != "auto":
        having = [n for n, (_, rows) in owners.items() if any(r.name == asked for r in rows)]
        if len(having) > 1:
            raise BuildRequestError(f"variant {asked!r} of the {stack} stack is one of several vendors' "
                                    f"({', '.join(having)})", f"pass --vendor {' or --vendor '.join(having)}")  # fmt: skip
        pick = having[0] if having else (next(iter(owners)) if len(owners) == 1 else None)
        if pick is None:
            listed = "; ".join(f"{n}: {', '.join(r.name for r in rows)} ({_flag(o)})" for n, (o, rows) in owners.items())
            raise BuildRequestError(f"--variant {asked!r} is not a variant of the {stack} stack ({listed})",
                                    "pass --variant auto or one of them (with --vendor NAME)")  # fmt: skip
        v, rows = owners[pick]
    elif driver is not None or len(owners) <= 1:
        if not owners:
            raise BuildRequestError(f"the {stack} stack has no image variant for any registered vendor",
                                    "add one to env/stacks.toml, or install the vendor's package (docs/vendors.md)")
        v, rows = next(iter(owners.values()))
        if driver is None:
            here, probe = vendors.detect()
            if here.name != v.name and here.name != vendors.FALLBACK:
                raise _not_yet(here, stack)  # this host's devices are another vendor's
            driver = probe if here.name == v.name else None
    else:
        here, probe = vendors.detect()
        if here.name not in owners:
            if here.name != vendors.FALLBACK:
                raise _not_yet(here, stack)
            listed = "; ".join(f"{_flag(o)} {_or([r.name for r in rows])} (--vendor {n})" for n, (o, rows) in owners.items())
            raise BuildRequestError(f"--variant auto reads this host's devices, and no vendor finds any here "
                                    f"({probe.reason or 'none found'})",
                                    f"pass the variant for the host the image will run on: {listed}")  # fmt: skip
        v, rows = owners[here.name]
        driver = probe
    flag = _flag(v)
    names = [r.name for r in rows]
    if asked == "auto":
        pick_one = getattr(v, "choose_variant", None)
        if pick_one is None:

            pick_one = lambda probe, stack: first_variant(v, probe, stack)  # noqa: E731 - the default, inline
        choice = pick_one(driver if driver is not None else v.probe(), stack)
        if choice.variant is None:
            raise BuildRequestError(choice.reason, choice.fix)
        if choice.variant not in names:
            raise BuildRequestError(f"the {v.title} vendor chose variant {choice.variant!r}, which is not one of its "
                                    f"variants of the {stack} stack ({', '.join(names)})", f"pass {flag} {_or(names)}")  # fmt: skip
    elif asked in names:
        choice = VariantChoice(asked, f"{flag} {asked}")
    else:

        elsewhere = [s for s in stacks().names() if s != stack and any(r.name == asked for r in v.image_variants(s))]
        where = "" if stack == stacks().default else f" of the {stack} stack (its variants: {', '.join(names)})"
        raise BuildRequestError(f"{flag} {asked!r} is not a variant{where}", f"pass {flag} {_or(['auto', *names])}"
                                + (f"; {flag} {asked} is a variant of: --stack {', '.join(elsewhere)}" if elsewhere else ""))  # fmt: skip
    row = next(r for r in rows if r.name == choice.variant)
    return v, row, choice


def _read_lock(path: Path, variant: str, stack: str = REFERENCE, others: str = "") -> None:
    """Refuse a lock that is missing, or that pins something without its hash (pip --require-hashes would stop
    an hour in; better now). `variant` as reports name it ("CUDA 11.8"); `others`: how to build another variant."""
    lock_fix = LOCK_FIX if stack == REFERENCE else LOCK_FIX.replace("`bash env/lock.sh`", f"`bash env/lock.sh {stack}`")
    what = variant if stack == REFERENCE else f"{stack} stack's {variant}"
    if not path.is_file():
        raise BuildRequestError(f"the {what} lock {path} is missing", lock_fix)
    for line in path.read_text().splitlines():
        req = line.strip()
        if req and not req.startswith("#") and "--hash=sha256:" not in req:
            name = req.split()[0]
            fix = lock_fix
            if "+" in name:  # a local version (torch==2.1.2+cu118): a build the PyTorch index serves, not PyPI
                fix = ("run `bash env/lock.sh` on a machine that reaches https://download.pytorch.org/whl (or set "
                       "TORCH_INDEX_URL to a mirror of it), then build again" + (f"; or build {others}" if others else ""))
            raise BuildRequestError(f"{path} pins {name} without its sha256: the {what} image cannot be "
                                    "built from it", fix)


def _lock_base(path: Path) -> str | None:
    m = re.search(r"^# base-image:\s*(\S+)", path.read_text(), re.M)
    return m.group(1) if m else None


def _excluded_by_dockerignore(context: Path, rel: str) -> bool:
    ignore = context / ".dockerignore"
    if not ignore.is_file():
        return False
    from docker.utils.build import PatternMatcher

    patterns = [p.strip() for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")]
    return PatternMatcher(patterns).matches(rel)


def plan_build(
    root: Path | str = KIT_ROOT,
    variant: str = "auto",
    base_image: str | None = None,
    tag: str | None = None,
    dockerfile: Path | str | None = None,
    build_args: list[str] | dict[str, str] | None = None,
    pip_index_url: str | None = None,
    ca_bundle: Path | str | None = None,
    driver: Any = None,
    *,
    context: Path | str | None = None,
    results: Path | str = "runs",
    stack: str | None = None,
    vendor: str | None = None,
) -> BuildPlan:
    """Decide the whole build; raise BuildRequestError (with the fix) for anything that cannot be built.

    `root` is the kit checkout (the default context, holding Dockerfile and env/). `variant` names one of the
    stack's variants, or "auto": the vendor's choice for this host's driver. `driver` is used only with "auto":
    a Probe or a reading the vendor takes (NVIDIA: a driver version string or an opened NVML), None to ask this
    host. `stack` names a stack of env/stacks.toml (None: its default, the reference); `vendor` a registered
    vendor (None: the one of the variant, or of this host's devices).
    """

    try:
        all_stacks = stacks()
        stack = stack or all_stacks.default
        spec_stack = all_stacks.get(stack)
    except StacksError as e:
        raise BuildRequestError(str(e), f"pass --stack {' or --stack '.join(stacks().names())}"
                                if "no stack" in str(e) else "fix env/stacks.toml") from None  # fmt: skip

    root = Path(root).resolve()
    ctx = Path(context).resolve() if context else root
    if not ctx.is_dir():
        raise BuildRequestError(f"the build context {ctx} is not a directory", "pass --context DIR (the kit checkout)")
    owner, row, choice = choose(stack, variant, vendor, driver)
    variant, reason, warnings = row.name, choice.reason, list(choice.warnings)
    flag = _flag(owner)
    df = Path(dockerfile) if dockerfile else ctx / (row.dockerfile or spec_stack.dockerfile)
    df = df if df.is_absolute() else (Path.cwd() / df if dockerfile else df)
    df = df.resolve()
    if not df.is_file():
        raise BuildRequestError(f"no Dockerfile at {df}", "pass --file PATH or --context DIR (the kit checkout)")
    spec = {"short": row.short, "locks": list(row.locks), "base": row.base}
    others = [f"{flag} {r.name}" for r in owner.image_variants(stack) if r.name != variant]
    locks = [ctx / p for p in spec["locks"]]
    for lock in locks:
        _read_lock(lock, row.label, stack, _or(others) if others else "")
    lock_sha = hashlib.sha256(b"".join(p.read_bytes() for p in locks)).hexdigest()

    default_base = _lock_base(locks[0]) or spec["base"]
    base = base_image or default_base
    base_variant = owner.base_variant(base) if hasattr(owner, "base_variant") else None
    if base_variant and not _same_version(base_variant, variant):
        label = getattr(owner, "variant_label", owner.title)
        raise BuildRequestError(f"--base-image {base} is a {label} {base_variant} image, but the variant is {row.label}",
                                f"pass {flag} {base_variant}, or --base-image {default_base}")  # fmt: skip

    reserved = {**RESERVED_ARGS, **{k: flag for k in row.build_args()}}
    extra = parse_build_args(list(build_args), reserved) if isinstance(build_args, list) else dict(build_args or {})
    for key in extra:
        if key in reserved:
            raise BuildRequestError(f"--build-arg {key} is set by kit build", f"use {reserved[key]} instead")

    h = hashlib.sha256()
    h.update(b"kit-build v1\n")
    if stack != REFERENCE:  # the reference's hash inputs are what they were before stacks existed
        h.update(f"stack {stack}\n".encode())
    h.update(f"dockerfile {sha256_file(df)}\n".encode())
    for lock in locks:
        h.update(f"lock {lock.name} {sha256_file(lock)}\n".encode())
    h.update(f"kit {__version__}\nvariant {variant}\nbase {base}\n".encode())
    for key in sorted(k for k in extra if k not in TRANSPORT_ARGS):
        h.update(f"arg {key}={extra[key]}\n".encode())
    content_hash = h.hexdigest()

    flavour = spec["short"] if stack == REFERENCE else f"{stack}-{spec['short']}"
    tag = tag or f"{cases.only().image_repository}:{__version__}-{flavour}-{content_hash[:12]}"
    if not TAG_RE.match(tag):
        raise BuildRequestError(f"--tag {tag!r} is not a valid image reference",
                                f"use lowercase NAME[:TAG], e.g. --tag {cases.only().image_repository}:mine")

    args = {**row.build_args(), "BASE_IMAGE": base, "KIT_VERSION": __version__, "KIT_LOCK_SHA256": lock_sha}
    if pip_index_url:
        if not re.match(r"^https?://", pip_index_url):
            raise BuildRequestError(f"--pip-index-url {pip_index_url!r} is not an http(s) URL",
                                    "pass the index's simple/ URL, e.g. https://mirror.example/simple")
        args["PIP_INDEX_URL"] = pip_index_url
        if redact_url(pip_index_url) != pip_index_url:
            warnings.append("the --pip-index-url credentials are redacted in kit's output and record, but build "
                            "args stay readable in the image (`docker history`); prefer a token-free mirror")
    ca = None
    if ca_bundle:
        ca = Path(ca_bundle).resolve()
        if not ca.is_file():
            raise BuildRequestError(f"--ca-bundle {ca} is not a file", "pass the PEM file of the proxy's CA")
        if b"-----BEGIN CERTIFICATE-----" not in ca.read_bytes()[:1 << 20]:
            raise BuildRequestError(f"--ca-bundle {ca} holds no PEM certificate",
                                    "convert it: `openssl x509 -inform DER -in CA.der -out CA.pem`")
        if _excluded_by_dockerignore(ctx, CA_IN_CONTEXT):
            raise BuildRequestError(f"{ctx / '.dockerignore'} excludes {CA_IN_CONTEXT}, where kit puts the CA bundle",
                                    f"add the line `!{CA_IN_CONTEXT}` to it")
        args["CA_BUNDLE"] = CA_IN_CONTEXT
    args.update(extra)
    if not (ctx / ".dockerignore").is_file():
        warnings.append(f"no .dockerignore in {ctx}: the whole directory (.venv included) is sent to the engine")

    labels = {
        f"{LABEL_PREFIX}.content-hash": content_hash,
        f"{LABEL_PREFIX}.variant": variant,
        f"{LABEL_PREFIX}.kit-version": __version__,
        f"{LABEL_PREFIX}.lock-sha256": lock_sha,
        "org.opencontainers.image.base.name": base,
    }
    if stack != REFERENCE:  # a reference image is known by its variant label (kit.image.stacks.image_stack)
        labels[f"{LABEL_PREFIX}.stack"] = stack
    return BuildPlan(variant, reason, base, df, ctx, locks, lock_sha, content_hash, tag, args, labels, ca,
                     Path(results), warnings, stack, owner.name, row.label)


# --- the engine side ------------------------------------------------------------------------------------


def connect(base_url: str | None = None, timeout: float = 60) -> Any:
    """A client that answered a ping, or EngineUnavailable with kit check-host's wording and fix."""
    import docker


    url = base_url or os.environ.get("DOCKER_HOST") or dc.DEFAULT_SOCKET
    try:
        client = docker.DockerClient(base_url=base_url, timeout=timeout) if base_url else docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as e:  # noqa: BLE001 - every way of not reaching the engine is one answer
        check = dc._unreachable(url, e)
        raise EngineUnavailable(check.detail, check.fix) from None


def base_image_identity(client: Any, ref: str, console: Any = None) -> dict[str, Any]:
    """The base image as the build will use it: its id and registry digest (pulled first when missing).

    `digest` is the registry digest (`RepoDigests[0]`, e.g. nvidia/cuda@sha256:...) when the image came from a
    registry; an image that exists only locally (built or imported here) has none, and its image id stands in
    (`digest_kind` says which).
    """
    import docker

    try:
        image = client.images.get(ref)
        pulled = False
    except docker.errors.ImageNotFound:
        if console is not None:
            console.print(f"base image {ref} is not on this host; pulling it")
        try:
            client.images.pull(ref)
            image = client.images.get(ref)
            pulled = True
        except Exception as e:  # noqa: BLE001 - unreachable registry, unknown name, auth: all the same answer here
            raise EngineUnavailable(
                f"the base image {ref} is not on this host and cannot be pulled ({str(e).strip()[-300:]})",
                f"`docker pull {ref}` on a machine with registry access, then move it here with `docker save {ref} "
                f"| ssh THIS-HOST docker load`; or pass --base-image IMAGE, an image on this host",
            ) from None
    repo_digests = image.attrs.get("RepoDigests") or []
    return {
        "ref": ref, "id": image.id, "repo_digests": repo_digests,
        "digest": repo_digests[0] if repo_digests else image.id,
        "digest_kind": "repo-digest" if repo_digests else "image-id (local only: no registry digest)",
        "pulled": pulled,
    }  # fmt: skip


def _step_of(line: str) -> str | None:
    """The classic builder's 'Step 3/12 : RUN ...' line, or None."""
    m = re.match(r"^Step \d+/\d+ : .*", line)
    return m.group(0) if m else None


def run_build(plan: BuildPlan, client: Any, console: Any, tail: int = 30) -> dict[str, Any]:
    """Build on the engine, streaming every output line; return the build record (also written to disk).

    Raises EngineUnavailable (exit 3) when the base image cannot be had and BuildFailed (exit 1) with the
    failing step when the build fails. The CA bundle copy in the context is removed whatever happens.
    """
    from rich.markup import escape

    base = base_image_identity(client, plan.base_image, console)
    labels = dict(plan.labels, **{"org.opencontainers.image.base.digest": base["digest"]})
    call = dict(plan.sdk_call(), labels=labels)
    plan.log_path.parent.mkdir(parents=True, exist_ok=True)
    ca_copy = plan.context / CA_IN_CONTEXT if plan.ca_bundle else None
    last: deque[str] = deque(maxlen=tail)
    step: str | None = None
    image_id: str | None = None
    error: str | None = None
    started = time.time()
    try:
        if ca_copy is not None:
            shutil.copyfile(plan.ca_bundle, ca_copy)
        with plan.log_path.open("w") as log, console.status(f"building {plan.tag}") as status:
            for chunk in client.api.build(**call):
                if "error" in chunk or "errorDetail" in chunk:
                    error = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error") or str(chunk)
                    log.write(f"ERROR: {error}\n")
                    break
                if "aux" in chunk and isinstance(chunk["aux"], dict) and chunk["aux"].get("ID"):
                    image_id = chunk["aux"]["ID"]
                text = chunk.get("stream")
                if text is None and chunk.get("status"):  # a pull inside the build (pull=False: rare)
                    text = f"{chunk['status']} {chunk.get('progress', '')}".rstrip() + "\n"
                if not text:
                    continue
                log.write(text)
                log.flush()
                for line in text.rstrip("\n").splitlines():
                    last.append(line)
                    step = _step_of(line) or step
                    m = re.match(r"^Successfully built ([0-9a-f]+)", line)
                    image_id = image_id or (m.group(1) if m else None)
                    console.print(escape(line), highlight=False, soft_wrap=True)
                elapsed = time.time() - started
                status.update(f"building {plan.tag}: {escape(step or 'starting')} ({elapsed:.0f} s)")
    finally:
        if ca_copy is not None:
            ca_copy.unlink(missing_ok=True)
    if error is not None:
        msg = f"the build of {plan.tag} failed at {step or 'its start'}:\n{error}"
        if last:
            msg += "\nlast output:\n" + "\n".join(last)
        raise BuildFailed(msg, step, plan.log_path)

    image = client.images.get(plan.tag)
    version = client.version()
    record = {
        "tag": plan.tag,
        "image_id": image.id,
        "stack": plan.stack,
        "vendor": plan.vendor,
        "variant": plan.variant,
        "variant_reason": plan.variant_reason,
        "base_image": base,
        "content_hash": plan.content_hash,
        "lock_sha256": plan.lock_sha256,
        "locks": [str(p.relative_to(plan.context)) if p.is_relative_to(plan.context) else str(p) for p in plan.locks],
        "dockerfile": str(plan.dockerfile),
        "dockerfile_sha256": sha256_file(plan.dockerfile),
        "context": str(plan.context),
        "build_args": redact_args(plan.build_args),
        "ca_bundle": str(plan.ca_bundle) if plan.ca_bundle else None,
        "labels": image.labels,
        "kit_version": __version__,
        "started": started,
        "finished": time.time(),
        "duration_s": round(time.time() - started, 3),
        "engine": {"version": version.get("Version"), "api_version": version.get("ApiVersion"),
                   "os": version.get("Os"), "arch": version.get("Arch")},
        "host": socket.gethostname(),
        "log": str(plan.log_path),
    }  # fmt: skip
    if image_id and not image.id.endswith(image_id.removeprefix("sha256:")):
        record["stream_image_id"] = image_id  # the tag moved between the build and the inspect
    tmp = plan.record_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(plan.record_path)
    return record
