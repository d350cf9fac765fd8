"""The devices a run claims, against every other record of them.

kit_facts (rank 0's torch) names the device, its count and memory. environment.json holds what the host's
vendor probe listed (`host.accelerators`: NVML, amdsmi, npu-smi, ...; older runs `host.gpus`) and what torch saw where the ranks ran (`case.torch.devices`); the
monitor's start line lists the devices it sampled, and every sample reads them again; run.json says how many
devices per node were asked for. A device claimed in one place and absent from the others was never there.
"""

from __future__ import annotations

import json
import math
from typing import Any

from kit import vendors
from kit.run.hostfacts import accelerators
from kit.submission.findings import Findings
from kit.submission.layout import RunFacts

CHECK = "devices"
MEMORY_REL_TOL = 0.10  # torch's total_memory leaves out what the driver reserves; NVML counts all of it


def _norm(name: Any) -> str:
    return " ".join(str(name or "").upper().replace("_", " ").split())


def same_device(a: Any, b: Any) -> bool:
    """Two names of one device model ('NVIDIA H100 80GB HBM3' as NVML and torch both spell it)."""
    na, nb = _norm(a), _norm(b)
    return bool(na) and (na == nb or na in nb or nb in na)


def _probed(rf: RunFacts) -> dict[str, Any]:
    return accelerators(rf.environment)


def _torch_devices(rf: RunFacts) -> list[dict[str, Any]] | None:
    case = rf.environment.get("case") if isinstance(rf.environment.get("case"), dict) else {}
    t = case.get("torch") if isinstance(case.get("torch"), dict) else None
    if t is None:
        return None
    return [d for d in t.get("devices") or [] if isinstance(d, dict)]


def _monitor_devices(rf: RunFacts, stage: str) -> tuple[str | None, list[dict[str, Any]], int]:
    """(source of the first start line, its devices, the most devices any sample read)."""
    path = rf.path / stage / "monitor.jsonl"
    source, devices, most = None, [], 0
    if not path.is_file():
        return None, [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("type") == "start" and source is None:
            source = rec.get("source")
            devices = [d for d in rec.get("devices") or [] if isinstance(d, dict)]
        elif rec.get("type") == "sample":
            most = max(most, len([d for d in rec.get("devices") or [] if isinstance(d, dict)]))
    return source, devices, most


def check_run(rf: RunFacts, out: Findings, where: str) -> None:
    facts = {s: rf.stage_facts.get(s) for s in rf.training if rf.stage_facts.get(s)}
    if not facts:
        return
    per_node = rf.run.get("gpus")
    gpus = _probed(rf)
    if gpus.get("replayed_from"):
        out.fail(CHECK, f"environment.json: the device facts were replayed from the recording {gpus['replayed_from']}, "
                        "not read from the host the run ran on", where)  # fmt: skip
    probed = [d for d in gpus.get("devices") or [] if isinstance(d, dict)]
    runtimes = {str(f["runtime"]["vendor"]) for f in facts.values()
                if isinstance(f.get("runtime"), dict) and f["runtime"].get("vendor")} - {vendors.FALLBACK}  # fmt: skip
    # (the CPU's empty runtime applies on any host: a CPU config on a GPU host is honest)
    if gpus.get("vendor") and runtimes - {gpus["vendor"]}:
        out.fail(CHECK, f"kit_facts: the ranks applied the runtime of vendor {sorted(runtimes)[0]!r}, but the host's "
                        f"device probe was vendor {gpus['vendor']!r}", where)  # fmt: skip
    torch_devices = _torch_devices(rf)
    for stage, f in facts.items():
        sw = f"{where}/{stage}/events.log"
        kind, name = f.get("device_type"), f.get("device_name")
        count, mem = f.get("device_count"), f.get("device_mem_total_bytes")
        if isinstance(per_node, int) and isinstance(count, int) and count != per_node:
            out.fail(CHECK, f"kit_facts device_count {count}, but run.json ran {per_node} rank(s) per node", sw)
        other = [s for s in rf.events[stage].steps
                 if isinstance(mem, (int, float)) and s.get("device_mem_total_bytes") not in (None, mem)]
        if other:
            out.fail(CHECK, f"step {other[0].get('step')} logs device_mem_total_bytes "
                            f"{other[0].get('device_mem_total_bytes')}, kit_facts says {mem}", sw)  # fmt: skip
        source, mon_devices, mon_most = _monitor_devices(rf, stage)
        if kind == "cpu":
            if _norm(name) not in ("CPU", ""):
                out.fail(CHECK, f"kit_facts: device_type cpu but device_name {name!r}", sw)
            continue
        # An accelerator: the host's probe, torch where the ranks ran, and the monitor must all have seen it.
        if not probed:
            why = gpus.get("reason") or "no devices listed"
            out.fail(CHECK, f"kit_facts claims {count} x {name!r} ({kind}), but environment.json's device probe found "
                            f"none ({why})", sw)  # fmt: skip
        else:
            matching = [d for d in probed if same_device(d.get("name"), name)]
            if not matching:
                out.fail(CHECK, f"kit_facts names {name!r}, environment.json's probe found "
                                f"{sorted({str(d.get('name')) for d in probed})}", sw)  # fmt: skip
            elif isinstance(count, int) and len(matching) < count:
                out.fail(CHECK, f"kit_facts claims {count} x {name!r}, environment.json's probe found {len(matching)}", sw)
            probe_mem = [d.get("memory_bytes") for d in matching if isinstance(d.get("memory_bytes"), (int, float))]
            if probe_mem and isinstance(mem, (int, float)) and not math.isclose(mem, max(probe_mem), rel_tol=MEMORY_REL_TOL):
                out.fail(CHECK, f"kit_facts device memory {mem / 2**30:.1f} GiB, the probe read "
                                f"{max(probe_mem) / 2**30:.1f} GiB", sw)  # fmt: skip
        if torch_devices is not None:
            seen = [d for d in torch_devices if same_device(d.get("name"), name)]
            if not seen:
                out.fail(CHECK, f"kit_facts names {name!r}, but torch saw "
                                f"{sorted({str(d.get('name')) for d in torch_devices}) or 'no device'} where the ranks "
                                "ran (environment.json case.torch)", sw)  # fmt: skip
        if source is not None:
            if source == "host" or not mon_devices:
                out.fail(CHECK, f"kit_facts claims {name!r}, but the monitor sampled no device during {stage} (source "
                                f"{source!r}: the host's CPU only)", f"{where}/{stage}/monitor.jsonl")  # fmt: skip
            elif not any(same_device(d.get("name"), name) for d in mon_devices):
                out.fail(CHECK, f"kit_facts names {name!r}, the monitor sampled "
                                f"{sorted({str(d.get('name')) for d in mon_devices})}", f"{where}/{stage}/monitor.jsonl")  # fmt: skip
            elif isinstance(count, int) and mon_most and mon_most < count:
                out.fail(CHECK, f"kit_facts claims {count} devices, the monitor's samples read {mon_most}",
                         f"{where}/{stage}/monitor.jsonl")  # fmt: skip
    kinds = {(f.get("device_type"), _norm(f.get("device_name"))) for f in facts.values()}
    if len(kinds) > 1:
        out.fail(CHECK, f"the stages name different devices: {sorted(kinds)}", where)
