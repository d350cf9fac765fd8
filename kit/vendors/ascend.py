"""Huawei Ascend NPUs through `npu-smi`, the driver's own tool, whose text output is parsed here.

`npu-smi info` prints one table: per NPU (and chip) its name, health, power, temperature, AI Core use, memory and HBM
use and PCIe bus id, then the processes on each NPU; `npu-smi info -t TYPE -i N [-c CHIP]` prints "Key : Value"
lines for one NPU (board: firmware and product; common: AI Core clocks; health: error codes; topo: the HCCS links
between NPUs). The driver's and CANN's versions are read from the files Ascend's installers write
(/usr/local/Ascend/driver/version.info, the toolkit's ascend_toolkit_install.info).

In tests the tool is a stand-in first on PATH that prints outputs recorded on real hosts; KIT_NPU_SMI_RECORDING
names that recording, and a probe made from it says so (`replayed_from`: `kit submit` refuses such facts).

What the case needs on an NPU: `torch_npu` imported before the first rank touches a device (it registers the
"npu" device with torch) and DeepSpeed's NPU accelerator (DS_ACCELERATOR=npu; communication backend "hccl").
FlagPerf's port also imported `torch_npu.contrib.transfer_to_npu`, which rewrites every `torch.cuda` call and
"cuda" device to the NPU; the kit's case calls no `torch.cuda` (every device call goes through DeepSpeed's
accelerator), so that rewrite is not declared: a leftover CUDA call fails loudly instead of being redirected.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from ..checks import Check
from .base import ContainerAccess, Device, Probe, Reading, Runtime

GIB = 1024**3
MIB = 1024**2  # npu-smi's "MB": a 64 GiB HBM reads 65536
TOOL = "npu-smi"
FALLBACKS = ("/usr/local/bin/npu-smi", "/usr/local/sbin/npu-smi")  # where the driver installs it
RECORDING_ENV = "KIT_NPU_SMI_RECORDING"
TIMEOUT_S = 15.0
MANAGER_NODES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
DRIVER_MOUNTS = ("/usr/local/Ascend/driver", "/usr/local/dcmi", "/usr/local/bin/npu-smi", "/etc/ascend_install.info")
# npu-smi's Health column: OK, or Warning / Alarm / Critical (worse in that order).
HEALTH_STATUS = {"OK": "ok", "WARNING": "warn", "ALARM": "fail", "CRITICAL": "fail"}
INSTALL_FIX = (
    "install the Ascend NPU driver and firmware (Ascend HDK) for this server; `npu-smi info` must list the NPUs"
)
NODES_FIX = (
    "run as root or add the user to the HwHiAiUser group the driver's device nodes belong to "
    "(`sudo usermod -a -G HwHiAiUser $LOGNAME`, then log in again)"
)
CANN_ENV_FIX = (
    "`source /usr/local/Ascend/ascend-toolkit/set_env.sh` before `kit run --native` (FlagPerf's Ascend port does the "
    "same in its environment_variables.sh); an image sets it in its environment"
)


class NpuSmiError(RuntimeError):
    """npu-smi did not answer with what was asked (not installed, an error, no table)."""


# ---------------------------------------------------------------- parsing npu-smi's text


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None  # "-" (the second chip of an NPU), "NA"


def parse_info(text: str) -> dict[str, Any]:
    """`npu-smi info`'s table: {"version", "devices": [...], "processes": [...]}; NpuSmiError without a table.

    A device is two rows: "NPU Name | Health | Power Temp Hugepages" then "Chip [Phy-ID] | Bus-Id | AICore
    Memory-Usage [HBM-Usage]". Rows npu-smi does not print (or a reader elided) are simply absent."""
    version = None
    devices: list[dict[str, Any]] = []
    processes: list[dict[str, Any]] = []
    section, has_hbm, pending = None, False, None
    for line in text.splitlines():
        if not line.strip().startswith("|"):
            continue
        cells = _cells(line)
        first = cells[0]
        if first.startswith("npu-smi"):
            m = re.search(r"Version:\s*(\S+)", first)
            version = m.group(1) if m else first.split()[1] if len(first.split()) > 1 else None
            continue
        if first.startswith("NPU") and "Name" in first:
            section = "devices"
            continue
        if first.startswith("Chip") and len(cells) >= 3:
            has_hbm = "HBM" in cells[2]
            continue
        if first.startswith("NPU") and len(cells) >= 2 and "Process id" in cells[1]:
            section = "processes"
            continue
        if section == "devices" and len(cells) >= 3:
            m = re.match(r"^(\d+)\s+(\S.*)$", first)
            if m and not re.match(r"^\d+$", m.group(2)) and pending is None:
                power_temp = cells[2].split()
                pending = {
                    "npu_id": int(m.group(1)), "name": m.group(2).strip(), "health": cells[1],
                    "power_w": _number(power_temp[0]) if power_temp else None,
                    "temp_c": _number(power_temp[1]) if len(power_temp) > 1 else None,
                }  # fmt: skip
                continue
            m = re.match(r"^(\d+)(?:\s+(\d+))?$", first)
            if m and pending is not None:
                pairs = [(int(a), int(b)) for a, b in re.findall(r"(\d+)\s*/\s*(\d+)", cells[2])]
                mem = pairs[0] if pairs else (None, None)
                hbm = pairs[1] if has_hbm and len(pairs) > 1 else (None, None)
                tokens = cells[2].split()
                pending.update({
                    "chip_id": int(m.group(1)), "phy_id": int(m.group(2)) if m.group(2) else None,
                    "bus_id": cells[1] or None, "aicore_pct": _number(tokens[0]) if tokens else None,
                    "mem_used_mb": mem[0], "mem_total_mb": mem[1], "hbm_used_mb": hbm[0], "hbm_total_mb": hbm[1],
                })  # fmt: skip
                devices.append(pending)
                pending = None
            continue
        if section == "processes" and len(cells) >= 4:
            m = re.match(r"^(\d+)\s+(\d+)$", first)
            if m and cells[1].isdigit():
                processes.append({
                    "npu_id": int(m.group(1)), "chip_id": int(m.group(2)), "pid": int(cells[1]),
                    "name": cells[2] or None, "mem_mb": int(cells[3]) if cells[3].isdigit() else None,
                })  # fmt: skip
    if section is None:
        raise NpuSmiError("no device table in `npu-smi info`'s output")
    return {"version": version, "devices": devices, "processes": processes}


