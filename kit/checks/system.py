"""Host checks outside the GPU: /dev/shm, locked-memory and stack limits, disk, CPU, memory, OS, InfiniBand.

Every reader takes `root` (default "/") and reads files under it (`root/proc/mounts`, `root/proc/self/limits`,
`root/sys/class/infiniband/...`), so tests build a real fake tree in a temporary directory and the same code
could read a host's tree mounted elsewhere. The thresholds are derived from the config by the case, which knows
its model's size and its loader's batches (`case.data`, kit/case/data.py: results_need, memory_need, shm_need);
each check says the numbers it used and where they come from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kit import vendors
from kit.case import data as case_data
from kit.checks import Check

GB = 1000**3
GIB = 1024**3
MIB = 1024**2

# NVIDIA's containers recommend these (NGC "--ulimit memlock=-1 --ulimit stack=67108864").
STACK_RECOMMENDED = 64 * MIB
STACK_FLOOR = 8 * MIB  # the Linux default; PyTorch trains with it
DOCKER_ULIMITS = "--ulimit memlock=-1 --ulimit stack=67108864"


def _path(root: str | Path, p: str) -> Path:
    return Path(root) / p.lstrip("/")


def _read(root: str | Path, p: str) -> str | None:
    try:
        return _path(root, p).read_text()
    except OSError:
        return None


def human(n: float) -> str:
    """Bytes as GB (decimal) above 1 GB, else MiB: the units `df -h --si` and docker's --shm-size show."""
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / MIB:.0f} MiB"


# ---------------------------------------------------------------- /dev/shm


def shm_need(cfg: Any, case: Any = None) -> tuple[int, str]:
    """Bytes of /dev/shm the loader workers of one node hold at once, and how that was computed (the case's
    batches: workers hand them to the rank through shared memory)."""
    need = (case or case_data.of_config(cfg)).data.shm_need(cfg)
    return need.bytes, need.how


def shm_size(root: str | Path = "/") -> int | None:
    """/dev/shm's size: the tmpfs `size=` in root/proc/mounts (what docker's --shm-size sets), else statvfs."""
    mounts = _read(root, "/proc/mounts") or ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "/dev/shm":
            for opt in parts[3].split(","):
                if opt.startswith("size="):
                    return _parse_size(opt[5:])
    try:
        st = os.statvfs(_path(root, "/dev/shm"))
    except OSError:
        return None
    return st.f_blocks * st.f_frsize


def _parse_size(text: str) -> int:
    units = {"k": 1024, "m": MIB, "g": GIB, "t": 1024 * GIB}
    t = text.strip().lower()
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def shm_check(cfg: Any, root: str | Path = "/", case: Any = None) -> Check:
    need, how = shm_need(cfg, case)
    size = shm_size(root)
    data = {"size_bytes": size, "need_bytes": need}
    fix = (
        f"in a container: `docker run --ipc=host` (or `--shm-size={max(1, -(-2 * need // GIB))}g`); on the host: "
        f"`sudo mount -o remount,size={max(1, -(-2 * need // GIB))}G /dev/shm`"
    )
    if size is None:
        return Check("system", "/dev/shm", "fail", "no /dev/shm mounted: DataLoader workers cannot share batches", fix, data)
    detail = f"{human(size)}; DataLoader workers need ~{human(need)} ({how})"
    if need == 0:
        return Check("system", "/dev/shm", "ok", f"{human(size)} (no DataLoader workers in this config)", data=data)
    if size < need:
        return Check(
            "system", "/dev/shm", "fail",
            f"{detail}: too small, workers die with 'bus error' / 'DataLoader worker killed' once it fills", fix, data,
        )  # fmt: skip
    if size < 2 * need:
        return Check("system", "/dev/shm", "warn", f"{detail}: under 2x, little room for the collectives' shared-memory buffers", fix, data)
    return Check("system", "/dev/shm", "ok", detail, data=data)


