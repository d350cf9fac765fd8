"""Images and containers for a vendor that has no compatibility table of its own: the shared parts.

A vendor's image variants are env/stacks.toml's rows that carry its name (`variants_of`). Where the kit knows no
rule for which variant a host's driver runs (AMD's ROCm, Ascend's CANN: their compatibility matrices are not data
here yet), `kit build --variant auto` takes the first variant and says that the match with the host's driver was
not checked (`first_variant`); a stack with no variant for the vendor is refused with what to do (`not_yet`).
`device_paths_check` is the Docker row of a vendor that hands devices in as device nodes and driver mounts: each
host path `container_access` names must exist here, or the engine refuses the container.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.checks import Check
from kit.image.stacks import StacksError, stacks
from kit.vendors.base import ContainerAccess, Probe, VariantChoice

GUIDE = "docs/vendors.md"


def variants_of(vendor: str, stack: str) -> list[Any]:
    """env/stacks.toml's variants of `stack` for `vendor`, in order; [] for a stack it does not name (the builder
    says which stacks there are)."""

    try:
        return stacks().get(stack).of_vendor(vendor)
    except StacksError:
        return []


def not_yet(vendor: Any, stack: str) -> VariantChoice:
    """No image of `stack` for this vendor's devices: the reason and the two ways to one."""
    word = getattr(vendor, "device_word", "device")
    devices = f"{word}s" if word.startswith(vendor.title) else f"{vendor.title} {word}s"
    return VariantChoice(
        None, f"the {stack} stack has no image variant for {devices} yet",
        fix=f"a vendor package supplies one (its `image_variants`), or add a [[stack.{stack}.variant]] row with "
            f"vendor = \"{vendor.name}\" to env/stacks.toml, with its lock files and base image ({GUIDE}, "
            "\"Images\"); or build for another host's devices: `kit build --vendor NAME --variant VARIANT`",
    )  # fmt: skip


def first_variant(vendor: Any, probe: Probe, stack: str) -> VariantChoice:
    """The stack's first variant for this vendor; the match with this host's driver is the user's to check."""
    rows = vendor.image_variants(stack)
    if not rows:
        return not_yet(vendor, stack)
    first = rows[0]
    host = f"{vendor.title} driver {probe.driver}" if probe.driver else f"this host's {vendor.title} driver"
    toolkit = f", {getattr(vendor, 'toolkit_label', 'toolkit')} {probe.toolkit}" if probe.toolkit else ""
    why = f"the {stack} stack's first {vendor.title} variant ({host}{toolkit})"
    label = getattr(vendor, "variant_label", "image")
    warn = (f"the kit has no table of which {label} versions {vendor.title}'s drivers run: check that "
            f"{host} runs {first.label} ({vendor.title}'s compatibility matrix), or pass --variant")  # fmt: skip
    return VariantChoice(first.name, why, [warn])


def device_paths_check(vendor: Any, access: ContainerAccess, count: int | None, root: Path, fix: str,
                       name: str) -> Check:  # fmt: skip
    """Whether every device node and driver mount a container of `count` devices is given exists under `root`."""
    paths = [d.split(":", 1)[0] for d in access.devices] + list(access.volumes)
    missing = [p for p in paths if not (root / p.lstrip("/")).exists()]
    data = {"devices": list(access.devices), "volumes": dict(access.volumes), "missing": missing, "count": count,
            "group_add": list(access.group_add)}  # fmt: skip
    how = f"no runtime needed: containers get {', '.join(paths)}"
    if not missing:
        return Check("docker", name, "ok", how + (f" (groups {', '.join(access.group_add)})" if access.group_add else ""),
                     data=data)  # fmt: skip
    detail = f"{', '.join(missing)} missing on this host: the engine refuses a container given them"
    if not count:
        return Check("docker", name, "warn", f"{detail}; no {vendor.title} {vendor.device_word}s found here", fix, data)
    return Check("docker", name, "fail", f"{detail}; containers cannot see this host's {count} {vendor.device_word}(s)",
                 fix, data)  # fmt: skip