def parse_kv(text: str) -> list[dict[str, str]]:
    """`npu-smi info -t TYPE` output as its blank-line separated blocks of "Key : Value" lines. A line with no key
    continues the value before it, across blank lines (the health query's event lines)."""
    blocks: list[dict[str, str]] = []
    block: dict[str, str] = {}
    last: tuple[dict[str, str], str] | None = None
    for line in text.splitlines():
        if not line.strip():
            if block:
                blocks.append(block)
                block = {}
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if not key:
            if last is not None:
                owner, k = last
                owner[k] = f"{owner[k]}; {value}"
            continue
        if key in block:  # a second "Temperature(C)" (the board's MCU) belongs to another block
            blocks.append(block)
            block = {}
        block[key] = value
        last = (block, key)
    if block:
        blocks.append(block)
    return blocks


def chip_block(blocks: list[dict[str, str]], chip: int = 0) -> dict[str, str]:
    """The keys of one chip in an `npu-smi info -t TYPE -i N` answer (the NPU's own keys included)."""
    merged: dict[str, str] = {}
    for b in blocks:
        if "Chip ID" in b and b["Chip ID"] != str(chip):
            continue
        if "Chip Name" in b and "Chip ID" not in b:  # the board's MCU
            continue
        merged.update(b)
    return merged