# ---------------------------------------------------------------- limits


def read_limits(root: str | Path = "/") -> dict[str, int | None]:
    """Soft memlock and stack limits in bytes (None: unlimited) from root/proc/self/limits, else getrlimit."""
    text = _read(root, "/proc/self/limits")
    out: dict[str, int | None] = {}
    if text:
        for line in text.splitlines():
            for key, label in (("memlock", "Max locked memory"), ("stack", "Max stack size")):
                if line.startswith(label):
                    soft = line[len(label):].split()[0]
                    out[key] = None if soft == "unlimited" else int(soft)
    if len(out) < 2 and str(root) == "/":
        import resource

        for key, res in (("memlock", resource.RLIMIT_MEMLOCK), ("stack", resource.RLIMIT_STACK)):
            soft = resource.getrlimit(res)[0]
            out.setdefault(key, None if soft == resource.RLIM_INFINITY else soft)
    return out


def limits_checks(nodes: int, ib_present: bool, root: str | Path = "/") -> list[Check]:
    lim = read_limits(root)
    checks = []
    memlock = lim.get("memlock", -1)
    limits_fix = (
        "in /etc/security/limits.conf: `* soft memlock unlimited` and `* hard memlock unlimited` (log in again); "
        f"in a container: `docker run {DOCKER_ULIMITS}`"
    )
    shown = "unlimited" if memlock is None else "not readable" if memlock == -1 else human(memlock)
    if memlock is None:
        checks.append(Check("system", "memlock limit", "ok", shown, data={"memlock": None}))
    elif not ib_present:
        # Pinned host memory (cudaHostAlloc) is not charged to RLIMIT_MEMLOCK; InfiniBand verbs are.
        checks.append(Check("system", "memlock limit", "ok", f"{shown} (matters only with InfiniBand)",
                            data={"memlock": memlock}))
    elif nodes > 1:
        checks.append(Check("system", "memlock limit", "fail",
                            f"{shown}: the collectives cannot register their InfiniBand buffers across {nodes} nodes", limits_fix,
                            {"memlock": memlock}))
    else:
        checks.append(Check("system", "memlock limit", "warn",
                            f"{shown}: this host has InfiniBand; a multi-node run needs it unlimited", limits_fix,
                            {"memlock": memlock}))
    stack = lim.get("stack", -1)
    stack_fix = (
        "in /etc/security/limits.conf: `* soft stack 65536` (KiB); in a container: "
        f"`docker run {DOCKER_ULIMITS}`"
    )
    if stack is None or (stack != -1 and stack >= STACK_FLOOR):
        shown = "unlimited" if stack is None else human(stack)
        note = "" if stack is None or stack >= STACK_RECOMMENDED else " (the kit's containers use 64 MiB)"
        checks.append(Check("system", "stack limit", "ok", shown + note, data={"stack": stack}))
    else:
        shown = "not readable" if stack == -1 else human(stack)
        checks.append(
            Check("system", "stack limit", "warn", f"{shown}: under the Linux default of 8 MiB; deep call stacks crash",
                  stack_fix, {"stack": stack})
        )
    return checks


# ---------------------------------------------------------------- disk


def free_bytes(path: str | Path) -> tuple[Path, int]:
    """Free bytes for an unprivileged writer at `path`, or at its nearest existing parent (results may not exist yet)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return p, st.f_bavail * st.f_frsize


def results_need(cfg: Any, synthetic: bool = True, case: Any = None) -> tuple[int, int, str]:
    """(bytes for a full run, bytes to save anything, how) under --results: the case's checkpoints, its exported
    model and its synthetic data, from its model's size (`case.data.results_need`)."""
    need = (case or case_data.of_config(cfg)).data.results_need(cfg, synthetic)
    return need.bytes, need.minimum, need.how


