"""AMD Instinct GPUs through ROCm's AMD SMI Python library (`amdsmi`), or a replay of a recording of it.

On a ROCm host the library is the `amdsmi` package (ROCm installs it under /opt/rocm/share/amd_smi); `amd-smi`, the
command, is a thin shell over the same calls. For tests, and for checking a host from a recording someone sent,
`ReplayAmdSmi` answers the same calls from a recording (KIT_AMDSMI_RECORDING=PATH), made on a real host with

    python -m kit.vendors.amd record OUT.json

A reading the library refuses ("N/A", AMDSMI_STATUS_NOT_SUPPORTED) or that a recording lacks is "not reported":
the checks say so instead of failing the host. What the case sees: ROCm's PyTorch exposes the GPUs as `torch.cuda`
and runs RCCL under the "nccl" name, and DeepSpeed's accelerator is its CUDA one there (device "cuda", backend
"nccl"), so the case needs no import and no variable of its own.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Any

from ..checks import Check
from .base import ContainerAccess, Device, Probe, Reading, Runtime

GIB = 1024**3
MIB = 1024**2  # amdsmi's "MB" (vram_size 196592 on a 192 GiB MI300X) is MiB
RECORDING_ENV = "KIT_AMDSMI_RECORDING"

AMDSMI_STATUS_NOT_SUPPORTED = 2  # amdsmi_wrapper.py
AMDSMI_STATUS_DRIVER_NOT_LOADED = 34
AMDSMI_IOLINK_TYPE_XGMI = 2  # amdsmi_topo_get_link_type()["type"]; 1 is PCIe
ROCM_FOR_GFX942 = (6, 0)  # MI300 series (gfx942): supported from ROCm 6.0 (its release notes)

# Violation status (amdsmi_get_violation_status, MI300 and later): flag -> (name as amd-smi prints it, status,
# meaning). Power and thermal limits the firmware enforces warn; hardware signals (PROCHOT, a voltage regulator too
# hot) fail, as NVIDIA's hardware slowdowns do.
VIOLATIONS: list[tuple[str, str, str, str]] = [
    ("active_prochot_thrm", "PROCHOT", "fail", "processor-hot signal: hardware cuts the clocks"),
    ("active_ppt_pwr", "PPT", "warn", "package power tracking: the power cap holds the clocks down"),
    ("active_socket_thrm", "SOCKET_THERMAL", "warn", "socket thermal limit: the firmware lowers the clocks"),
    ("active_vr_thrm", "VR_THERMAL", "fail", "a voltage regulator is too hot"),
    ("active_hbm_thrm", "HBM_THERMAL", "warn", "HBM too hot: memory is throttled"),
]
# gpu_metrics' indep_throttle_status (MI200 and others): the amdgpu driver's SMU_THROTTLER_*_BIT numbers
# (drivers/gpu/drm/amd/pm/swsmu/inc/amdgpu_smu.h). Power, current and temperature limits warn; VRHOT and PROCHOT
# (hardware signals) fail.
_INDEP_NAMES = {
    0: "PPT0", 1: "PPT1", 2: "PPT2", 3: "PPT3", 4: "SPL", 5: "FPPT", 6: "SPPT", 7: "SPPT_APU",
    16: "TDC_GFX", 17: "TDC_SOC", 18: "TDC_MEM", 19: "TDC_VDD", 20: "TDC_CVIP", 21: "EDC_CPU", 22: "EDC_GFX",
    23: "APCC", 32: "TEMP_GPU", 33: "TEMP_CORE", 34: "TEMP_MEM", 35: "TEMP_EDGE", 36: "TEMP_HOTSPOT",
    37: "TEMP_SOC", 38: "TEMP_VR_GFX", 39: "TEMP_VR_SOC", 40: "TEMP_VR_MEM0", 41: "TEMP_VR_MEM1",
    42: "TEMP_LIQUID0", 43: "TEMP_LIQUID1", 44: "VRHOT0", 45: "VRHOT1", 46: "PROCHOT_CPU", 47: "PROCHOT_GFX",
    56: "PPM", 57: "FIT",
}  # fmt: skip
INDEP_THROTTLE: dict[int, tuple[str, str]] = {
    bit: (name, "fail" if name.startswith(("VRHOT", "PROCHOT")) else "warn") for bit, name in _INDEP_NAMES.items()
}
THROTTLE_FIX = (
    "check cooling and power: `amd-smi metric --throttle --temperature --power` (`amd-smi monitor --violation` "
    "while it runs); restore the default power cap with `sudo amd-smi reset --power-cap`"
)
INSTALL_FIX = (
    "install the amdgpu driver and ROCm as AMD's Linux install guide says (`sudo amdgpu-install --usecase=rocm`), "
    "then reboot; `amd-smi list` must list the GPUs"
)
GROUPS_FIX = "add the user to the render and video groups: `sudo usermod -a -G render,video $LOGNAME`, then log in again"


class AmdSmiUnavailable(RuntimeError):
    """No AMD SMI here: the amdsmi package is missing, or the amdgpu driver is not loaded."""


# ---------------------------------------------------------------- the library, or its replay


def _plain(value: Any) -> Any:
    """A call's argument as the recording keys it: a handle as {"gpu": i}, an enum by its name."""
    if isinstance(value, Enum):
        return value.name
    return value


