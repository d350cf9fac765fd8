"""Slurm checks for `kit check-host --launcher slurm`: can this login host submit the case to the cluster?

They ask the cluster itself (the client commands, `scontrol ping`, `scontrol show partition`, `sinfo`), with a
timeout on every call, so a hung controller costs seconds. The order is the order of dependence: without the
commands nothing can be asked, without a controller no partition is known, and the GPU, node-count and
container rows read the partition's nodes. Each warn and fail says what to change: SLURM_CONF, --partition,
--nodes, the config, or what the cluster's admin has to do.

GPUs come from each node's GRES as `sinfo -o %G` prints it (`gpu:8`, `gpu:a100:8(S:0-1)`,
`gpu:A100_80GB:8(S:0-1),shard:A100_80GB:640(S:0-1)`, `(null)`); `parse_gres` reads every form Slurm writes.
The GRES name the devices are counted under is the vendor's (`slurm_gres`: `gpu` for NVIDIA and AMD, `npu`
for Ascend; the CPU has none), the vendor that owns the config's device.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kit import vendors
from kit.checks import Check

GROUP = "slurm"
COMMANDS = ("sbatch", "srun", "scontrol", "sinfo")
DEFAULT_CONF = "/etc/slurm/slurm.conf"
CLIENT_FIX = ("install the Slurm client commands (Debian/Ubuntu: `sudo apt-get install slurm-client`; RHEL: "
              "`sudo dnf install slurm`), or on a cluster load them (`module load slurm`), or run kit on the login node")
DEFAULT_GRES = "gpu"  # for a device no registered vendor owns
# pyxis and enroot are linked from docs/slurm.md (their repositories are a vendor's).
PYXIS_FIX = ("install the pyxis SPANK plugin on the cluster (docs/slurm.md links it: a `required spank_pyxis.so` line "
             "in plugstack.conf, on the login and the compute nodes), or run with --native (the nodes' own Python, no "
             "container)")
# Node states (`sinfo %T`, without the flag characters) in which a node takes new jobs.
USABLE = {"idle", "mixed", "allocated", "completing", "planned"}
# Flags after the state: `*` not responding, `$` in a maintenance reservation. Others (`~` powered off,
# `#` powering up, `-` planned, `+` more states, `@` pending reboot) still take jobs, after a wait.
UNUSABLE_FLAGS = set("*$")
_SUFFIX = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


class SlurmUnavailable(Exception):
    """A client command could not answer: `detail` says what happened, `fix` what to do."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


# ---------------------------------------------------------------- GRES


@dataclass(frozen=True)
class Gres:
    """One GRES item: `gpu:a100:8(S:0-1)` -> name gpu, type a100, count 8, where S:0-1."""

    name: str
    type: str | None
    count: int
    where: str = ""


def _split_top(text: str) -> list[str]:
    """Split at the commas outside parentheses: `gpu:2(S:0,2),nic:1` has two items, not three."""
    items, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]


def parse_gres(text: str | None) -> list[Gres]:
    """A node's GRES (`sinfo %G`, `scontrol show node`'s Gres= or GresUsed=) -> its items.

    `(null)`, `N/A` and "" are none. An item is NAME[:TYPE][:COUNT][(S:...|IDX:...)]; the count may carry
    Slurm's K/M/G suffix (`tmp:844G`) and defaults to 1 (`gpu` alone is one GPU); a `gres/` prefix (TRES
    form) is dropped. ValueError names an item that fits none of these forms.
    """
    text = (text or "").strip()
    if text in ("", "(null)", "N/A", "none"):
        return []
    out = []
    for item in _split_top(text):
        m = re.fullmatch(r"([^()]*?)(?:\((.*)\))?", item)
        if not m:
            raise ValueError(f"GRES item {item!r} of {text!r}: unbalanced parentheses")
        body, where = m.group(1).removeprefix("gres/"), m.group(2) or ""
        parts = [p for p in body.split(":") if p != "no_consume"]
        if not parts or not parts[0] or not re.fullmatch(r"[A-Za-z][\w.-]*", parts[0]):
            raise ValueError(f"GRES item {item!r} of {text!r}: expected NAME[:TYPE][:COUNT]")
        count = 1
        cm = re.fullmatch(r"(\d+)([KMGTP]?)", parts[-1]) if len(parts) > 1 else None
        if cm:
            count = int(cm.group(1)) * _SUFFIX[cm.group(2)]
            parts = parts[:-1]
        gtype = ":".join(parts[1:]) or None
        out.append(Gres(parts[0], gtype, count, where))
    return out


