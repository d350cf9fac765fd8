"""The system description: what only a person knows (SYSTEM.toml) and what the runs' own facts say.

`systems/<system>.json` holds both. The person's keys are typed and checked when read; every other key is derived
from the first run's facts by `describe()`, so `kit verify` derives them again and fails any that differ (an
accelerator, a memory size or an interconnect edited into the file after packing).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from kit.image.stacks import describe as describe_stack
from kit.results.formats import runtime_text
from kit.results.peak import lookup_peak
from kit.run.hostfacts import accelerators
from kit.submission.layout import SYSTEM_SCHEMA, RunFacts, SubmissionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STATUSES = ("available on-premise", "available cloud", "preview", "research, development, or internal")
DIVISIONS = ("closed", "open")
# key: (required, type, what it is). Everything else in the description comes from the runs.
PERSON_KEYS: dict[str, tuple[bool, type | tuple[type, ...], str]] = {
    "submitter": (True, str, "the organisation that submits"),
    "system_name": (True, str, "the system's name"),
    "division": (True, str, "closed or open"),
    "status": (True, str, ", ".join(STATUSES)),
    "cooling": (True, str, "air, liquid, ..."),
    "host_storage_type": (False, str, "text"),
    "host_networking_topology": (False, str, "text"),
    "accelerator_interconnect_topology": (False, str, "text"),
    "hw_notes": (False, str, "text"),
    "sw_notes": (False, str, "text"),
    "accelerator_peak_bf16_flops": (False, (int, float), "dense bf16 FLOP/s, a positive number"),
    "accelerator_peak_source": (False, str, "where the peak is published"),
    "contact": (False, str, "an e-mail address or a name"),
}
SYSTEM_REQUIRED = tuple(k for k, (req, _, _) in PERSON_KEYS.items() if req)
SYSTEM_OPTIONAL = tuple(k for k, (req, _, _) in PERSON_KEYS.items() if not req)
MAX_TEXT = 4000  # characters in one person's key: notes, not documents


def person_problems(data: Any, where: str) -> list[str]:
    """Every way `data` (SYSTEM.toml, or the person's keys of a packed description) breaks the schema."""
    if not isinstance(data, dict):
        return [f"{where}: not a table of keys"]
    out = []
    missing = [k for k in SYSTEM_REQUIRED if k not in data or (isinstance(data[k], str) and not data[k].strip())]
    if missing:
        out.append(f"{where}: missing required key(s) {', '.join(missing)} (what only a person knows; the rest "
                   "comes from the runs)")  # fmt: skip
    for key, value in data.items():
        if key not in PERSON_KEYS:
            continue
        _, kind, what = PERSON_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            shown = type(value).__name__ if not isinstance(value, (str, int, float)) else repr(value)
            out.append(f"{where}: {key} = {shown[:60]}: expected {'text' if kind is str else 'a number'} ({what})")
            continue
        if isinstance(value, str) and len(value) > MAX_TEXT:
            out.append(f"{where}: {key} is {len(value):,} characters long; at most {MAX_TEXT:,}")
    if isinstance(data.get("division"), str) and data["division"] not in DIVISIONS:
        out.append(f"{where}: division = {data['division']!r}; expected closed or open")
    if isinstance(data.get("status"), str) and data["status"].lower() not in STATUSES:
        out.append(f"{where}: status = {data['status']!r}; expected one of {', '.join(STATUSES)}")
    peak = data.get("accelerator_peak_bf16_flops")
    if isinstance(peak, (int, float)) and not isinstance(peak, bool) and (not math.isfinite(peak) or peak <= 0):
        out.append(f"{where}: accelerator_peak_bf16_flops = {peak!r}: must be a positive, finite number (FLOP/s)")
    return out


def read_system_toml(path: Path) -> dict[str, Any]:
    """SYSTEM.toml, checked against PERSON_KEYS: every problem is named at once, before any run is read."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SubmissionError(f"--system {path}: no such file (see docs/submissions.md)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SubmissionError(f"--system {path}: cannot be read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise SubmissionError(f"--system {path}: not valid TOML: {e}") from None
    problems = person_problems(data, f"--system {path}")
    unknown = sorted(set(data) - set(PERSON_KEYS))
    if unknown:
        problems.append(f"--system {path}: unknown key {unknown[0]}; allowed: {', '.join(PERSON_KEYS)}")
    if problems:
        raise SubmissionError("; ".join(problems))
    return data


def interconnect(rf: RunFacts) -> str:
    """The accelerator interconnect as the run's probe saw it (the vendor's device-to-device links up per device:
    NVLink, xGMI, HCCS, as the vendor names them)."""
    acc = accelerators(rf.environment)
    devices = [d for d in acc.get("devices") or [] if isinstance(d, dict)]
    links = [x for x in (d.get("links_up") for d in devices) if isinstance(x, int)]
    kind = acc.get("link_kind") or "device-to-device"
    if rf.accelerator()["type"] == "cpu":
        return "none (CPU ranks, gloo)"
    if links and max(links) > 0:
        return f"{kind}, {min(links)}-{max(links)} links up per device"
    if devices:
        return f"PCIe (no {kind} links up)"
    return f"unknown (the device probe did not answer when the run ran: {acc.get('reason') or 'no facts'})"


def describe(person: dict[str, Any], rf: RunFacts) -> dict[str, Any]:
    """systems/<system>.json: the person's keys plus the facts of the first run (each fact names its source)."""
    host = rf.environment.get("host") if isinstance(rf.environment.get("host"), dict) else {}
    case = rf.environment.get("case") if isinstance(rf.environment.get("case"), dict) else {}
    versions = case.get("versions") if isinstance(case.get("versions"), dict) else {}
    probed = accelerators(rf.environment)
    acc = rf.accelerator()
    ib = [p for p in host.get("infiniband") or [] if isinstance(p, dict)]
    active = [p for p in ib if "ACTIVE" in str(p.get("state", "")).upper()]
    torch_info = case.get("torch") if isinstance(case.get("torch"), dict) else {}
    out = {
        "schema": SYSTEM_SCHEMA,
        **{k: person[k] for k in SYSTEM_REQUIRED if k in person},
        "number_of_nodes": acc["nodes"],
        "accelerators_per_node": acc["per_node"],
        "accelerator_model_name": acc["model"],
        "accelerator_memory_capacity_bytes": acc["memory_bytes"],
        "accelerator_interconnect": interconnect(rf),
        "host_networking": ", ".join(f"{p.get('device')}/{p.get('port')} {p.get('rate')}" for p in active)
        or ("no active InfiniBand port" if ib else "no InfiniBand devices"),
        "host_processor_model_name": host.get("cpu_model") or host.get("cpu"),
        "host_processor_core_count": host.get("cpus"),
        "host_memory_capacity_bytes": host.get("memory_bytes"),
        "operating_system": host.get("os_name") or host.get("os"),
        "kernel": host.get("kernel"),
        "accelerator_vendor": probed.get("vendor"),
        "driver": probed.get("driver"),
        "accelerator_toolkit": probed.get("toolkit"),  # what the driver supports (CUDA driver API, ROCm, CANN)
        "accelerator_runtime": torch_info.get("device_runtime"),  # what the framework was built against
        "vendor_runtime": runtime_text(next((f.get("runtime") for f in rf.stage_facts.values() if f), None)),
        "framework": f"PyTorch {versions.get('torch')}, DeepSpeed {versions.get('deepspeed')}",
        "other_software_stack": ", ".join(f"{k} {v}" for k, v in sorted(versions.items())
                                          if v and k not in ("torch", "deepspeed")),  # fmt: skip
        "python": case.get("python"),
        "software": rf.software(),
        "software_stack": describe_stack(rf.stack()),
        "facts_from": f"run {rf.run_id}: environment.json (host, the device probe, /proc, /sys) and events.log "
                      "kit_facts",
    }
    for k in SYSTEM_OPTIONAL:
        if k in person:
            out[k] = person[k]
    return out