def _key(fn: str, args: list) -> str:
    return json.dumps([fn, args])


class AmdSmiLibraryException(Exception):
    """The replay's library error, shaped as amdsmi's: `get_error_code()` and `get_error_info()`."""

    def __init__(self, err_code: int, err_info: str = "") -> None:
        super().__init__(err_code)
        self.err_code = err_code
        self.err_info = err_info or f"AMDSMI status {err_code}"

    def __str__(self) -> str:
        return f"Error code:\n\t{self.err_code} | {self.err_info}"

    def get_error_code(self) -> int:
        return self.err_code

    def get_error_info(self) -> str:
        return self.err_info


class AmdSmiMemoryType(Enum):
    VRAM = 0
    VIS_VRAM = 1
    GTT = 2


class AmdSmiClkType(Enum):
    GFX = 0
    MEM = 1


class AmdSmiTemperatureType(Enum):
    EDGE = 0
    HOTSPOT = 1
    VRAM = 2


class AmdSmiTemperatureMetric(Enum):
    CURRENT = 0


class ReplayAmdSmi:
    """Answers amdsmi calls from a recording: the same function names, handles and return shapes. A call the recording
    lacks answers as the library does for a reading a device does not give (AMDSMI_STATUS_NOT_SUPPORTED), naming
    the recording, so the kit reads it as "not reported"."""

    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiMemoryType = AmdSmiMemoryType
    AmdSmiClkType = AmdSmiClkType
    AmdSmiTemperatureType = AmdSmiTemperatureType
    AmdSmiTemperatureMetric = AmdSmiTemperatureMetric

    def __init__(self, recording: dict, path: str = "") -> None:
        self._rec = recording
        self.path = path

    @classmethod
    def load(cls, path: Path | str) -> ReplayAmdSmi:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not isinstance(data.get("calls", {}), dict):
            raise ValueError("not an amdsmi recording (a JSON object with `calls`)")
        return cls(data, str(path))

    def amdsmi_init(self, *flags: Any) -> None:
        err = self._rec.get("init_error")
        if err:
            raise AmdSmiLibraryException(int(err["code"]), str(err.get("info", "")))

    def amdsmi_shut_down(self) -> None:
        pass

    def amdsmi_get_processor_handles(self) -> list[dict]:
        return [{"gpu": i} for i in range(int(self._rec.get("device_count", 0)))]

    def __getattr__(self, fn: str):
        if not fn.startswith("amdsmi_"):
            raise AttributeError(fn)

        def replay(*args: Any) -> Any:
            entry = self._rec.get("calls", {}).get(_key(fn, [_plain(a) for a in args]))
            if entry is None:
                raise AmdSmiLibraryException(
                    AMDSMI_STATUS_NOT_SUPPORTED, f"AMDSMI_STATUS_NOT_SUPPORTED - not in the recording {self.path}"
                )
            if "error" in entry:
                raise AmdSmiLibraryException(int(entry["error"]["code"]), str(entry["error"].get("info", "")))
            return entry["result"]

        return replay


def open_amdsmi(recording: Path | str | None = None) -> Any:
    """amdsmi, initialized (or a replay of `recording`); AmdSmiUnavailable when neither can answer."""
    if recording:
        lib: Any = ReplayAmdSmi.load(recording)
    else:
        try:
            import amdsmi as lib  # type: ignore[import-not-found]
        except ImportError:
            raise AmdSmiUnavailable(
                "the amdsmi Python package is not installed: ROCm ships it "
                "(`python3 -m pip install /opt/rocm/share/amd_smi`)"
            ) from None
        except OSError as e:  # the package is there, libamd_smi.so is not
            raise AmdSmiUnavailable(f"the amdsmi package cannot load ROCm's libamd_smi.so: {e}") from None
    try:
        lib.amdsmi_init()
    except lib.AmdSmiLibraryException as e:
        why = e.get_error_info()
        hint = " (no amdgpu driver loaded on this host?)" if e.get_error_code() == AMDSMI_STATUS_DRIVER_NOT_LOADED else ""
        raise AmdSmiUnavailable(f"amdsmi cannot start: {why}{hint}") from None
    return lib


def _call(lib: Any, fn: str, *args: Any) -> Any:
    """One amdsmi reading, or None when the library refuses it, lacks the function, or answers "N/A"."""
    func = getattr(lib, fn, None)
    if func is None:
        return None
    try:
        value = func(*args)
    except lib.AmdSmiLibraryException:
        return None
    return None if value == "N/A" else value


def _num(value: Any) -> float | None:
    """A reading as a number; "N/A", None, booleans and text are not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _str(value: Any) -> str | None:
    return None if value in (None, "", "N/A") else str(value)


def _get(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, dict) else None


def decode_indep_throttle(mask: int) -> list[tuple[str, str]]:
    """The set bits of gpu_metrics' indep_throttle_status as (name, status); unknown bits warn by number."""
    out = [INDEP_THROTTLE[bit] for bit in sorted(INDEP_THROTTLE) if mask >> bit & 1]
    unknown = mask & ~sum(1 << bit for bit in INDEP_THROTTLE)
    if unknown:
        out.append((f"UNKNOWN_{unknown:#x}", "warn"))
    return out