def parse_topo(text: str) -> dict[int, list[str]]:
    """`npu-smi info -t topo`: per NPU the connection to each other NPU (HCCS, PIX, PXB, PHB, SYS)."""
    rows: dict[int, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*NPU(\d+)\s+(.*)$", line)
        if not m:
            continue
        tokens = m.group(2).split()
        if "X" not in tokens:  # the header line
            continue
        npus = [t for t in tokens if re.fullmatch(r"X|HCCS|PIX|PXB|PHB|SYS|NODE|NA", t)]
        rows[int(m.group(1))] = [t for t in npus if t != "X"]
    return rows


def read_kv_file(path: Path) -> dict[str, str]:
    """A "key=value" file of Ascend's installers (version.info, ascend_toolkit_install.info); {} when unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def cann_version(root: Path) -> tuple[str | None, str | None]:
    """(CANN toolkit version, the file it was read from), or (None, None) where no toolkit is installed."""
    base = root / "usr" / "local" / "Ascend"
    candidates = [
        *sorted((base / "ascend-toolkit" / "latest").glob("*-linux/ascend_toolkit_install.info")),
        *sorted((base / "cann").glob("*-linux/ascend_toolkit_install.info")),  # CANN 8.5's layout
    ]
    for path in candidates:
        version = read_kv_file(path).get("version")
        if version:
            return version, str(path)
    return None, None


# ---------------------------------------------------------------- the vendor


class AscendVendor:
    """Ascend NPUs through npu-smi. `tool`: its path (else PATH, then where the driver installs it); `root`: where
    /usr/local/Ascend and /dev are looked up (tests point it at a recorded tree)."""

    name = "ascend"
    title = "Huawei Ascend"
    device_word = "NPU"
    torch_device = "npu"
    dist_backend = "hccl"
    slurm_gres = "npu"
    # torch_npu registers the "npu" device (DeepSpeed 0.13.1 and 0.19 import it too, in get_accelerator(), but the
    # case may touch torch before it imports DeepSpeed: declared so it comes first, and is recorded); DS_ACCELERATOR
    # makes DeepSpeed take its NPU accelerator even where another extension (IPEX, XPU) is installed, and fail
    # with its own message where torch_npu is missing.
    forward_env = ("HCCL_", "ASCEND_", "ACL_")  # travels into containers
    runtime = Runtime(imports=["torch_npu"], environment={"DS_ACCELERATOR": "npu"})

    def __init__(self, tool: str | None = None, root: Path | str = "/", fallbacks: tuple[str, ...] = FALLBACKS) -> None:
        self.tool = tool
        self.root = Path(root)
        self.fallbacks = fallbacks
        self._last: Probe | None = None

    # -- the tool --
    def _find(self) -> str | None:
        if self.tool:
            return self.tool if os.access(self.tool, os.X_OK) else None
        return shutil.which(TOOL) or next((p for p in self.fallbacks if os.access(p, os.X_OK)), None)

    def run(self, *args: str) -> str:
        """npu-smi's stdout for `args`; NpuSmiError (saying what it printed) when it is missing, fails or hangs."""
        tool = self._find()
        if tool is None:
            raise NpuSmiError(
                "npu-smi is not installed or not on PATH (the Ascend NPU driver installs it as /usr/local/bin/npu-smi)"
            )
        try:
            done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise NpuSmiError(f"`npu-smi {' '.join(args)}` did not answer in {TIMEOUT_S:.0f} s") from None
        except OSError as e:
            raise NpuSmiError(f"{tool} cannot run: {e}") from None
        if done.returncode != 0:
            said = " ".join((done.stdout + " " + done.stderr).split())[:300] or "nothing"
            raise NpuSmiError(f"`npu-smi {' '.join(args)}` failed (exit {done.returncode}): {said}")
        return done.stdout

    def _query(self, *args: str) -> list[dict[str, str]] | None:
        """A "Key : Value" query, or None: not reported (an older driver, a chip that does not answer it)."""
        try:
            return parse_kv(self.run("info", *args))
        except NpuSmiError:
            return None

    # -- probe --
    def probe(self) -> Probe:
        replayed = {"replayed_from": os.environ[RECORDING_ENV]} if os.environ.get(RECORDING_ENV) else {}
        try:
            table = parse_info(self.run("info"))
        except NpuSmiError as e:
            self._last = Probe(self.name, False, reason=str(e), **replayed)
            return self._last
        topo_text = self._text("info", "-t", "topo")
        topo = parse_topo(topo_text) if topo_text else {}
        boards: dict[int, dict[str, str]] = {}
        devices = []
        for k, d in enumerate(table["devices"]):
            npu, chip = d["npu_id"], d["chip_id"]
            if npu not in boards:
                blocks = self._query("-t", "board", "-i", str(npu))
                boards[npu] = chip_block(blocks) if blocks else {}
            board = boards[npu]
            health = {"status": d["health"]}
            if d["health"].upper() != "OK":
                blocks = self._query("-t", "health", "-i", str(npu), "-c", str(chip))
                if blocks:
                    h = chip_block(blocks, chip)
                    health.update(code=h.get("Error Code"), info=h.get("Error Information"))
            links = topo.get(npu)
            total_mb = d["hbm_total_mb"] or d["mem_total_mb"]
            devices.append(Device(
                index=k, name=d["name"], memory_bytes=total_mb * MIB if total_mb else None, bus_id=d["bus_id"],
                links=sum(1 for t in links if t == "HCCS") if links is not None else None,
                firmware=board.get("Firmware Version") or None,
                extra={
                    "npu_id": npu, "chip_id": chip, "phy_id": d["phy_id"], "health": health,
                    "product": board.get("Product Name"), "topology": links,
                    "processes": [
                        {"pid": p["pid"], "name": p["name"], "used_bytes": p["mem_mb"] * MIB if p["mem_mb"] is not None else None}
                        for p in table["processes"] if (p["npu_id"], p["chip_id"]) == (npu, chip)
                    ],
                },
            ))  # fmt: skip
        driver = read_kv_file(self.root / "usr/local/Ascend/driver/version.info").get("version") or table["version"]
        cann, _ = cann_version(self.root)
        self._last = Probe(self.name, True, driver=driver, toolkit=cann, devices=devices, link_kind="HCCS", **replayed)
        return self._last

    def _text(self, *args: str) -> str | None:
        try:
            return self.run(*args)
        except NpuSmiError:
            return None

    # -- sampler --
    def sampler(self) -> AscendSampler | None:
        if self._find() is None:
            return None
        try:
            return AscendSampler(self)
        except NpuSmiError:
            return None

    # -- checks --
    def host_checks(self, probe: Probe, expected: int, device: str = "") -> list[Check]:
        if not probe.available:
            if device.lower() == "cpu":
                return [Check("npu", "NPUs", "skip", f"no npu-smi answer ({probe.reason}); this config runs on CPU")]
            return [Check("npu", "NPUs", "fail", f"no Ascend NPU: {probe.reason}", unavailable_fix(probe))]
        devs = probe.devices
        checks = [_count(len(devs), expected)]
        if not devs:
            return checks
        return checks + [_models(devs, device), _memory(devs), _health(devs), _hccs(devs),
                         _other_processes(devs),
                         Check("npu", "clock events", "skip", "npu-smi reports no throttle reasons")]  # fmt: skip

    def driver_checks(self, probe: Probe) -> list[Check]:
        if not probe.available:
            return [Check("driver", "NPU driver", "fail", str(probe.reason), unavailable_fix(probe))]
        out = [
            Check("driver", "NPU driver", "ok", f"Ascend driver {probe.driver}", data={"driver": probe.driver})
            if probe.driver
            else Check("driver", "NPU driver", "warn", "no driver version (version.info, npu-smi's header)",
                       "check `cat /usr/local/Ascend/driver/version.info`", {"driver": None})  # fmt: skip
        ]
        if probe.toolkit:
            out.append(Check("driver", "CANN", "ok", f"CANN toolkit {probe.toolkit}", data={"cann": probe.toolkit}))
        else:
            out.append(Check(
                "driver", "CANN", "warn",
                "no CANN toolkit under /usr/local/Ascend (ascend-toolkit/latest/*-linux/ascend_toolkit_install.info): "
                "a native run needs one; an image brings its own",
                "install the CANN toolkit (and its kernels package) that Ascend's compatibility table pairs with this "
                "driver, then `source /usr/local/Ascend/ascend-toolkit/set_env.sh`", {"cann": None},
            ))  # fmt: skip
        env = {k: os.environ.get(k) for k in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")}
        if probe.replayed_from:
            out.append(Check("driver", "CANN environment", "skip",
                             "a recording: this process's environment is not the recorded host's"))  # fmt: skip
        elif any(env.values()):
            out.append(Check("driver", "CANN environment", "ok", "set: " + ", ".join(f"{k}={v}" for k, v in env.items() if v),
                             data=env))  # fmt: skip
        else:
            out.append(Check("driver", "CANN environment", "warn",
                             "ASCEND_HOME_PATH is not set: a native run cannot find CANN's libraries", CANN_ENV_FIX, env))  # fmt: skip
        if probe.replayed_from and (self.root == Path("/") or not (self.root / "dev").is_dir()):
            out.append(Check("driver", "NPU device nodes", "skip", "a recording without /dev: not the recorded host's"))
        else:
            out.append(self._nodes_check())
        return out

    def _nodes_check(self) -> Check:
        """The driver's manager devices every container and process needs besides /dev/davinciN."""
        paths = [self.root / n.lstrip("/") for n in MANAGER_NODES]
        missing = [str(Path("/") / p.relative_to(self.root)) for p in paths if not p.exists()]
        closed = [str(Path("/") / p.relative_to(self.root)) for p in paths if p.exists() and not os.access(p, os.R_OK | os.W_OK)]
        data = {"missing": missing, "closed": closed}
        if missing:
            return Check("driver", "NPU device nodes", "fail", f"missing: {', '.join(missing)}", INSTALL_FIX, data)
        if closed:
            return Check("driver", "NPU device nodes", "fail", f"not open to this user: {', '.join(closed)}", NODES_FIX, data)
        return Check("driver", "NPU device nodes", "ok", ", ".join(MANAGER_NODES) + " present and open", data=data)

    # -- containers --
    def container_access(self, count: int) -> ContainerAccess:
        """The devices and driver mounts of LLaMA-Factory's docker-npu compose file, close to Ascend Docker Runtime's
        default mount list: /dev/davinciN per NPU, the three manager devices, the driver, DCMI and npu-smi
        read-only. No ASCEND_VISIBLE_DEVICES: Ascend Docker Runtime mounts
        only when it is set, so the same container works with that runtime as the default or without it."""
        probe = self._last or self.probe()
        ids = []
        for d in probe.devices[:count]:
            phy, npu = d.extra.get("phy_id"), d.extra.get("npu_id")
            ids.append(phy if isinstance(phy, int) else npu if isinstance(npu, int) else d.index)
        if not probe.devices:
            ids = list(range(count))
        devices = [f"/dev/davinci{i}:/dev/davinci{i}:rwm" for i in ids] + [f"{n}:{n}:rwm" for n in MANAGER_NODES]
        return ContainerAccess(
            devices=devices, volumes={p: p for p in DRIVER_MOUNTS},
            note=f"{count} Ascend NPU(s): /dev/davinci{','.join(map(str, ids))}, the manager devices and the driver mounts",
        )  # fmt: skip

    def owns(self, device_name: str) -> bool:
        n = device_name.upper()
        return "ASCEND" in n or "ATLAS" in n or re.search(r"(?<![A-Z0-9])910[A-C]?\d?(?![0-9])", n) is not None

    # -- images and containers (kit/vendors/images.py) --
    variant_label = "CANN"
    variant_option = ""  # `kit build --variant`
    toolkit_label = "CANN"  # Probe.toolkit: the host's CANN toolkit version
    libraries = ("torch-npu",)

    def image_variants(self, stack: str) -> list[Any]:
        """env/stacks.toml's rows with vendor = "ascend": none yet (a CANN variant needs its lock of torch_npu)."""
        from .images import variants_of

        return variants_of(self.name, stack)

    def choose_variant(self, probe: Probe, stack: str) -> Any:
        """The stack's first Ascend variant: the kit has no table of which CANN an NPU driver runs."""
        from .images import first_variant

        return first_variant(self, probe, stack)

    def base_variant(self, image: str) -> str | None:
        """Ascend's CANN images are tagged <cann-version>-<chip>-<os><os-version>-<py-version>
        (Ascend/cann-container-image: ascendai/cann:8.1.rc1-910b-openeuler22.03-py3.11, quay.io/ascend/cann) ->
        '8.1.rc1'."""
        m = re.search(r"(?:^|/)ascend(?:ai)?/cann:(\d+\.\d+\.[0-9a-z]+(?:\.alpha\d+)?)(?:-|$)", image or "")
        return m.group(1) if m else None

    def docker_checks(self, info: dict[str, Any], count: int | None, root: str | Path | None = None) -> list[Check]:
        """No runtime needed: /dev/davinciN, the manager devices and the driver mounts, which must be on the host.
        Ascend Docker Runtime, where the engine has it, is named (the kit's containers do not need it)."""
        from .images import device_paths_check

        base = Path(root) if root is not None else self.root
        access = self.container_access(count or 0)
        row = device_paths_check(self, access, count, base, INSTALL_FIX, "npu devices")
        runtimes = sorted(info.get("Runtimes") or {})
        row.data["runtimes"] = runtimes
        if "ascend" in runtimes:
            row.detail += "; Ascend Docker Runtime is configured (not needed: ASCEND_VISIBLE_DEVICES is not set)"
        return [row]

    def smoke(self) -> Any:
        """`npu-smi info` (mounted from the host) prints a table row per NPU: "| 0     910B3     | OK  | ..."."""
        from .base import Smoke

        return Smoke(["npu-smi", "info"], r"^\|\s*\d+\s+(\S+)\s+\|\s*(?:OK|Warning|Alarm|Critical)\s+\|",
                     "the container must get /dev/davinciN, /dev/davinci_manager, /dev/devmm_svm, /dev/hisi_hdc and "
                     "the driver mounts (kit passes them); " + INSTALL_FIX)  # fmt: skip


class AscendSampler:
    """Every NPU, now: one `npu-smi info` (AI Core use, HBM, power, temperature, processes), and the AI Core
    clock of each NPU from `npu-smi info -t common -i N` (not reported where it does not answer)."""

    def __init__(self, vendor: AscendVendor) -> None:
        self.vendor = vendor
        self._silent: set[int] = set()  # NPUs whose -t common did not answer: not asked again every sample
        table = parse_info(vendor.run("info"))
        self._fixed = []
        for k, d in enumerate(table["devices"]):
            common = self._common(d["npu_id"], d["chip_id"])
            self._fixed.append({"index": k, "name": d["name"], "clock_max_mhz": _number(common.get("Aicore Freq(MHZ)", ""))})

    def _common(self, npu: int, chip: int) -> dict[str, str]:
        if npu in self._silent:
            return {}
        blocks = self.vendor._query("-t", "common", "-i", str(npu))
        if not blocks:
            self._silent.add(npu)
        return chip_block(blocks, chip) if blocks else {}

    def fixed(self) -> list[dict[str, Any]]:
        return [dict(f) for f in self._fixed]

    def reasons(self) -> dict[str, str]:
        return {}  # npu-smi info reports no throttle reasons

    def sample(self) -> list[Reading]:
        table = parse_info(self.vendor.run("info"))
        out = []
        for k, d in enumerate(table["devices"]):
            used, total = (d["hbm_used_mb"], d["hbm_total_mb"]) if d["hbm_total_mb"] else (d["mem_used_mb"], d["mem_total_mb"])
            procs = [p for p in table["processes"] if (p["npu_id"], p["chip_id"]) == (d["npu_id"], d["chip_id"])]
            common = self._common(d["npu_id"], d["chip_id"])
            out.append(Reading(
                index=k, util_pct=d["aicore_pct"], mem_used_bytes=used * MIB if used is not None else None,
                mem_total_bytes=total * MIB if total else None, power_w=d["power_w"], temp_c=d["temp_c"],
                clock_mhz=_number(common.get("Aicore curFreq(MHZ)", "")),
                clock_max_mhz=self._fixed[k]["clock_max_mhz"] if k < len(self._fixed) else None,
                processes=[{"pid": p["pid"], "used_bytes": p["mem_mb"] * MIB if p["mem_mb"] is not None else None}
                           for p in procs],
            ))  # fmt: skip
        return out

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- check rows


def unavailable_fix(probe: Probe) -> str:
    reason = str(probe.reason or "")
    if "not installed" in reason:
        return INSTALL_FIX
    if "-8005" in reason or "-8020" in reason:
        return (
            "npu-smi could not open the NPUs (dcmi error): check that no other container holds them (`docker ps`), "
            "that /dev/davinci*, " + ", ".join(MANAGER_NODES) + " and /usr/local/Ascend/driver are visible here, "
            "and run as root or in the HwHiAiUser group"
        )
    return "run `npu-smi info` by hand and fix what it says; " + INSTALL_FIX


def label(d: Device) -> str:
    """An NPU as npu-smi numbers it: NPU ID, and the chip where the NPU has more than one (chip 1 of NPU 0: NPU0.1)."""
    npu, chip = d.extra.get("npu_id", d.index), d.extra.get("chip_id", 0)
    return f"NPU{npu}" + (f".{chip}" if chip else "")


def _npus(devs: list[Device]) -> str:
    return ", ".join(label(d) for d in devs)


def _count(found: int, expected: int) -> Check:
    data = {"found": found, "expected": expected}
    if found >= expected:
        extra = f" ({found - expected} more than the config uses)" if found > expected else ""
        return Check("npu", "NPU count", "ok", f"{found} NPUs, the config needs {expected}{extra}", data=data)
    fix = (
        f"run on a host with {expected} NPUs, or pick a config for {found} NPU(s) (`kit configs`), or pass "
        f"`--gpus {found}` to `kit run` (the global batch is kept through gradient accumulation)"
        if found
        else INSTALL_FIX
    )
    return Check("npu", "NPU count", "fail", f"{found} NPUs found, the config needs {expected} per node", fix, data)


def _models(devs: list[Device], device: str) -> Check:
    counted = Counter(d.name for d in devs)
    data = {"names": [d.name for d in devs], "products": sorted({str(d.extra.get("product")) for d in devs if d.extra.get("product")})}
    shown = ", ".join(f"{k} x{v}" for k, v in counted.items())
    if len(counted) > 1:
        return Check("npu", "NPU model", "warn", f"mixed NPU models: {shown}; the slowest paces every step",
                     "use NPUs of one model (select them with ASCEND_RT_VISIBLE_DEVICES)", data)  # fmt: skip
    if device and device.lower() != "cpu" and not _same_part(device, devs[0].name):
        shown += f"; the config was written for {device} (batches and offload are tuned for it)"
    return Check("npu", "NPU model", "ok", shown, data=data)


def _same_part(config_device: str, name: str) -> bool:
    a, b = config_device.upper().replace(" ", ""), name.upper().replace(" ", "")
    return a in b or b in a


def _memory(devs: list[Device]) -> Check:
    """The memory of each device; whether the case's batches fit it is the case's question, not the vendor's."""
    totals = [d.memory_bytes for d in devs if d.memory_bytes]
    data = {"total_bytes": [d.memory_bytes for d in devs]}
    if not totals:
        return Check("npu", "NPU memory", "warn", "not reported by npu-smi", "check `npu-smi info -t usages -i N`", data)
    return Check("npu", "NPU memory", "ok", f"{min(totals) / GIB:.0f} GiB per NPU", data=data)


def _health(devs: list[Device]) -> Check:
    worst, lines = "ok", []
    for d in devs:
        h = d.extra.get("health") or {}
        status = HEALTH_STATUS.get(str(h.get("status", "")).upper(), "warn")
        if status != "ok":
            worst = "fail" if "fail" in (worst, status) else "warn"
            code = f", error code {h['code']}" if h.get("code") not in (None, "NA") else ""
            info = f" ({h['info']})" if h.get("info") not in (None, "NA") else ""
            lines.append(f"{label(d)}: {h.get('status')}{code}{info}")
    data = {"health": [(d.extra.get("health") or {}).get("status") for d in devs]}
    if worst == "ok":
        return Check("npu", "NPU health", "ok", "OK on every NPU", data=data)
    return Check(
        "npu", "NPU health", worst, "; ".join(lines),
        "`npu-smi info -t health -i N -c 0` gives the error code: look it up in Ascend's health and fault code "
        "reference; a chip in Alarm or Critical needs a reset or service before it runs a benchmark", data,
    )  # fmt: skip


def _hccs(devs: list[Device]) -> Check:
    data = {"links": [d.links for d in devs], "topology": [d.extra.get("topology") for d in devs]}
    known = [d for d in devs if d.links is not None]
    if not known:
        return Check("npu", "HCCS", "skip", "not reported (`npu-smi info -t topo` did not answer)", data=data)
    if not any(d.links for d in known):
        return Check("npu", "HCCS", "skip", "no HCCS (NPUs talk over PCIe)", data=data)
    shown = ", ".join(f"{label(d)} {d.links}" for d in known)
    most = max(d.links or 0 for d in known)
    short = [d for d in known if (d.links or 0) < most]
    if short:
        return Check(
            "npu", "HCCS", "warn", f"fewer HCCS peers on {_npus(short)} ({shown}); their traffic takes PCIe",
            "check `npu-smi info -t topo` and `hccn_tool -i N -link -g`; have the server serviced if links stay down",
            data,
        )  # fmt: skip
    return Check("npu", "HCCS", "ok", f"HCCS peers per NPU: {shown}", data=data)


def _other_processes(devs: list[Device]) -> Check:
    found = [{"npu": label(d), **p} for d in devs for p in d.extra.get("processes") or []]
    if not found:
        return Check("npu", "other processes", "ok", "none on the NPUs", data={"processes": []})
    shown = ", ".join(
        f"{p['npu']} pid {p['pid']}" + (f" ({p['used_bytes'] / GIB:.1f} GiB)" if p["used_bytes"] else "") for p in found
    )
    return Check(
        "npu", "other processes", "warn", f"{shown}: they take memory and time from the run",
        "stop them (`npu-smi info` lists them, then `kill PID`) or give the run other NPUs with "
        "ASCEND_RT_VISIBLE_DEVICES", {"processes": found},
    )  # fmt: skip