def gpu_count(text: str | None, name: str = DEFAULT_GRES) -> int:
    """Devices in a GRES string: the sum over its items named `name` (a node may list several device types)."""
    return sum(g.count for g in parse_gres(text) if g.name == name)


def gpu_types(text: str | None, name: str = DEFAULT_GRES) -> list[str]:
    return sorted({g.type for g in parse_gres(text) if g.name == name and g.type})


# ---------------------------------------------------------------- the cluster's answers


@dataclass
class Node:
    name: str
    state: str  # as `sinfo %T` prints it, flags included: idle, mixed, down*, drained, idle~ ...
    gres: str
    cpus: int
    reason: str = ""

    @property
    def base_state(self) -> str:
        m = re.match(r"[a-z_]+", self.state.lower())
        return m.group(0) if m else self.state.lower()

    @property
    def usable(self) -> bool:
        return self.base_state in USABLE and not (set(self.state) & UNUSABLE_FLAGS)

    @property
    def gpus(self) -> int:
        return self.devices(DEFAULT_GRES)

    def devices(self, gres: str) -> int:
        """The node's devices counted under the GRES name `gres`; 0 when its GRES cannot be read."""
        try:
            return gpu_count(self.gres, gres)
        except ValueError:
            return 0


@dataclass
class Partition:
    name: str
    default: bool
    state: str
    max_nodes: int | None  # None: UNLIMITED
    total_nodes: int
    fields: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)