def _worst(statuses: list[str]) -> str:
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def throttle_of(lib: Any, handle: Any, metrics: Any = None) -> tuple[list[str] | None, str | None]:
    """Why the clocks are held down now, by AMD's names, and the worst status; (None, None): not reported.

    MI300 and later answer amdsmi_get_violation_status (its *_active flags); older Instinct parts set bits in
    gpu_metrics' indep_throttle_status; failing both, gpu_metrics' throttle_status says only whether."""
    v = _call(lib, "amdsmi_get_violation_status", handle)
    if isinstance(v, dict) and any(isinstance(v.get(k), bool) for k, *_ in VIOLATIONS):
        hits = [(name, status) for k, name, status, _ in VIOLATIONS if v.get(k) is True]
        return [n for n, _ in hits], _worst([s for _, s in hits])
    metrics = metrics if metrics is not None else _call(lib, "amdsmi_get_gpu_metrics_info", handle)
    mask = _get(metrics, "indep_throttle_status")
    if isinstance(mask, int) and not isinstance(mask, bool):
        hits = decode_indep_throttle(mask)
        return [n for n, _ in hits], _worst([s for _, s in hits])
    flag = _get(metrics, "throttle_status")
    if isinstance(flag, bool) or isinstance(flag, int):
        return (["THROTTLED"], "warn") if flag else ([], "ok")
    return None, None


def _processes(lib: Any, handle: Any) -> list[dict[str, Any]] | None:
    procs = _call(lib, "amdsmi_get_gpu_process_list", handle)
    if not isinstance(procs, list):
        return None
    out = []
    for p in procs:
        if not isinstance(p, dict) or not isinstance(p.get("pid"), int):
            continue
        vram = _get(p.get("memory_usage"), "vram_mem")
        out.append({"pid": p["pid"], "name": _str(p.get("name")), "used_bytes": vram if isinstance(vram, int) else None})
    return out


def _memory_total(lib: Any, handle: Any) -> int | None:
    size = _get(_call(lib, "amdsmi_get_gpu_vram_info", handle), "vram_size")
    if isinstance(size, int) and size > 0:
        return size * MIB
    total = _call(lib, "amdsmi_get_gpu_memory_total", handle, lib.AmdSmiMemoryType.VRAM)
    return total if isinstance(total, int) and total > 0 else None


def rocm_version(root: Path) -> str | None:
    """The host's ROCm user space, from the version file ROCm's rocm-core package installs ($ROCM_PATH/.info/version,
    "6.2.0-66"), or None when ROCm is not installed here (a container image or a ROCm PyTorch wheel brings its own)."""
    base = os.environ.get("ROCM_PATH", "/opt/rocm")
    try:
        text = (root / base.lstrip("/") / ".info" / "version").read_text().strip()
    except OSError:
        return None
    return text.split("-")[0] or None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


# ---------------------------------------------------------------- the vendor


