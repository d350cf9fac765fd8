"""The registry of accelerator vendors: the built-in ones and every package registered under `kit.vendors`.

The host never names a vendor. It asks this module for the vendor of this host (`detect()`: each registered vendor
probes, the first that finds devices wins, else the CPU), for the vendor of a device name (`for_device()`: a config's
`device`, kit_facts' `device_name`), or for one by name (`get()`: `KIT_VENDOR=name` forces the choice, for a host
with two kinds of devices or for a test). A vendor package ships a class with the interface of
`kit.vendors.base.Vendor` and registers it in its own pyproject.toml:

    [project.entry-points."kit.vendors"]
    acme = "acme_kit.vendor:AcmeVendor"

Nothing else in the kit changes for it (docs/vendors.md).
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Any

from kit.errors import KitError
from kit.vendors.base import Probe, Vendor

GROUP = "kit.vendors"
VENDOR_ENV = "KIT_VENDOR"
FALLBACK = "cpu"  # the vendor of a host where no other finds devices (it always finds itself)

_classes: dict[str, Any] | None = None
_instances: dict[str, Vendor] = {}


class UnknownVendor(KitError):
    pass


def _registered() -> dict[str, Any]:
    """name -> entry point, the kit's own vendors included (its pyproject.toml registers them like any package's).
    Two packages registering one name: the first the environment lists wins."""
    global _classes
    if _classes is None:
        found: dict[str, Any] = {}
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            found.setdefault(ep.name, ep)
        _classes = found
    return _classes


def names() -> list[str]:
    """Every registered vendor's name, in the order they are asked on a host: by name, the CPU last."""
    reg = [n for n in _registered() if n != FALLBACK]
    return [*reg, FALLBACK]


def get(name: str) -> Vendor:
    """The vendor registered as `name` (one instance per process)."""
    if name not in _instances:
        reg = _registered()
        if name not in reg:
            if not reg:
                raise UnknownVendor(f"no accelerator vendor is registered under the {GROUP!r} entry point group: the "
                                    "kit is not installed (`pip install -e .` in its folder, or `make test` builds "
                                    ".venv)")  # fmt: skip
            raise UnknownVendor(f"no accelerator vendor {name!r} is registered (known: {', '.join(names())}): "
                                f"install its package (it registers under the {GROUP!r} entry point group) or fix "
                                f"{VENDOR_ENV}")  # fmt: skip
        target = reg[name]
        try:
            cls = target.load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in is named, not a traceback
            raise UnknownVendor(f"the accelerator vendor {name!r} ({getattr(target, 'value', target)}) cannot be "
                                f"loaded: {type(e).__name__}: {e}") from e  # fmt: skip
        _instances[name] = cls()
    return _instances[name]


def forced() -> str | None:
    """The vendor KIT_VENDOR names, if any."""
    return os.environ.get(VENDOR_ENV, "").strip() or None


def detect() -> tuple[Vendor, Probe]:
    """The vendor of this host and what it found: KIT_VENDOR's, else the first whose probe lists devices, else the
    CPU. A vendor that fails to load or to probe is skipped, never fatal. Asked afresh every time (a probe is a
    library call or two): what a host has may change, and so may the environment that points at a recording."""
    name = forced()
    if name:
        v = get(name)
        return v, v.probe()
    for n in names():
        if n == FALLBACK:
            continue
        try:
            v = get(n)
            p = v.probe()
        except Exception:  # noqa: BLE001 - one vendor's broken library does not hide another's devices
            continue
        if p.available and p.devices:
            return v, p
    v = get(FALLBACK)
    return v, v.probe()


def for_device(device_name: str | None) -> Vendor | None:
    """The vendor whose devices carry this name (a config's short `device`, or a full model name), or None."""
    if not device_name:
        return None
    for n in names():
        try:
            v = get(n)
        except UnknownVendor:
            continue
        if v.owns(device_name):
            return v
    return None


def for_config(device: str | None) -> Vendor:
    """The vendor a run of a config with this `device` uses here: KIT_VENDOR's, else the one that owns the device
    name, else this host's."""
    name = forced()
    if name:
        return get(name)
    return for_device(device) or detect()[0]


def reset() -> None:
    """Forget the registered and loaded vendors (tests that change the entry points)."""
    global _classes
    _classes = None
    _instances.clear()