def derived_keys() -> set[str]:
    """The keys of a description that come from the runs (verify derives them again)."""
    return {"number_of_nodes", "accelerators_per_node", "accelerator_model_name", "accelerator_memory_capacity_bytes",
            "accelerator_interconnect", "host_networking", "host_processor_model_name", "host_processor_core_count",
            "host_memory_capacity_bytes", "operating_system", "kernel", "accelerator_vendor", "driver",
            "accelerator_toolkit", "accelerator_runtime", "vendor_runtime",
            "framework", "other_software_stack", "python", "software", "software_stack", "facts_from"}  # fmt: skip


def peak_problem(accelerator: dict[str, Any], person: dict[str, Any]) -> str | None:
    """An accelerator env/accelerators.toml does not know needs its peak declared, or no MFU can be shown; one it
    knows may not be given another peak (a lower one would raise every MFU)."""

    if accelerator.get("type") == "cpu":
        return None
    declared = person.get("accelerator_peak_bf16_flops")
    peak, why = lookup_peak(accelerator.get("model"), accelerator.get("type"))
    if peak is not None:
        if declared is not None and not math.isclose(float(declared), peak, rel_tol=1e-6):
            return (f"accelerator_peak_bf16_flops = {declared:.4g}, but the runs' accelerator {accelerator.get('model')!r} "
                    f"has a published peak of {peak:.4g} ({why}): leave the key out, or submit in the open division "
                    "with the published peak")  # fmt: skip
        return None
    if declared:
        return None
    return (f"the runs' accelerator {accelerator.get('model')!r} has no peak in env/accelerators.toml ({why}): declare "
            "accelerator_peak_bf16_flops (dense bf16 FLOP/s) and accelerator_peak_source (its datasheet) in the system "
            "file; every table then says the peak was declared by the submitter")
