"""NVML at its binding's boundary: the real `pynvml`, or a replay of readings recorded on a real machine.

Host checks call NVML through `open_nvml()`. On a machine with GPUs that is `pynvml` (the nvidia-ml-py
package). For tests (and for checking a host from a recording someone sent), `ReplayNVML` answers the
same calls from a recording made with

    python -m kit.vendors.nvidia.nvml record OUT.json

which calls a fixed list of NVML functions on every GPU and stores each answer or error verbatim.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Per-device calls: (function, extra arguments as names of pynvml constants); recorded with their values.
DEVICE_CALLS: list[tuple[str, tuple]] = [
    ("nvmlDeviceGetName", ()),
    ("nvmlDeviceGetUUID", ()),
    ("nvmlDeviceGetSerial", ()),
    ("nvmlDeviceGetBrand", ()),
    ("nvmlDeviceGetArchitecture", ()),
    ("nvmlDeviceGetVbiosVersion", ()),
    ("nvmlDeviceGetPciInfo", ()),
    ("nvmlDeviceGetMemoryInfo", ()),
    ("nvmlDeviceGetCudaComputeCapability", ()),
    ("nvmlDeviceGetEccMode", ()),
    ("nvmlDeviceGetTotalEccErrors", ("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", "NVML_VOLATILE_ECC")),
    ("nvmlDeviceGetTotalEccErrors", ("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", "NVML_AGGREGATE_ECC")),
    ("nvmlDeviceGetTotalEccErrors", ("NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_VOLATILE_ECC")),
    ("nvmlDeviceGetRetiredPagesPendingStatus", ()),
    ("nvmlDeviceGetRemappedRows", ()),
    ("nvmlDeviceGetCurrentClocksEventReasons", ()),
    ("nvmlDeviceGetCurrentClocksThrottleReasons", ()),
    ("nvmlDeviceGetSupportedClocksEventReasons", ()),
    ("nvmlDeviceGetComputeRunningProcesses", ()),
    ("nvmlDeviceGetGraphicsRunningProcesses", ()),
    ("nvmlDeviceGetTemperature", ("NVML_TEMPERATURE_GPU",)),
    ("nvmlDeviceGetPowerUsage", ()),
    ("nvmlDeviceGetEnforcedPowerLimit", ()),
    ("nvmlDeviceGetPersistenceMode", ()),
    ("nvmlDeviceGetComputeMode", ()),
    ("nvmlDeviceGetMigMode", ()),
    ("nvmlDeviceGetCurrPcieLinkGeneration", ()),
    ("nvmlDeviceGetCurrPcieLinkWidth", ()),
    ("nvmlDeviceGetMaxPcieLinkGeneration", ()),
    ("nvmlDeviceGetMaxPcieLinkWidth", ()),
    ("nvmlDeviceGetUtilizationRates", ()),
    ("nvmlDeviceGetClockInfo", ("NVML_CLOCK_SM",)),
    ("nvmlDeviceGetMaxClockInfo", ("NVML_CLOCK_SM",)),
    ("nvmlDeviceGetClockInfo", ("NVML_CLOCK_MEM",)),
    ("nvmlDeviceGetMaxClockInfo", ("NVML_CLOCK_MEM",)),
]
NVLINK_CALLS = ["nvmlDeviceGetNvLinkState", "nvmlDeviceGetNvLinkVersion", "nvmlDeviceGetNvLinkRemotePciInfo"]
SYSTEM_CALLS = [
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlSystemGetNVMLVersion",
    "nvmlDeviceGetCount",
]
PAIR_CALLS: list[tuple[str, tuple]] = [
    ("nvmlDeviceGetTopologyCommonAncestor", ()),
    ("nvmlDeviceGetP2PStatus", ("NVML_P2P_CAPS_INDEX_NVLINK",)),
]


class NVMLUnavailable(RuntimeError):
    """No NVML here: no NVIDIA driver, or the nvidia-ml-py package is missing."""


def _plain(value: Any) -> Any:
    """ctypes structures and arrays as JSON-able data (field names kept), bytes as text."""
    if isinstance(value, ctypes.Structure):
        return {"__struct__": {name: _plain(getattr(value, name)) for name, *_ in value._fields_}}
    if isinstance(value, ctypes.Array):
        return [_plain(v) for v in value]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _key(fn: str, args: list) -> str:
    return json.dumps([fn, args])


def record(nvml: Any) -> dict:
    """Call every function of the lists above on this machine; store each answer or error."""
    calls: dict[str, Any] = {}

    def call(fn: str, shown_args: list, real_args: tuple) -> None:
        try:
            calls[_key(fn, shown_args)] = {"result": _plain(getattr(nvml, fn)(*real_args))}
        except AttributeError:
            calls[_key(fn, shown_args)] = {"error": "NVML_ERROR_FUNCTION_NOT_FOUND", "code": 13}
        except nvml.NVMLError as e:  # the error is a reading too (NOT_SUPPORTED, say)
            calls[_key(fn, shown_args)] = {"error": type(e).__name__, "code": e.value}

    def const(a: Any) -> Any:
        return getattr(nvml, a) if isinstance(a, str) else a

    nvml.nvmlInit()
    try:
        for fn in SYSTEM_CALLS:
            call(fn, [], ())
        count = nvml.nvmlDeviceGetCount()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        links = getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)
        for i, h in enumerate(handles):
            for fn, extra in DEVICE_CALLS:
                values = [const(a) for a in extra]
                call(fn, [{"device": i}, *values], (h, *values))
            for link in range(links):
                for fn in NVLINK_CALLS:
                    call(fn, [{"device": i}, link], (h, link))
            for j, h2 in enumerate(handles):
                if i < j:
                    for fn, extra in PAIR_CALLS:
                        values = [const(a) for a in extra]
                        call(fn, [{"device": i}, {"device": j}, *values], (h, h2, *values))
    finally:
        nvml.nvmlShutdown()
    constants = {k: v for k, v in vars(nvml).items() if k.startswith("NVML_") and isinstance(v, int)}
    return {"recorded_at": time.time(), "device_count": count, "calls": calls, "constants": constants}


class NVMLError(Exception):
    """The replay's NVML error: `value` holds the recorded NVML return code, as pynvml's errors do."""

    def __init__(self, value: int, name: str = "") -> None:
        super().__init__(name or f"NVML error {value}")
        self.value = value


def _revive(value: Any) -> Any:
    if isinstance(value, dict) and "__struct__" in value:
        return SimpleNamespace(**{k: _revive(v) for k, v in value["__struct__"].items()})
    if isinstance(value, list):
        return [_revive(v) for v in value]
    return value


class ReplayNVML:
    """Answers pynvml calls from a recording: the same function names, handles and return shapes."""

    NVMLError = NVMLError

    def __init__(self, recording: dict) -> None:
        self._rec = recording
        for name, value in recording.get("constants", {}).items():
            setattr(self, name, value)

    @classmethod
    def load(cls, path: Path | str) -> ReplayNVML:
        return cls(json.loads(Path(path).read_text()))

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:  # noqa: N802
        if not 0 <= index < self._rec["device_count"]:
            raise NVMLError(2, "NVML_ERROR_INVALID_ARGUMENT")
        return {"device": index}

    def __getattr__(self, fn: str):
        if not fn.startswith("nvml"):
            raise AttributeError(fn)

        def replay(*args: Any) -> Any:
            entry = self._rec["calls"].get(_key(fn, list(args)))
            if entry is None:
                raise KeyError(f"{fn}{args} is not in this NVML recording; record it with `python -m kit.vendors.nvidia.nvml record`")
            if "error" in entry:
                raise NVMLError(entry["code"], entry["error"])
            return _revive(entry["result"])

        return replay


def open_nvml(recording: Path | str | None = None) -> Any:
    """pynvml, or a replay of `recording`; NVMLUnavailable when neither can answer."""
    if recording is not None:
        return ReplayNVML.load(recording)
    try:
        import pynvml
    except ImportError:
        raise NVMLUnavailable("the nvidia-ml-py package is not installed (pip install nvidia-ml-py)") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise NVMLUnavailable(f"NVML cannot start: {e} (no NVIDIA driver loaded on this host?)") from None
    return pynvml


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "record":
        print("usage: python -m kit.vendors.nvidia.nvml record OUT.json", file=sys.stderr)
        return 2
    import pynvml

    Path(argv[1]).write_text(json.dumps(record(pynvml), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