class AmdVendor:
    """AMD Instinct through amdsmi. `recording`: answer from a recording instead (else KIT_AMDSMI_RECORDING);
    `root`: where /dev and /opt/rocm are looked up (tests point it at a temporary tree)."""

    name = "amd"
    title = "AMD"
    device_word = "GPU"
    torch_device = "cuda"  # ROCm's PyTorch keeps torch.cuda; DeepSpeed's accelerator there is its CUDA_Accelerator
    dist_backend = "nccl"  # RCCL, under NCCL's name
    slurm_gres = "gpu"
    forward_env = ("NCCL_", "RCCL_", "HSA_", "HIP_LAUNCH_BLOCKING", "AMD_LOG_LEVEL")  # travels into containers
    runtime = Runtime()  # nothing to import or set: torch.cuda is ROCm's device

    def __init__(self, recording: Path | str | None = None, root: Path | str = "/") -> None:
        self.recording = str(recording) if recording else os.environ.get(RECORDING_ENV) or None
        self.root = Path(root)
        self._last: Probe | None = None

    # -- probe --
    def probe(self) -> Probe:
        replayed = {"replayed_from": self.recording} if self.recording else {}
        try:
            lib = open_amdsmi(self.recording)
        except AmdSmiUnavailable as e:
            return self._keep(Probe(self.name, False, reason=str(e), **replayed))
        except (OSError, ValueError) as e:  # a recording that cannot be read
            return self._keep(Probe(self.name, False, reason=f"{RECORDING_ENV}={self.recording}: {e}", **replayed))
        try:
            return self._keep(self._probe(lib, replayed))
        finally:
            _call(lib, "amdsmi_shut_down")

    def _keep(self, probe: Probe) -> Probe:
        self._last = probe
        return probe

    def _probe(self, lib: Any, replayed: dict[str, Any]) -> Probe:
        handles = list(lib.amdsmi_get_processor_handles())
        devices, driver = [], None
        for i, h in enumerate(handles):
            asic = _call(lib, "amdsmi_get_gpu_asic_info", h)
            drv = _call(lib, "amdsmi_get_gpu_driver_info", h)
            driver = driver or _str(_get(drv, "driver_version"))
            render = _get(_call(lib, "amdsmi_get_gpu_enumeration_info", h), "drm_render")
            uncorrectable = _get(_call(lib, "amdsmi_get_gpu_total_ecc_count", h), "uncorrectable_count")
            metrics = _call(lib, "amdsmi_get_gpu_metrics_info", h)
            names, status = throttle_of(lib, h, metrics)
            devices.append(Device(
                index=i,
                name=_str(_get(asic, "market_name")) or "",
                memory_bytes=_memory_total(lib, h),
                uuid=_str(_call(lib, "amdsmi_get_gpu_device_uuid", h)),
                bus_id=_str(_call(lib, "amdsmi_get_gpu_device_bdf", h)),
                firmware=_str(_get(_call(lib, "amdsmi_get_gpu_vbios_info", h), "version")),
                extra={
                    "gfx_version": _str(_get(asic, "target_graphics_version")),
                    "device_id": _str(_get(asic, "device_id")),
                    "render_minor": render if isinstance(render, int) else None,
                    "throttle": names,
                    "throttle_status": status,
                    "ecc_uncorrectable": uncorrectable if isinstance(uncorrectable, int) else None,
                    "processes": _processes(lib, h),
                },
            ))  # fmt: skip
        self._links(lib, handles, devices)
        return Probe(
            self.name, True, driver=driver, toolkit=rocm_version(self.root), devices=devices, link_kind="xGMI",
            **replayed,
        )  # fmt: skip

    @staticmethod
    def _links(lib: Any, handles: list, devices: list[Device]) -> None:
        """xGMI links per GPU: peers the topology reaches over xGMI (present), and of those the peers it can reach
        peer to peer (up). Left None when the library reports no link type at all."""
        for i, h in enumerate(handles):
            present = up = 0
            reported = False
            for j, h2 in enumerate(handles):
                if i == j:
                    continue
                kind = _get(_call(lib, "amdsmi_topo_get_link_type", h, h2), "type")
                if not isinstance(kind, int):
                    continue
                reported = True
                if kind == AMDSMI_IOLINK_TYPE_XGMI:
                    present += 1
                    up += 1 if _call(lib, "amdsmi_is_P2P_accessible", h, h2) is True else 0
            if reported:
                devices[i].links, devices[i].links_up = present, up

    # -- sampler --
    def sampler(self) -> AmdSampler | None:
        try:
            lib = open_amdsmi(self.recording)
        except (AmdSmiUnavailable, OSError, ValueError):
            return None
        try:
            return AmdSampler(lib)
        except lib.AmdSmiLibraryException:
            _call(lib, "amdsmi_shut_down")
            return None

    # -- checks --
    def host_checks(self, probe: Probe, expected: int, device: str = "") -> list[Check]:
        if not probe.available:
            if device.lower() == "cpu":
                return [Check("gpu", "GPUs", "skip", f"no AMD SMI ({probe.reason}); this config runs on CPU")]
            return [Check("gpu", "GPUs", "fail", f"no AMD GPU: {probe.reason}", self._unavailable_fix(probe))]
        devs = probe.devices
        checks = [_count(len(devs), expected)]
        if not devs:
            return checks
        return checks + [_models(devs, device), _memory(devs), _ecc(devs), _throttle(devs), _xgmi(devs),
                         _other_processes(devs)]  # fmt: skip

    def driver_checks(self, probe: Probe) -> list[Check]:
        if not probe.available:
            return [Check("driver", "amdgpu driver", "fail", str(probe.reason), self._unavailable_fix(probe))]
        out = []
        if probe.driver:
            out.append(Check("driver", "amdgpu driver", "ok", f"amdgpu {probe.driver}", data={"driver": probe.driver}))
        else:
            out.append(Check(
                "driver", "amdgpu driver", "warn", "amdsmi did not report the amdgpu driver version",
                "check `amd-smi static --driver` and `cat /sys/module/amdgpu/version`", {"driver": None},
            ))  # fmt: skip
        out.append(self._rocm_check(probe))
        if probe.replayed_from and (self.root == Path("/") or not (self.root / "dev").is_dir()):
            out.append(Check("driver", "/dev/kfd", "skip", "a recording without /dev: not the recorded host's"))
        else:
            out += self._device_node_checks()
        return out

    @staticmethod
    def _unavailable_fix(probe: Probe) -> str:
        reason = str(probe.reason or "")
        if "not installed" in reason:
            return "install ROCm's amdsmi package: `python3 -m pip install /opt/rocm/share/amd_smi` (or " + INSTALL_FIX + ")"
        if "recording" in reason or RECORDING_ENV in reason:
            return f"point {RECORDING_ENV} at a recording made with `python -m kit.vendors.amd record OUT.json`"
        return "load the amdgpu kernel driver (`sudo modprobe amdgpu`) or " + INSTALL_FIX

    def _rocm_check(self, probe: Probe) -> Check:
        data = {"rocm": probe.toolkit}
        if not probe.toolkit:
            return Check(
                "driver", "ROCm", "skip",
                "no ROCm install on this host (/opt/rocm/.info/version): a ROCm image or ROCm PyTorch wheel brings its "
                "own; only the amdgpu driver must be on the host", data=data,
            )  # fmt: skip
        gfx942 = [d.index for d in probe.devices if d.extra.get("gfx_version") == "gfx942"]
        if gfx942 and _version_tuple(probe.toolkit) < ROCM_FOR_GFX942:
            return Check(
                "driver", "ROCm", "warn",
                f"ROCm {probe.toolkit}: the MI300 series (gfx942) is supported from ROCm 6.0",
                "install ROCm 6.0 or newer (`amdgpu-install --usecase=rocm` from AMD's 6.x repository)", data,
            )  # fmt: skip
        return Check("driver", "ROCm", "ok", f"ROCm {probe.toolkit} on the host", data=data)

    def _device_node_checks(self) -> list[Check]:
        """/dev/kfd (compute, shared by every GPU) and /dev/dri/renderD* (one per GPU): present, and open to this user."""
        kfd = self.root / "dev" / "kfd"
        out = []
        if not kfd.exists():
            out.append(Check(
                "driver", "/dev/kfd", "fail", "no /dev/kfd: the amdgpu kernel driver (its KFD compute interface) is "
                "not loaded", "load it: `sudo modprobe amdgpu`; install it with `sudo amdgpu-install --usecase=dkms`",
            ))  # fmt: skip
        elif not os.access(kfd, os.R_OK | os.W_OK):
            out.append(Check("driver", "/dev/kfd", "fail", f"{kfd} is not open to this user", GROUPS_FIX))
        else:
            out.append(Check("driver", "/dev/kfd", "ok", "present and open to this user"))
        dri = self.root / "dev" / "dri"
        renders = sorted(dri.glob("renderD*")) if dri.is_dir() else []
        closed = [p.name for p in renders if not os.access(p, os.R_OK | os.W_OK)]
        if not renders:
            out.append(Check("driver", "/dev/dri", "fail", "no /dev/dri/renderD* render nodes", "load the amdgpu "
                             "driver (`sudo modprobe amdgpu`); `ls /dev/dri` must list renderD128 and up"))  # fmt: skip
        elif closed:
            out.append(Check("driver", "/dev/dri", "fail", f"not open to this user: {', '.join(closed)}", GROUPS_FIX))
        else:
            out.append(Check("driver", "/dev/dri", "ok", f"{len(renders)} render nodes open to this user"))
        return out

    # -- containers --
    def container_access(self, count: int) -> ContainerAccess:
        """ROCm's container recipe: /dev/kfd and /dev/dri, the groups that own them. Fewer GPUs than the host has:
        their render nodes when amdsmi names them (ROCm 6.4's enumeration info), else all of /dev/dri with
        ROCR_VISIBLE_DEVICES (AMD's GPU isolation variable) limiting the runtime to the first `count`."""
        probe = self._last or self.probe()
        devs = probe.devices
        devices = ["/dev/kfd:/dev/kfd:rwm"]
        env: dict[str, str] = {}
        minors = [d.extra.get("render_minor") for d in devs[:count]]
        if 0 < count < len(devs) and all(isinstance(m, int) for m in minors):
            devices += [f"/dev/dri/renderD{m}:/dev/dri/renderD{m}:rwm" for m in minors]
            how = "their render nodes"
        else:
            devices.append("/dev/dri:/dev/dri:rwm")
            how = "/dev/dri"
            if 0 < count < len(devs):
                env["ROCR_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(count))
                how += f", ROCR_VISIBLE_DEVICES={env['ROCR_VISIBLE_DEVICES']}"
        return ContainerAccess(
            devices=devices, environment=env, group_add=self._groups(),
            note=f"{count} AMD GPU(s) through /dev/kfd and {how}",
        )  # fmt: skip

    def _groups(self) -> list[str]:
        """The groups owning /dev/kfd and the render nodes, by number (a container's /etc/group may not know
        `render`); by name (video, render) when the nodes are not here to ask."""
        nodes = [self.root / "dev" / "kfd", *sorted((self.root / "dev" / "dri").glob("renderD*"))]
        gids = sorted({str(p.stat().st_gid) for p in nodes if p.exists()}, key=int)
        return gids or ["video", "render"]

    def owns(self, device_name: str) -> bool:
        n = device_name.upper()
        return "AMD" in n or "INSTINCT" in n or re.search(r"(?<![A-Z0-9])MI\d{3}[A-Z]?(?![0-9])", n) is not None

    # -- images and containers (kit/vendors/images.py) --
    variant_label = "ROCm"
    variant_option = ""  # `kit build --variant`
    toolkit_label = "ROCm"  # Probe.toolkit: the host's /opt/rocm version
    libraries = ("amdsmi",)

    def image_variants(self, stack: str) -> list[Any]:
        """env/stacks.toml's rows with vendor = "amd": none yet (a ROCm variant needs its lock of ROCm wheels)."""
        from .images import variants_of

        return variants_of(self.name, stack)

    def choose_variant(self, probe: Probe, stack: str) -> Any:
        """The stack's first AMD variant: the kit has no table of which ROCm user space an amdgpu driver runs."""
        from .images import first_variant

        return first_variant(self, probe, stack)

    def base_variant(self, image: str) -> str | None:
        """ROCm's images name their ROCm version: rocm/pytorch:rocm6.2.3_ubuntu22.04_py3.10_pytorch_release_2.3.0,
        rocm/dev-ubuntu-22.04:6.2.4 -> '6.2'."""
        m = re.search(r"(?:^|/)rocm/pytorch[\w.-]*:rocm(\d+\.\d+)", image or "") or re.search(
            r"(?:^|/)rocm/dev-[\w.-]+:(\d+\.\d+)", image or "")
        return m.group(1) if m else None

    def docker_checks(self, info: dict[str, Any], count: int | None, root: str | Path | None = None) -> list[Check]:
        """No runtime: the engine passes /dev/kfd and /dev/dri (or the render nodes) as devices, which must be here."""
        from .images import device_paths_check

        base = Path(root) if root is not None else self.root
        access = self.container_access(count or 0)
        fix = ("load the amdgpu kernel driver (`sudo modprobe amdgpu`; install it with `sudo amdgpu-install "
               "--usecase=dkms`): /dev/kfd and /dev/dri/renderD* must exist on the host")  # fmt: skip
        return [device_paths_check(self, access, count, base, fix, "gpu devices")]

    def smoke(self) -> Any:
        """`amd-smi list` prints a "GPU: N" block per GPU with its PCI address (ROCm's images carry amd-smi)."""
        from .base import Smoke

        return Smoke(["amd-smi", "list"], r"^GPU: \d+\s*\n\s+BDF: (\S+)",
                     "the container must get /dev/kfd and /dev/dri and the groups owning them (`--device /dev/kfd "
                     "--device /dev/dri --group-add video`, which kit passes); load the amdgpu driver on the host "
                     "(`sudo modprobe amdgpu`); the image must carry amd-smi (ROCm's images do)")  # fmt: skip


class AmdSampler:
    """Every GPU, now, through amdsmi: gpu_metrics first (one call holds activity, power, clocks, temperature and
    throttling, as `amd-smi monitor` reads it), the single-reading calls where a field is missing."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.handles = list(lib.amdsmi_get_processor_handles())
        self._fixed = []
        for i, h in enumerate(self.handles):
            clk = _call(lib, "amdsmi_get_clock_info", h, lib.AmdSmiClkType.GFX)
            self._fixed.append({
                "index": i,
                "name": _str(_get(_call(lib, "amdsmi_get_gpu_asic_info", h), "market_name")),
                "clock_max_mhz": _num(_get(clk, "max_clk")),
            })  # fmt: skip

    def fixed(self) -> list[dict[str, Any]]:
        return [dict(f) for f in self._fixed]

    def reasons(self) -> dict[str, str]:
        """The status of every throttle name this sampler may give (violation flags and indep_throttle bits)."""
        out = {name: status for _, name, status, _ in VIOLATIONS}
        out.update({name: status for name, status in INDEP_THROTTLE.values()})
        return out

    def sample(self) -> list[Reading]:
        lib, out = self.lib, []
        for i, h in enumerate(self.handles):
            m = _call(lib, "amdsmi_get_gpu_metrics_info", h)
            util = _num(_get(m, "average_gfx_activity"))
            if util is None:
                util = _num(_get(_call(lib, "amdsmi_get_gpu_activity", h), "gfx_activity"))
            power = _num(_get(m, "current_socket_power"))
            power = power if power is not None else _num(_get(m, "average_socket_power"))
            if power is None:
                info = _call(lib, "amdsmi_get_power_info", h)
                power = _num(_get(info, "current_socket_power"))
                power = power if power is not None else _num(_get(info, "average_socket_power"))
            cap = _num(_get(_call(lib, "amdsmi_get_power_cap_info", h), "power_cap"))  # microwatts
            clock = _num(_get(m, "current_gfxclk"))
            if clock is None:
                clock = _num(_get(_call(lib, "amdsmi_get_clock_info", h, lib.AmdSmiClkType.GFX), "clk"))
            temp = _num(_get(m, "temperature_hotspot"))
            if temp is None:
                temp = _num(_call(lib, "amdsmi_get_temp_metric", h, lib.AmdSmiTemperatureType.HOTSPOT,
                                  lib.AmdSmiTemperatureMetric.CURRENT))  # fmt: skip
            used, total = self._vram(h)
            names, status = throttle_of(lib, h, m)
            procs = _processes(lib, h) or []
            out.append(Reading(
                index=i, util_pct=util, mem_used_bytes=used, mem_total_bytes=total, power_w=power,
                power_limit_w=cap / 1e6 if cap else None, clock_mhz=clock, clock_max_mhz=self._fixed[i]["clock_max_mhz"],
                temp_c=temp, throttle=names, throttle_status=status,
                processes=[{"pid": p["pid"], "used_bytes": p["used_bytes"]} for p in procs],
            ))  # fmt: skip
        return out

    def _vram(self, h: Any) -> tuple[int | None, int | None]:
        usage = _call(self.lib, "amdsmi_get_gpu_vram_usage", h)
        used, total = _get(usage, "vram_used"), _get(usage, "vram_total")
        if isinstance(used, int) and isinstance(total, int) and total > 0:
            return used * MIB, total * MIB
        used = _call(self.lib, "amdsmi_get_gpu_memory_usage", h, self.lib.AmdSmiMemoryType.VRAM)
        return (used if isinstance(used, int) else None), _memory_total(self.lib, h)

    def close(self) -> None:
        _call(self.lib, "amdsmi_shut_down")


# ---------------------------------------------------------------- check rows


def _gpus(indices: list[int]) -> str:
    return ", ".join(f"GPU{i}" for i in indices)


def _count(found: int, expected: int) -> Check:
    data = {"found": found, "expected": expected}
    if found >= expected:
        extra = f" ({found - expected} more than the config uses)" if found > expected else ""
        return Check("gpu", "GPU count", "ok", f"{found} GPUs, the config needs {expected}{extra}", data=data)
    fix = (
        f"run on a host with {expected} GPUs, or pick a config for {found} GPU(s) (`kit configs`), or pass "
        f"`--gpus {found}` to `kit run` (the global batch is kept through gradient accumulation)"
        if found
        else INSTALL_FIX
    )
    return Check("gpu", "GPU count", "fail", f"{found} GPUs found, the config needs {expected} per node", fix, data)


def _models(devs: list[Device], device: str) -> Check:
    named = [d for d in devs if d.name]
    counted = Counter(d.name for d in named)
    gfx = sorted({str(d.extra.get("gfx_version")) for d in devs if d.extra.get("gfx_version")})
    data = {"names": [d.name or None for d in devs], "gfx_version": gfx}
    if not named:
        return Check("gpu", "GPU model", "warn", "amdsmi reported no market name",
                     "check `amd-smi static --asic`", data)  # fmt: skip
    shown = ", ".join(f"{k} x{v}" for k, v in counted.items()) + (f" ({', '.join(gfx)})" if gfx else "")
    missing = [d.index for d in devs if not d.name]
    if missing:
        shown += f"; not reported for {_gpus(missing)}"
    if len(counted) > 1:
        return Check("gpu", "GPU model", "warn", f"mixed GPU models: {shown}; the slowest paces every step",
                     "use GPUs of one model (select them with ROCR_VISIBLE_DEVICES)", data)  # fmt: skip
    if device and device.lower() != "cpu" and device.upper() not in named[0].name.upper():
        shown += f"; the config was written for {device} (batches and offload are tuned for it)"
    return Check("gpu", "GPU model", "ok", shown, data=data)


def _memory(devs: list[Device]) -> Check:
    """The memory of each device; whether the case's batches fit it is the case's question, not the vendor's."""
    totals = [d.memory_bytes for d in devs if d.memory_bytes]
    missing = [d.index for d in devs if not d.memory_bytes]
    data = {"total_bytes": [d.memory_bytes for d in devs]}
    if not totals:
        return Check("gpu", "GPU memory", "warn", "not reported by amdsmi", "check `amd-smi static --vram`", data)
    detail = f"{min(totals) / GIB:.0f} GiB per GPU" + (f" (not reported for {_gpus(missing)})" if missing else "")
    return Check("gpu", "GPU memory", "ok", detail, data=data)


def _ecc(devs: list[Device]) -> Check:
    counts = {d.index: d.extra.get("ecc_uncorrectable") for d in devs}
    bad = [f"GPU{i}: {n}" for i, n in counts.items() if isinstance(n, int) and n > 0]
    data = {"uncorrectable": counts}
    if bad:
        return Check(
            "gpu", "ECC", "fail", f"uncorrectable ECC errors ({', '.join(bad)}): results and runs are unreliable",
            "look at `amd-smi metric --ecc` and `amd-smi bad-pages`; reset the GPU (`sudo amd-smi reset --gpureset "
            "-g N`) or reboot, and have it serviced if errors return", data,
        )  # fmt: skip
    if all(n is None for n in counts.values()):
        return Check("gpu", "ECC", "ok", "not reported by amdsmi", data=data)
    return Check("gpu", "ECC", "ok", "no uncorrectable errors", data=data)


def _throttle(devs: list[Device]) -> Check:
    lines, worst = [], "ok"
    for d in devs:
        status = d.extra.get("throttle_status")
        if status in ("warn", "fail"):
            lines.append(f"GPU{d.index}: {', '.join(d.extra.get('throttle') or [])}")
            worst = "fail" if "fail" in (worst, status) else "warn"
    data = {"throttle": {d.index: d.extra.get("throttle") for d in devs}}
    if worst != "ok":
        return Check("gpu", "clock events", worst, "clocks held down: " + "; ".join(lines), THROTTLE_FIX, data)
    reported = [d.index for d in devs if d.extra.get("throttle") is not None]
    if not reported:
        return Check("gpu", "clock events", "ok", "not reported by amdsmi", data=data)
    missing = [d.index for d in devs if d.extra.get("throttle") is None]
    detail = "none" + (f" (not reported for {_gpus(missing)})" if missing else "")
    return Check("gpu", "clock events", "ok", detail, data=data)


def _xgmi(devs: list[Device]) -> Check:
    data = {"links_up": [d.links_up for d in devs], "links_present": [d.links for d in devs]}
    if all(d.links is None for d in devs):
        return Check("gpu", "xGMI", "skip", "link types not reported by amdsmi (`amd-smi topology` shows them)", data=data)
    if not any(d.links for d in devs):
        return Check("gpu", "xGMI", "skip", "no xGMI (GPUs talk over PCIe)", data=data)
    shown = ", ".join(f"GPU{d.index} {d.links_up}/{d.links}" for d in devs if d.links is not None)
    down = [d.index for d in devs if d.links is not None and (d.links_up or 0) < d.links]
    fewer = len(devs) > 1 and any(d.links is not None and d.links < len(devs) - 1 for d in devs) and any(
        d.links == len(devs) - 1 for d in devs)  # fmt: skip
    if down or fewer:
        return Check(
            "gpu", "xGMI", "warn", f"links down or missing: {shown} (up/present); traffic falls back to PCIe",
            "check `amd-smi topology` (LINK TYPE and ACCESS tables) and `amd-smi xgmi`; reseat or service the "
            "GPU baseboard if links stay down", data,
        )  # fmt: skip
    return Check("gpu", "xGMI", "ok", f"all links up: {shown}", data=data)


def _other_processes(devs: list[Device]) -> Check:
    found = [{"gpu": d.index, **p} for d in devs for p in (d.extra.get("processes") or [])]
    if not found:
        reported = any(d.extra.get("processes") is not None for d in devs)
        return Check("gpu", "other processes", "ok", "none on the GPUs" if reported else "not reported by amdsmi",
                     data={"processes": []})  # fmt: skip
    shown = ", ".join(
        f"GPU{p['gpu']} pid {p['pid']}" + (f" ({p['used_bytes'] / GIB:.1f} GiB)" if p["used_bytes"] else "") for p in found
    )
    return Check(
        "gpu", "other processes", "warn", f"{shown}: they take memory and time from the run",
        "stop them (`sudo amd-smi process` lists them, then `kill PID`) or give the run other GPUs with "
        "ROCR_VISIBLE_DEVICES", {"processes": found},
    )  # fmt: skip


# ---------------------------------------------------------------- recording a real host

DEVICE_CALLS: list[tuple[str, tuple[str, ...]]] = [
    ("amdsmi_get_gpu_asic_info", ()),
    ("amdsmi_get_gpu_vram_info", ()),
    ("amdsmi_get_gpu_memory_total", ("AmdSmiMemoryType.VRAM",)),
    ("amdsmi_get_gpu_memory_usage", ("AmdSmiMemoryType.VRAM",)),
    ("amdsmi_get_gpu_vram_usage", ()),
    ("amdsmi_get_gpu_device_uuid", ()),
    ("amdsmi_get_gpu_device_bdf", ()),
    ("amdsmi_get_gpu_driver_info", ()),
    ("amdsmi_get_gpu_vbios_info", ()),
    ("amdsmi_get_gpu_enumeration_info", ()),
    ("amdsmi_get_gpu_metrics_info", ()),
    ("amdsmi_get_violation_status", ()),
    ("amdsmi_get_gpu_total_ecc_count", ()),
    ("amdsmi_get_gpu_process_list", ()),
    ("amdsmi_get_gpu_activity", ()),
    ("amdsmi_get_power_info", ()),
    ("amdsmi_get_power_cap_info", ()),
    ("amdsmi_get_clock_info", ("AmdSmiClkType.GFX",)),
    ("amdsmi_get_temp_metric", ("AmdSmiTemperatureType.HOTSPOT", "AmdSmiTemperatureMetric.CURRENT")),
]
PAIR_CALLS = ["amdsmi_topo_get_link_type", "amdsmi_is_P2P_accessible", "amdsmi_topo_get_link_weight"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def record(lib: Any) -> dict[str, Any]:
    """Every call of the lists above on this host, each answer or error as the library gave it."""
    calls: dict[str, Any] = {}

    def const(path: str) -> Any:
        cls, _, member = path.partition(".")
        return getattr(getattr(lib, cls), member)

    def call(fn: str, shown: list, args: tuple) -> None:
        try:
            calls[_key(fn, shown)] = {"result": _jsonable(getattr(lib, fn)(*args))}
        except AttributeError:
            calls[_key(fn, shown)] = {"error": {"code": AMDSMI_STATUS_NOT_SUPPORTED, "info": f"{fn}: not in this amdsmi"}}
        except lib.AmdSmiLibraryException as e:
            calls[_key(fn, shown)] = {"error": {"code": e.get_error_code(), "info": e.get_error_info()}}

    lib.amdsmi_init()
    try:
        handles = list(lib.amdsmi_get_processor_handles())
        for i, h in enumerate(handles):
            for fn, extra in DEVICE_CALLS:
                values = [const(a) for a in extra]
                call(fn, [{"gpu": i}, *[a.split(".")[1] for a in extra]], (h, *values))
            for j, h2 in enumerate(handles):
                if i != j:
                    for fn in PAIR_CALLS:
                        call(fn, [{"gpu": i}, {"gpu": j}], (h, h2))
    finally:
        lib.amdsmi_shut_down()
    return {"source": ["recorded with `python -m kit.vendors.amd record`"], "recorded_at": time.time(),
            "device_count": len(handles), "calls": calls}  # fmt: skip


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "record":
        print("usage: python -m kit.vendors.amd record OUT.json", file=sys.stderr)
        return 2
    try:
        import amdsmi  # type: ignore[import-not-found]
    except ImportError:
        print("the amdsmi Python package is not installed (`python3 -m pip install /opt/rocm/share/amd_smi`)",
              file=sys.stderr)  # fmt: skip
        return 1
    Path(argv[1]).write_text(json.dumps(record(amdsmi), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
