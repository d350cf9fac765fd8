"""Which config a run uses when none is named, and the `kit configs new` line that makes one: the shipped config
made for this host's devices (their name and memory from the vendor's probe, env/accelerators.toml's rows), else
the case's default; when none fits, the command that derives one."""

from __future__ import annotations

import math
import shlex
from typing import Any

from kit import case as cases
from kit import vendors
from kit.case import rules as case_rules
from kit.errors import UsageError
from kit.results.peak import load_accelerators

GIB = 2**30


def device_row(device: str, table: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The env/accelerators.toml row of a device name (a short one, "H100", or as a driver reports it): the first
    whose `match` pattern is in the name, as for the peak (kit/results/peak.py)."""
    norm = device.upper().replace("_", " ")
    for row in load_accelerators() if table is None else table:
        if any(str(m).upper().replace("_", " ") in norm for m in row.get("match", [])):
            return row
    return None


def command_line(case: str, reference: str, device: str, memory_gib: float | None, host_memory_gib: float | None,
                 nodes: int, gpus: int, name: str | None, several_cases: bool = False) -> str:  # fmt: skip
    """The `kit configs new` line that derives the config again (written into the file's first comment)."""
    parts = ["kit", "configs", "new"]
    if several_cases:
        parts += ["--case", case]
    parts += ["--from", reference, "--device", device]
    if memory_gib is not None:
        parts += ["--memory-gib", f"{memory_gib:g}"]
    if host_memory_gib is not None:
        parts += ["--host-memory-gib", f"{host_memory_gib:g}"]
    parts += ["--nodes", str(nodes), "--gpus", str(gpus)]
    if name:
        parts += ["--name", name]
    return shlex.join(parts)


class NoConfig(UsageError):
    """No shipped config fits the device: the message names the `kit configs new` command that makes one."""


def choose_config(case_name: str, nodes: int, gpus: int, device_name: str, memory_bytes: int | None) -> str:
    """The shipped config for `nodes` x `gpus` of this device: its own (the config's device is the same row of
    env/accelerators.toml), else the one made for the most memory that this device still has; NoConfig, naming the
    `kit configs new` command, when none is made for this count or none fits the memory."""
    case = cases.get(case_name)
    mod = case.config
    have = memory_bytes / GIB if memory_bytes else None
    row = device_row(device_name)
    fitting = []
    for name in mod.available():
        try:
            cfg = mod.load(name)
        except ValueError:
            continue
        if (cfg.nodes, cfg.gpus_per_node) != (nodes, gpus):
            continue
        its = device_row(cfg.device)
        made_for = float(its["memory_gib"]) if its and its.get("memory_gib") else None
        if made_for is None:
            continue  # made for a device without a memory figure (a CPU config): not a pick for a device
        same = row is not None and its.get("name") == row.get("name")
        if have is None and not same:
            continue
        if have is not None and made_for > have * 1.01:  # made for more memory than this device has
            continue
        fitting.append((same, made_for, name))
    if fitting:
        return max(fitting)[2]
    short = (row.get("match") or [device_name])[0] if row else "".join(c if c.isalnum() else "-" for c in device_name)
    gib = f"{math.floor(have * 10) / 10:g}" if have else None
    cmd = command_line(case.name, _reference_of(case), short, float(gib) if gib else None, None, nodes, gpus, None)
    mem = f", {gib} GiB" if gib else ""
    raise NoConfig(f"no shipped {case.name} config fits {nodes} x {gpus} {device_name}{mem}: derive one with `{cmd} "
                   f"--host-memory-gib N --write` (N: this host's memory in GiB), then `kit run {case.name} --config "
                   f"NAME` with the name it prints; or pass --config to choose one yourself (kit configs lists them)")  # fmt: skip


def _reference_of(case: Any) -> str:
    """The config the rules hold submissions to: the one to derive from."""
    try:
        return case_rules.load(case.name).reference_config
    except case_rules.RulesError:
        return case.config.default_for(1, None)


def this_host_device() -> tuple[str, int | None, int] | None:
    """(device name, one device's memory in bytes, devices) of this host's accelerator, or None (a CPU host)."""
    vendor, probe = vendors.detect()
    if vendor.name == vendors.FALLBACK or not probe.available or not probe.devices:
        return None
    first = probe.devices[0]
    return first.name, first.memory_bytes, len(probe.devices)


def default_config(case: Any, nodes: int, gpus: int | None, here: bool) -> str:
    """`kit run`'s config when none is given: for a run on this host (`here`) that has an accelerator, the shipped
    config for its devices (`choose_config`; NoConfig names the command that makes one); else the case's default."""
    found = this_host_device() if here else None
    if found is None:
        return case.config.default_for(nodes, gpus)
    name, memory, count = found
    return choose_config(case.name, nodes, gpus or count, name, memory)