def disk_checks(cfg: Any, data: Path | None, results: Path, case: Any = None) -> list[Check]:
    checks = []
    full, minimum, how = results_need(cfg, case=case)
    where, free = free_bytes(results)
    data_ = {"path": str(where), "free_bytes": free, "need_bytes": full, "min_bytes": minimum}
    fix = f"free space at {where} or pass `--results DIR` on a larger disk (need {human(full)})"
    detail = f"{human(free)} free at {where}; a full run needs ~{human(full)} ({how})"
    if free < minimum:
        checks.append(Check("system", "disk (results)", "fail", f"{detail}: not even one checkpoint and the model fit", fix, data_))
    elif free < full:
        checks.append(Check("system", "disk (results)", "warn", f"{detail}: a long run stops at a checkpoint", fix, data_))
    else:
        checks.append(Check("system", "disk (results)", "ok", detail, data=data_))
    if data is not None:
        if Path(data).exists():
            w, f = free_bytes(data)
            checks.append(
                Check("system", "disk (data)", "ok", f"{human(f)} free at {w} (the kit only reads --data)",
                      data={"path": str(w), "free_bytes": f})
            )
        else:
            checks.append(Check("system", "disk (data)", "skip", f"{data} does not exist (see the data checks)"))
    return checks


# ---------------------------------------------------------------- CPU, memory, OS


def cpu_info(root: str | Path = "/") -> tuple[str, int]:
    text = _read(root, "/proc/cpuinfo") or ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown")
    cores = sum(1 for ln in text.splitlines() if ln.startswith("processor"))
    if str(root) == "/" and hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))  # what this process may use (containers and taskset limit it)
    return model, cores


def mem_total(root: str | Path = "/") -> int | None:
    for ln in (_read(root, "/proc/meminfo") or "").splitlines():
        if ln.startswith("MemTotal:"):
            return int(ln.split()[1]) * 1024
    return None


def os_info(root: str | Path = "/") -> tuple[str, str]:
    pretty = "unknown"
    for ln in (_read(root, "/etc/os-release") or "").splitlines():
        if ln.startswith("PRETTY_NAME="):
            pretty = ln.split("=", 1)[1].strip().strip('"')
    kernel = (_read(root, "/proc/sys/kernel/osrelease") or "unknown").strip()
    return pretty, kernel


def cpu_check(cfg: Any, cores: int, model: str) -> Check:
    """Cores against what one node's processes want: a process per rank plus its DataLoader workers.

    A rank on a device wants two cores at least (its Python thread and the image decoding); a CPU rank does the
    computing itself and wants one, plus one per worker. A fix never suggests more workers than the config has:
    with none, only more cores (or, on a CPU, fewer ranks) can help."""
    ranks, w = cfg.gpus_per_node, cfg.data.num_workers
    vendor = vendors.for_config(cfg.device)
    on_cpu = vendor.torch_device == "cpu"  # the ranks compute on the CPU (whatever the vendor calls them)
    want = ranks * (w + 1) if on_cpu else max(2 * ranks, ranks * (w + 1))
    word = vendor.device_word
    what = f"{word}s" if word.endswith(" rank") else f"{word} ranks"
    detail = f"{model}, {cores} cores; {ranks} {what} x ({w} DataLoader workers + 1) want {want}"
    data = {"model": model, "cores": cores, "want": want}
    if cores >= want:
        return Check("system", "CPU", "ok", detail, data=data)
    fewer = cores // ranks - 1  # the workers per rank that fit the cores (< w whenever cores < ranks x (w + 1))
    if not on_cpu and cores < 2 * ranks:
        fix = f"use a host with >= {want} cores"
        if w:
            fix += " or lower data.num_workers (`--set data.num_workers=0`: each rank decodes its own images)"
        return Check("system", "CPU", "warn", f"{detail}: under 2 per {word}, image decoding starves the {word}s", fix, data)
    if w and fewer >= 0 and fewer < w:
        fix = f"`--set data.num_workers={fewer}` to match the cores, or use a host with >= {want} cores"
    else:  # no workers to take away: only cores help (on a CPU, fewer ranks too, where the global batch allows)
        fix = f"use a host with >= {want} cores" + (f" (or run fewer {what} with --gpus)" if on_cpu else "")
    return Check("system", "CPU", "warn", f"{detail}: processes share cores, steps slow down", fix, data)