def _run(argv: list[str], env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=dict(env),
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmUnavailable(f"`{argv[0]}` is not on PATH", CLIENT_FIX) from None
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(
            f"`{' '.join(argv)}` gave no answer within {timeout:g} s",
            f"check that slurmctld answers (`scontrol ping`) and that {_conf_words(env)} is this cluster's",
        ) from None


def _conf_words(env: Mapping[str, str]) -> str:
    conf = env.get("SLURM_CONF")
    return f"SLURM_CONF={conf}" if conf else f"the configuration (SLURM_CONF is unset: {DEFAULT_CONF})"


def _last_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
    return (errors or lines or [f"exit {proc.returncode}, no output"])[-1]


def parse_fields(line: str) -> dict[str, str]:
    """`scontrol show ... -o` writes KEY=VALUE words; a value may hold '=' (TRES=cpu=4,mem=2G)."""
    out = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
    return out


def read_partitions(env: Mapping[str, str], timeout: float = 15) -> list[Partition]:
    """Every partition, hidden ones included (`scontrol -a show partition -o`)."""
    proc = _run(["scontrol", "-a", "show", "partition", "-o"], env, timeout)
    if proc.returncode != 0:
        raise SlurmUnavailable(f"`scontrol show partition` failed: {_last_error(proc)}",
                               f"check that slurmctld answers (`scontrol ping`) with {_conf_words(env)}")
    return parse_partitions(proc.stdout)


def parse_partitions(text: str) -> list[Partition]:
    """`scontrol show partition -o` lines -> partitions (their nodes are read separately, with sinfo)."""
    parts = []
    for line in text.splitlines():
        f = parse_fields(line)
        if "PartitionName" not in f:
            continue
        mx = f.get("MaxNodes", "UNLIMITED")
        parts.append(Partition(f["PartitionName"], f.get("Default") == "YES", f.get("State", "UNKNOWN"),
                               int(mx) if mx.isdigit() else None,
                               int(f["TotalNodes"]) if f.get("TotalNodes", "").isdigit() else 0, f))
    return parts


def read_nodes(partition: str, env: Mapping[str, str], timeout: float = 15) -> list[Node]:
    """The partition's nodes, one line each: name, state, GRES, CPUs, reason (`sinfo -N`)."""
    proc = _run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N|%T|%G|%c|%E"], env, timeout)
    if proc.returncode != 0:
        raise SlurmUnavailable(f"`sinfo -p {partition}` failed: {_last_error(proc)}",
                               f"check that slurmctld answers (`scontrol ping`) with {_conf_words(env)}")
    return parse_nodes(proc.stdout)


def parse_nodes(text: str) -> list[Node]:
    """`sinfo -h -N -o '%N|%T|%G|%c|%E'` lines -> nodes (a node listed twice counts once)."""
    nodes: dict[str, Node] = {}
    for line in text.splitlines():
        cols = line.split("|", 4)
        if len(cols) < 4 or not cols[0].strip():
            continue
        reason = cols[4].strip() if len(cols) > 4 else ""
        nodes[cols[0].strip()] = Node(cols[0].strip(), cols[1].strip(), cols[2].strip(),
                                      int(cols[3]) if cols[3].strip().isdigit() else 0,
                                      "" if reason == "none" else reason)
    return list(nodes.values())


# ---------------------------------------------------------------- the checks


def _states(nodes: list[Node]) -> str:
    return ", ".join(f"{n} {s}" for s, n in Counter(n.state for n in nodes).most_common())


def _out_of_service(nodes: list[Node], shown: int = 4) -> str:
    out = [n for n in nodes if not n.usable]
    words = [f"{n.name} {n.state}" + (f" ({n.reason})" if n.reason else "") for n in out[:shown]]
    return ", ".join(words) + (f" and {len(out) - shown} more" if len(out) > shown else "")


def command_check(env: Mapping[str, str]) -> Check:
    path = env.get("PATH", os.defpath)
    found = {c: shutil.which(c, path=path) for c in COMMANDS}
    missing = [c for c, p in found.items() if not p]
    if missing:
        return Check(GROUP, "client commands", "fail", f"not on PATH: {', '.join(missing)}", CLIENT_FIX,
                     {"found": found})
    return Check(GROUP, "client commands", "ok", ", ".join(COMMANDS) + f" in {os.path.dirname(found['srun'] or '')}",
                 data={"found": found})


def controller_check(env: Mapping[str, str], timeout: float = 15) -> Check:
    """`scontrol ping`. A SLURM_CONF that names no file is caught first: scontrol retries it for 60 s."""
    conf = env.get("SLURM_CONF")
    name = "controller"
    if conf and not os.path.isfile(conf):
        return Check(GROUP, name, "fail", f"SLURM_CONF={conf}: no such file",
                     f"point SLURM_CONF at the cluster's slurm.conf (`export SLURM_CONF=/path/to/slurm.conf`), "
                     f"or unset it to use {DEFAULT_CONF}", {"slurm_conf": conf})
    fix = (f"start slurmctld (`sudo systemctl start slurmctld`, or ask the cluster's admin), or point SLURM_CONF "
           f"at the cluster's slurm.conf (now: {conf or f'unset, so {DEFAULT_CONF} or DNS SRV records'})")
    try:
        proc = _run(["scontrol", "ping"], env, timeout)
    except SlurmUnavailable as e:
        return Check(GROUP, name, "fail", e.detail, fix, {"slurm_conf": conf})
    up = re.findall(r"Slurmctld\((\w+)\) at (\S+) is UP", proc.stdout)
    data: dict[str, Any] = {"slurm_conf": conf, "ping": proc.stdout.strip()[:500]}
    if proc.returncode != 0 or not up:
        down = re.findall(r"Slurmctld\(\w+\) at (\S+) is DOWN", proc.stdout)
        detail = (f"slurmctld at {', '.join(down)} is DOWN" if down else f"`scontrol ping` failed: {_last_error(proc)}")
        return Check(GROUP, name, "fail", f"{detail} ({_conf_words(env)})", fix, data)
    try:
        version = _run(["scontrol", "--version"], env, timeout).stdout.strip()
    except SlurmUnavailable:
        version = ""
    data["version"] = version
    where = ", ".join(f"{host} ({role})" for role, host in up)
    return Check(GROUP, name, "ok", f"slurmctld at {where} is UP" + (f"; {version}" if version else "")
                 + f"; {_conf_words(env)}", data=data)


def partition_check(partitions: list[Partition], asked: str | None) -> tuple[Check, Partition | None]:
    name = "partition"
    names = ", ".join(p.name for p in partitions) or "none"
    if asked:
        part = next((p for p in partitions if p.name == asked), None)
        if part is None:
            return Check(GROUP, name, "fail", f"no partition {asked!r} in this cluster (it has: {names})",
                         "pass --partition with one of those (`sinfo -s` lists them with their nodes)"), None
    else:
        part = next((p for p in partitions if p.default), None)
        if part is None:
            return Check(GROUP, name, "fail", f"no --partition given and the cluster has no default one (it has: {names})",
                         "pass --partition NAME (`sinfo -s` lists them)"), None
    label = f"{part.name}" + (" (the default)" if part.default and not asked else "")
    data: dict[str, Any] = {"partition": part.name, "default": part.default, "state": part.state,
                            "nodes": [vars(n) for n in part.nodes]}
    if part.state != "UP":
        return Check(GROUP, name, "fail", f"partition {label} is {part.state}, it starts no jobs",
                     f"ask the cluster's admin to bring it up (`scontrol update partitionname={part.name} state=up`), "
                     "or pass another --partition", data), part
    usable = [n for n in part.nodes if n.usable]
    if not part.nodes:
        return Check(GROUP, name, "fail", f"partition {label} has no nodes",
                     "pass another --partition (`sinfo -s` lists them with their nodes)", data), part
    if not usable:
        return Check(GROUP, name, "fail", f"partition {label}: none of its {len(part.nodes)} nodes takes jobs: "
                     f"{_out_of_service(part.nodes)}",
                     "ask the cluster's admin to bring them back (`sinfo -R` says why they are out; `scontrol "
                     f"update nodename={','.join(n.name for n in part.nodes)} state=resume`), or pass another "
                     "--partition", data), part
    detail = f"partition {label}: {len(usable)} of {len(part.nodes)} nodes take jobs ({_states(part.nodes)})"
    if len(usable) < len(part.nodes):
        detail += f"; out: {_out_of_service(part.nodes)}"
    return Check(GROUP, name, "ok", detail, data=data), part


def gpu_check(cfg: Any, part: Partition, nodes: int, vendor: Any = None) -> Check:
    """Nodes of the partition with at least the config's devices per node, against the nodes asked. The devices are
    counted under the GRES name of `vendor` (default: the vendor that owns the config's device)."""
    if vendor is None:

        vendor = vendors.for_device(str(cfg.device))
    has_gres = vendor is None or bool(getattr(vendor, "slurm_gres", None))
    kind = getattr(vendor, "slurm_gres", None) or DEFAULT_GRES
    word = vendor.device_word if vendor is not None and has_gres else "GPU"
    name = f"{word}s per node"
    gres = sorted({n.gres for n in part.nodes})
    data: dict[str, Any] = {"gres": gres, "need_per_node": 0, "gres_name": kind if has_gres else None}
    if str(cfg.device).lower() == "cpu" or not has_gres:
        return Check(GROUP, name, "ok", f"config {cfg.name} runs on CPUs: no GPUs needed (nodes' GRES: "
                     f"{', '.join(gres) or 'none'})", data=data)
    need = int(cfg.gpus_per_node)
    data["need_per_node"] = need
    bad = []
    for g in gres:
        try:
            parse_gres(g)
        except ValueError as e:
            bad.append(str(e))
    fitting = [n for n in part.nodes if n.devices(kind) >= need]
    up = [n for n in fitting if n.usable]
    data.update(fitting=[n.name for n in fitting], fitting_up=[n.name for n in up], types=sorted(
        {t for n in part.nodes for t in gpu_types(n.gres, kind) if not bad}))
    have = ", ".join(f"{n.name}: {n.devices(kind)}" for n in part.nodes[:6]) + (" ..." if len(part.nodes) > 6 else "")
    fix = (f"pass a --partition whose nodes have {need} {word}s (`sinfo -o '%P %D %G'` lists each partition's GRES), "
           f"or a config with fewer {word}s per node; the admin declares them as `Gres={kind}:{need}` on the node "
           "line and in gres.conf")
    if bad:
        return Check(GROUP, name, "fail", f"cannot read the nodes' {word}s: {'; '.join(bad)}",
                     "report this GRES string with the output of `sinfo -N -o '%N %G'`", data)
    if not fitting:
        return Check(GROUP, name, "fail", f"config {cfg.name} needs {need} {word}s per node; no node of partition "
                     f"{part.name} has them (GRES {', '.join(gres) or 'none'}; {word}s per node: {have})", fix, data)
    if len(fitting) < nodes:
        return Check(GROUP, name, "fail", f"{nodes} nodes with {need} {word}s asked; partition {part.name} has "
                     f"{len(fitting)} ({', '.join(n.name for n in fitting[:6])})", fix, data)
    detail = (f"{len(fitting)} nodes of {part.name} have >= {need} {word}s "
              f"({', '.join(sorted({n.gres for n in fitting}))})")  # fmt: skip
    if len(up) < nodes:
        return Check(GROUP, name, "warn", f"{detail}, but only {len(up)} of them take jobs now: the job waits",
                     "`sinfo -R` says why the others are out; ask the cluster's admin", data)
    return Check(GROUP, name, "ok", detail, data=data)


def node_count_check(part: Partition, nodes: int) -> Check:
    name = "node count"
    usable = [n for n in part.nodes if n.usable]
    data = {"asked": nodes, "partition_nodes": len(part.nodes), "usable": len(usable), "max_nodes": part.max_nodes}
    fewer = "pass --nodes {n} or fewer (or a config with fewer nodes), or a larger --partition (`sinfo -s`)"
    if nodes > len(part.nodes):
        return Check(GROUP, name, "fail", f"{nodes} nodes asked; partition {part.name} has {len(part.nodes)}",
                     fewer.format(n=len(part.nodes)), data)
    if part.max_nodes is not None and nodes > part.max_nodes:
        return Check(GROUP, name, "fail", f"{nodes} nodes asked; partition {part.name} allows at most "
                     f"{part.max_nodes} per job (MaxNodes)", fewer.format(n=part.max_nodes), data)
    if nodes > len(usable):
        return Check(GROUP, name, "warn", f"{nodes} nodes asked; {len(usable)} of partition {part.name}'s "
                     f"{len(part.nodes)} take jobs now: the job waits until enough are back",
                     "`sinfo -R` says why the others are out; ask the cluster's admin, or pass fewer --nodes", data)
    return Check(GROUP, name, "ok", f"{nodes} of partition {part.name}'s {len(part.nodes)} nodes "
                 f"({len(usable)} take jobs now)", data=data)


def container_checks(env: Mapping[str, str], timeout: float = 15, partition: str | None = None) -> list[Check]:
    """pyxis (`srun --container-image`), and enroot, which pyxis runs on the compute nodes."""
    checks = []
    try:
        proc = _run(["srun", "--help"], env, timeout)
        text = proc.stdout + proc.stderr
    except SlurmUnavailable as e:
        checks.append(Check(GROUP, "pyxis", "fail", e.detail, e.fix))
        text = None
    if text is not None:
        m = re.search(r"--container-image[=\s]\S*", text)
        if m:
            checks.append(Check(GROUP, "pyxis", "ok", f"srun takes {m.group(0).strip()} (the pyxis plugin)",
                                data={"option": m.group(0).strip()}))
        else:
            native = " (it has Slurm's own --container, for OCI bundles, which kit does not use)" \
                if re.search(r"--container\s", text) else ""
            checks.append(Check(GROUP, "pyxis", "fail", "`srun --help` lists no --container-image: the pyxis plugin "
                                f"is not loaded here{native}", PYXIS_FIX))
    path = shutil.which("enroot", path=env.get("PATH", os.defpath))
    if path:
        checks.append(Check(GROUP, "enroot", "ok", f"enroot at {path} (pyxis runs it on the compute nodes)",
                            data={"path": path}))
    else:
        checks.append(Check(GROUP, "enroot", "warn", "enroot is not on this host's PATH; normal on a login node, "
                            "but pyxis needs it on every compute node",
                            f"check a compute node: `srun{' -p ' + partition if partition else ''} -N1 enroot version` "
                            "(install it as docs/slurm.md says)"))
    return checks


def slurm_checks(cfg: Any, partition: str | None = None, nodes: int | None = None, containers: bool = True, *,
                 env: Mapping[str, str] | None = None, timeout: float = 15) -> list[Check]:
    """The slurm group of `kit check-host --launcher slurm`, in table order.

    `nodes` defaults to the config's; `containers` False (`--native`) leaves out pyxis and enroot. `env` is the
    environment the client commands see (default: this process's; SLURM_CONF picks the cluster)."""
    env = dict(os.environ if env is None else env)
    nodes = nodes or int(getattr(cfg, "nodes", 1) or 1)
    checks = [command_check(env)]
    if checks[0].status == "fail" and not {"scontrol", "sinfo"} <= {c for c, p in checks[0].data["found"].items() if p}:
        return checks
    ctl = controller_check(env, timeout)
    checks.append(ctl)
    if ctl.status == "fail":
        return checks
    try:
        parts = read_partitions(env, timeout)
    except SlurmUnavailable as e:
        return [*checks, Check(GROUP, "partition", "fail", e.detail, e.fix)]
    chosen = partition or next((p.name for p in parts if p.default), None)
    part_obj = next((p for p in parts if p.name == chosen), None)
    if part_obj is not None:
        try:
            part_obj.nodes = read_nodes(part_obj.name, env, timeout)
        except SlurmUnavailable as e:
            return [*checks, Check(GROUP, "partition", "fail", e.detail, e.fix)]
    row, part = partition_check(parts, partition)
    checks.append(row)
    if part is not None and part.nodes:
        checks.append(gpu_check(cfg, part, nodes))
        checks.append(node_count_check(part, nodes))
    if containers:
        checks += container_checks(env, timeout, chosen)
    else:
        checks.append(Check(GROUP, "containers", "skip", "--native: the job runs the nodes' own Python, no container"))
    return checks
