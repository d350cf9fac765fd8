"""Acme, a vendor package as a third party ships one: the kit's `Vendor` interface (kit/vendors/base.py) for a
made-up accelerator, registered under the `kit.vendors` entry point group and never imported by kit/.

It exists for tests/e2e/test_vendor_package.py: the ranks compute on the CPU (torch device "cpu", gloo), while the
host sees two "Acme A1" devices whose facts and readings its stand-in management tool replays from a recording
(tests/fixtures/vendors/acme/acme-a1-x2.json: real numbers read on other hardware, relabelled, each with its
source). Everything the kit prints about the devices is then in Acme's words, so a test can tell whether any
place in the kit still speaks of one vendor in particular.

`ACME_SMI_RECORDING` names another recording (the default is the one above). The probe does not mark its facts
as replayed: to the kit this package is the vendor, and its tool is what it reads; the recording's own `source`
says what it is, and environment.json keeps that path on every device (`extra.recording`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from kit.checks import Check
from kit.vendors.base import ContainerAccess, Device, Probe, Reading, Runtime

RECORDING_ENV = "ACME_SMI_RECORDING"
RECORDING = Path(__file__).resolve().parents[2] / "fixtures" / "vendors" / "acme" / "acme-a1-x2.json"
GIB = 1024**3
WORD = "ACU"  # Acme Compute Unit: what Acme calls one device
# Acme's throttle reasons and how much each matters: ok (by design), warn (a setting or a cap), fail (the hardware
# slowed itself down). The monitor writes this table into its start line; kit report judges samples by it.
REASONS = {
    "idle": "ok",
    "clock setting": "warn",
    "power cap": "warn",
    "thermal cap": "fail",
    "power brake": "fail",
}
INSTALL_FIX = "install the Acme driver package and run `acme-smi list`; it must list every ACU"
RUNTIME = Runtime(environment={"ACME_DEVICE_MODE": "host"})  # Acme's runtime drives the host CPU


class AcmeError(RuntimeError):
    """acme-smi gave no answer (its recording is missing or not one)."""


def _load() -> dict[str, Any]:
    path = Path(os.environ.get(RECORDING_ENV) or RECORDING)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AcmeError(f"acme-smi did not answer: {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise AcmeError(f"acme-smi did not answer: {path} lists no devices")
    data["_path"] = str(path)
    return data


class AcmeVendor:
    name = "acme"
    title = "Acme"
    device_word = WORD
    torch_device = "cpu"
    dist_backend = "gloo"
    slurm_gres = "acme"
    runtime = RUNTIME
    forward_env = ("ACME_",)
    sources = ("acme",)  # the monitor start lines whose samples are Acme's

    def probe(self) -> Probe:
        try:
            data = _load()
        except AcmeError as e:
            return Probe(self.name, False, reason=str(e))
        devices = [
            Device(index=d["index"], name=d["name"], memory_bytes=d.get("memory_bytes"), uuid=d.get("uuid"),
                   bus_id=d.get("bus_id"), firmware=d.get("firmware"), extra={"recording": data["_path"]})
            for d in data["devices"]
        ]  # fmt: skip
        return Probe(self.name, True, driver=data.get("driver"), toolkit=data.get("runtime_version"),
                     devices=devices, link_kind=data.get("link_kind"))  # fmt: skip

    def sampler(self) -> AcmeSampler | None:
        try:
            return AcmeSampler(_load())
        except AcmeError:
            return None

    def reasons(self) -> dict[str, str]:
        return dict(REASONS)

    def host_checks(self, probe: Probe, expected: int, device: str = "") -> list[Check]:
        if not probe.available:
            return [Check("acme", f"{WORD} count", "fail", f"no Acme {WORD}: {probe.reason}", INSTALL_FIX)]
        devs = probe.devices
        data = {"found": len(devs), "expected": expected}
        if len(devs) < expected:
            rows = [Check("acme", f"{WORD} count", "fail", f"{len(devs)} {WORD}s, the config needs {expected}",
                          f"run on a host with {expected} {WORD}s, or pass --gpus {len(devs)}", data)]  # fmt: skip
        else:
            rows = [Check("acme", f"{WORD} count", "ok", f"{len(devs)} {WORD}s, the config needs {expected}", data=data)]
        names = Counter(d.name for d in devs)
        shown = ", ".join(f"{k} x{v}" for k, v in names.items())
        if len(names) > 1:
            rows.append(Check("acme", f"{WORD} model", "warn", f"mixed models: {shown}",
                              "use ACUs of one model (ACME_VISIBLE_DEVICES selects them)"))  # fmt: skip
        else:
            rows.append(Check("acme", f"{WORD} model", "ok", shown, data={"names": list(names)}))
        totals = [d.memory_bytes for d in devs if d.memory_bytes]
        if totals:
            rows.append(Check("acme", f"{WORD} memory", "ok", f"{min(totals) / GIB:.1f} GiB per {WORD}"))
        else:
            rows.append(Check("acme", f"{WORD} memory", "warn", "acme-smi reports no memory size",
                              "run `acme-smi list --memory`"))  # fmt: skip
        return rows

    def driver_checks(self, probe: Probe) -> list[Check]:
        if not probe.available:
            return [Check("driver", "Acme driver", "fail", str(probe.reason), INSTALL_FIX)]
        if not probe.driver:
            return [Check("driver", "Acme driver", "warn", "acme-smi reports no driver version", INSTALL_FIX)]
        return [Check("driver", "Acme driver", "ok", f"Acme driver {probe.driver}, Acme runtime {probe.toolkit}",
                      data={"driver": probe.driver, "runtime": probe.toolkit})]  # fmt: skip

    def container_access(self, count: int) -> ContainerAccess:
        """Acme's device nodes and its control node (none exist on the test machine; no test starts a container)."""
        ids = list(range(count))
        return ContainerAccess(
            devices=[f"/dev/acme{i}:/dev/acme{i}:rwm" for i in ids] + ["/dev/acme_ctl:/dev/acme_ctl:rwm"],
            environment={"ACME_VISIBLE_DEVICES": ",".join(map(str, ids))},
            note=f"{count} Acme {WORD}(s): /dev/acme{','.join(map(str, ids))} and /dev/acme_ctl",
        )

    def owns(self, device_name: str) -> bool:
        return (device_name or "").strip().upper().startswith("ACME")


class AcmeSampler:
    """acme-smi's readings: every sample replays the recording's one moment."""

    vendor = "acme"
    device_word = WORD

    def __init__(self, data: dict[str, Any]) -> None:
        self._devices = data["devices"]
        self._readings = data.get("readings") or []

    def fixed(self) -> list[dict[str, Any]]:
        maxima = {r["index"]: r.get("clock_max_mhz") for r in self._readings}
        return [{"index": d["index"], "name": d["name"], "clock_max_mhz": maxima.get(d["index"])} for d in self._devices]

    def sample(self) -> list[Reading]:
        return [Reading(**{**r, "processes": [dict(p) for p in r.get("processes") or []],
                           "throttle": list(r["throttle"]) if r.get("throttle") is not None else None,
                           "throttle_status": _worst(r.get("throttle"))})
                for r in self._readings]  # fmt: skip

    def reasons(self) -> dict[str, str]:
        return dict(REASONS)

    def close(self) -> None:
        pass


def _worst(names: list[str] | None) -> str | None:
    if names is None:
        return None
    order = {"ok": 0, "warn": 1, "fail": 2}
    return max((REASONS.get(n, "warn") for n in names), key=order.__getitem__, default="ok")