def host_checks(cfg: Any, root: str | Path = "/", case: Any = None) -> list[Check]:
    model, cores = cpu_info(root)
    checks = [cpu_check(cfg, cores, model)]

    memory = (case or case_data.of_config(cfg)).data.memory_need(cfg)  # the case knows its model's size
    need, how = memory.bytes, memory.how
    mem = mem_total(root)
    if mem is None:
        checks.append(Check("system", "memory", "warn", "MemTotal not readable", "check /proc/meminfo"))
    elif mem < need:
        checks.append(Check("system", "memory", "warn", f"{human(mem)}; needs at least ~{human(need)} ({how})",
                            memory.fix or "use a host with more memory", {"total_bytes": mem}))
    else:
        checks.append(Check("system", "memory", "ok", f"{human(mem)} (at least ~{human(need)}: {how})",
                            data={"total_bytes": mem, "need_bytes": need}))
    pretty, kernel = os_info(root)
    checks.append(Check("system", "OS", "ok", f"{pretty}, kernel {kernel}", data={"os": pretty, "kernel": kernel}))
    return checks


# ---------------------------------------------------------------- InfiniBand


def ib_ports(root: str | Path = "/") -> list[dict[str, str]]:
    """Every port under root/sys/class/infiniband: device, port, state, rate, link layer."""
    base = _path(root, "/sys/class/infiniband")
    out = []
    if not base.is_dir():
        return out
    for dev in sorted(base.iterdir()):
        ports = dev / "ports"
        for port in sorted(ports.iterdir()) if ports.is_dir() else []:
            def field(name: str, port: Path = port) -> str:
                try:
                    return (port / name).read_text().strip()
                except OSError:
                    return "?"

            out.append({"device": dev.name, "port": port.name, "state": field("state"), "rate": field("rate"),
                        "link_layer": field("link_layer")})
    return out


def ib_check(nodes: int, root: str | Path = "/") -> Check:
    ports = ib_ports(root)
    active = [p for p in ports if "ACTIVE" in p["state"].upper()]
    shown = ", ".join(f"{p['device']}/{p['port']} {p['state'].split(':')[-1].strip()} {p['rate']} {p['link_layer']}" for p in ports)
    data = {"ports": ports, "nodes": nodes}
    fix = (
        "bring a port up (`ibstat`; check the cable, the subnet manager `opensm`, and the driver `mlx5_core`); "
        "without InfiniBand the collectives fall back to TCP sockets, much slower across nodes"
    )
    if active:
        return Check("network", "InfiniBand", "ok", f"{len(active)} of {len(ports)} ports active: {shown}", data=data)
    if nodes <= 1:
        what = f"no active port ({shown})" if ports else "no InfiniBand devices"
        return Check("network", "InfiniBand", "skip", f"{what}; not needed on a single node", data=data)
    what = f"no active port ({shown})" if ports else "no InfiniBand devices in /sys/class/infiniband"
    return Check("network", "InfiniBand", "warn", f"{what}, and {nodes} nodes are asked for", fix, data)


def system_checks(
    cfg: Any, nodes: int, data: Path | None, results: Path, root: str | Path = "/", case: Any = None
) -> list[Check]:
    """Every non-GPU check of this module, in the order the table shows them."""
    ib = ib_check(nodes, root)
    return [
        shm_check(cfg, root, case),
        *limits_checks(nodes, any("ACTIVE" in p["state"].upper() for p in ib.data["ports"]), root),
        *disk_checks(cfg, data, results, case),
        *host_checks(cfg, root, case),
        ib,
    ]
