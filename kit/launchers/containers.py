"""The container path of `kit run` (its default): each stage runs as one container per node, through the Docker SDK.

One node: a container on this host's engine (or the one host given), host networking, torchrun inside with the
node's GPUs. Several nodes: one container per `--hosts` entry, all started together; torchrun's static rendezvous
at node 0's address and a port checked free before launch. Where every node sits on the same engine (a test, or
a rehearsal on one machine), the containers meet on a Docker network of the run's own instead of the host's.

What every container gets: the image's Python and the kit inside it; GPUs as device requests (none for a CPU
config); `ipc=host`; memlock unlimited and a 64 MiB stack; data, models and MMMU mounted read-only and the
results directory read-write, each at its host path (so every path in run.json means the same inside and
out); the host user's uid:gid, so results are not owned by root; docker-init as PID 1, so a stop reaches
torchrun; InfiniBand devices (and IPC_LOCK) when the node has /dev/infiniband. Never `--privileged`, never a
disabled seccomp profile. Containers carry `kit.run=<run id>` labels and are removed on success, failure and
Ctrl-C alike.

Remote engines are reached with the SDK's `ssh://` base URLs; ssh runs in batch mode with host-key checking
on (the same policy as `kit check-host --hosts`), plus the user's `--ssh-option`s.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from kit import case as cases
from kit import vendors
from kit.case import Case
from kit.case import stage as stage_of
from kit.checks import docker as dc
from kit.checks.docker import DEFAULT_SOCKET
from kit.checks.remote import ssh_command
from kit.errors import EXIT_ENVIRONMENT, EXIT_USAGE, EnvironmentProblem, UsageError
from kit.image import stacks
from kit.launchers.base import (
    LauncherBase,
    StageResult,
    StartFailed,
    free_port,
    launcher_root_cause,
    tail_lines,
)
from kit.run.progress import StageProgress
from kit.run.request import RunRequest, Stop

LABEL_RUN = "kit.run"
DEFAULT_MASTER_PORT = 29500
# Settings of the collective libraries and launch that travel from the host's environment into every container
# (and into run.json): the vendor's collectives' above all (each vendor's `forward_env`), since they decide the
# transport.
FORWARD_PREFIXES = ("GLOO_", "TORCH_DISTRIBUTED_", "KIT_INJECT_")
FORWARD_NAMES = ("OMP_NUM_THREADS", "DS_ACCELERATOR")


def _forwarded(key: str) -> bool:
    if key.startswith(FORWARD_PREFIXES) or key in FORWARD_NAMES:
        return True
    for name in vendors.names():
        try:
            names = vendors.get(name).forward_env
        except (vendors.UnknownVendor, AttributeError):
            continue
        if any(key.startswith(n) if n.endswith("_") else key == n for n in names):
            return True
    return False
# Writable places for a uid the image does not know (the host user's).
CONTAINER_ENV = {
    "HOME": "/tmp/kit-home",
    "XDG_CACHE_HOME": "/tmp/kit-home/.cache",
    "TRITON_CACHE_DIR": "/tmp/kit-home/.triton",
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}
ULIMITS = {"memlock": (-1, -1), "stack": (67108864, 67108864)}  # NCCL's pinned buffers, deep stacks
RLIMIT_FIX = (
    "the engine cannot raise that limit (its own limit is lower): give dockerd a higher one (systemd: `sudo "
    "systemctl edit docker`, add `[Service]` and `LimitMEMLOCK=infinity`, then `sudo systemctl restart docker`), "
    "or ask for what it allows with --ulimit memlock=BYTES (less pinned memory for the collectives and the DataLoader)"
)
STOP_GRACE_S = 30
SSH_STDERR = "ssh-stderr.log"  # in SshPolicy's directory
SSH_DIR_PREFIX = "kit-ssh-"
MOUNT_MARKER = ".kit-mount-check"


class ContainerError(EnvironmentProblem):
    """The container path cannot start: what is wrong, where, and what to do (exit 3)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.args[0]}\nfix: {self.fix}"


# --- hosts and engines -----------------------------------------------------------------------------------


def base_url_of(host: str) -> str:
    """`local` -> this host's engine; unix://, tcp://, ssh:// as given; `user@host[:port]` -> ssh://user@host[:port]."""
    if host == "local":

        return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
    if host.startswith(("unix://", "tcp://", "ssh://", "npipe://")):
        return host
    return f"ssh://{host}"


def parse_hosts(hosts: str | None, nodes: int) -> list[str]:
    """The node list: `--hosts h1,h2` (one entry per node, node 0 first) or this host's engine for one node."""
    if not hosts:
        if nodes == 1:
            return ["local"]
        raise ValueError(
            f"--nodes {nodes} needs --hosts with {nodes} entries, node 0 first (e.g. --hosts gpu1,gpu2 for ssh://gpu1 "
            f"and ssh://gpu2, or --hosts {','.join(['local'] * nodes)} to rehearse every node on this host's engine)"
        )
    items = [h.strip() for h in hosts.split(",")]
    if any(not h for h in items):
        raise ValueError(f"--hosts {hosts!r}: an empty entry; give one host per node separated by commas")
    if len(items) != nodes:
        raise ValueError(f"--hosts names {len(items)} host(s) but --nodes is {nodes}: give one host per node")
    return items


def ssh_destination(base_url: str) -> tuple[str, int | None]:
    """ssh://user@host:port -> ('user@host', port)."""
    rest = base_url.removeprefix("ssh://").rstrip("/")
    if rest.count(":") == 1 and not rest.endswith("]"):
        dest, port = rest.rsplit(":", 1)
        return dest, int(port)
    return rest, None


class SshPolicy:
    """A directory with an `ssh` that always adds kit's options, put first on PATH while a run talks to engines.

    The SDK's ssh transport runs plain `ssh [-l USER] [-p PORT] -- HOST docker system dial-stdio`; this is how
    BatchMode, StrictHostKeyChecking=yes and the user's --ssh-option reach it (ssh keeps the first value given).
    """

    def __init__(self, options: list[str] | None = None) -> None:
        for value in options or []:
            if "stricthostkeychecking" in value.lower().replace(" ", ""):
                raise ValueError(f"refusing ssh option {value!r}: kit keeps host-key checking on")
        self.options = list(options or [])
        self.dir: str | None = None
        self.saved_path: str | None = None

    def __enter__(self) -> SshPolicy:
        real = _real_ssh()
        if real is None:
            return self  # only ssh:// nodes need it; they fail with ssh's absence named
        self.dir = tempfile.mkdtemp(prefix=SSH_DIR_PREFIX)
        args = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=15", *self.options]
        script = Path(self.dir) / "ssh"
        # ssh's own complaint ("Could not resolve hostname", "Host key verification failed") goes to a file that
        # connect() quotes: the SDK would only say "Remote end closed connection", and ssh's line would land on the
        # terminal apart from kit's message.
        log = Path(self.dir) / SSH_STDERR
        script.write_text(f"#!/bin/sh\nexec {shlex.quote(real)} {' '.join(shlex.quote(a) for a in args)} \"$@\" "
                          f"2>>{shlex.quote(str(log))}\n")  # fmt: skip
        script.chmod(stat.S_IRWXU)
        self.saved_path = os.environ.get("PATH", "")
        os.environ["PATH"] = f"{self.dir}{os.pathsep}{self.saved_path}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved_path is not None:
            os.environ["PATH"] = self.saved_path
        if self.dir:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Node:
    index: int
    host: str  # as the user gave it
    base_url: str
    engine_id: str = ""
    engine_name: str = ""  # the engine host's name (docker info)
    image_id: str = ""
    infiniband: bool = False
    client: Any = field(default=None, repr=False, compare=False)

    @property
    def where(self) -> str:
        return f"node {self.index} ({self.host})"

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "client"}


def _real_ssh() -> str | None:
    """ssh on PATH, past any SshPolicy wrapper (a kit started by a kit inherits its PATH): wrappers never nest."""
    import shutil

    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if not Path(d).name.startswith(SSH_DIR_PREFIX)]
    return shutil.which("ssh", path=os.pathsep.join(dirs))


def _ssh_log() -> Path | None:
    """The stderr log of the SshPolicy wrapper in force, or None."""
    import shutil

    ssh = shutil.which("ssh")
    return Path(ssh).parent / SSH_STDERR if ssh and Path(ssh).parent.name.startswith(SSH_DIR_PREFIX) else None


def _ssh_log_size() -> int:
    log = _ssh_log()
    try:
        return log.stat().st_size if log else 0
    except OSError:
        return 0


def _ssh_complaint(since: int) -> str:
    """The last line ssh wrote through SshPolicy's wrapper after byte `since` of its log, or ""."""
    log = _ssh_log()
    if log is None or not log.is_file():
        return ""
    with open(log, "rb") as f:
        f.seek(since)
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def connect(node: Node, timeout: float = 60) -> None:
    """Attach an engine client to the node, or ContainerError with check-host's diagnosis of the engine."""
    import docker


    ssh = node.base_url.startswith("ssh://")
    since = _ssh_log_size() if ssh else 0
    try:
        node.client = docker.DockerClient(base_url=node.base_url, timeout=timeout, use_ssh_client=ssh)
        info = node.client.info()
        # Reached: from here on, calls may be slow for good reasons (creating a container copies the image's
        # files on some storage drivers; stopping waits for the grace period).
        node.client.api.timeout = max(timeout, 900)
    except Exception as e:  # noqa: BLE001 - every way of not reaching an engine is one answer
        check = dc._unreachable(node.base_url, e)
        reason, fix = check.data.get("reason") or check.detail, check.fix
        if ssh:
            dest, port = ssh_destination(node.base_url)
            if said := _ssh_complaint(since):
                reason = said if said.startswith("ssh") else f"ssh: {said}"
            fix = (
                f"`kit check-host --hosts {dest}{':' + str(port) if port else ''}` says what is wrong with the host; "
                f"ssh must reach it in batch mode with a known host key, and its user must be allowed to run docker "
                f"(`ssh {'-p ' + str(port) + ' ' if port else ''}{dest} docker info`)"
            )
        raise ContainerError(f"{node.where}: cannot reach the Docker engine at {node.base_url}: {reason}", fix) from None
    node.engine_id = info.get("ID", "")
    node.engine_name = info.get("Name", "")


def has_infiniband(node: Node, ssh_options: list[str]) -> bool:
    """/dev/infiniband on the node's host: a local stat, or `test -d` over ssh for an ssh:// node."""
    if node.base_url.startswith("unix://"):
        return Path("/dev/infiniband").is_dir()
    if node.base_url.startswith("ssh://"):

        dest, port = ssh_destination(node.base_url)
        host = f"{dest}:{port}" if port else dest
        cmd = ssh_command(host, ["-d", "/dev/infiniband"], ssh_options, remote_kit="test", connect_timeout=15)
        try:
            return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False
    return False  # tcp:// engines: nothing to ask; pass NCCL settings by hand


# --- the plan --------------------------------------------------------------------------------------------


@dataclass
class ContainerPlan:
    """Everything the containers of a run get; stored in run.json (`containers`) and printed by --dry-run."""

    image: str
    image_id: str
    nodes: list[Node]
    gpus_per_node: int
    use_gpus: bool
    network: str  # "host" or the name of the run's own Docker network
    master_addr: str
    master_port: int
    user: str
    mounts: list[dict]
    env: dict[str, str]
    ssh_options: list[str] = field(default_factory=list)
    ulimits: dict[str, list[int]] = field(default_factory=lambda: {k: list(v) for k, v in ULIMITS.items()})
    vendor: str = ""  # whose devices the containers get (kit/vendors); "" in older runs: this host's vendor

    def device_vendor(self) -> Any:
        return vendors.get(self.vendor) if self.vendor else vendors.detect()[0]

    @property
    def own_network(self) -> bool:
        return self.network != "host"

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d = json.loads(json.dumps({**d, "nodes": [n.to_dict() for n in self.nodes]}))
        d["ipc"] = "host"
        d["privileged"] = False
        d["collectives"] = {k: v for k, v in self.env.items()  # the vendor's settings, as forwarded
                            if _forwarded(k) and not k.startswith(FORWARD_PREFIXES) and k not in FORWARD_NAMES}
        return d

    def container_name(self, run_id: str, stage: str, node: Node) -> str:
        return f"kit-{run_id}-{stage}-node{node.index}"[:120]

    def torchrun(self, node: Node, module: str, args: list[str]) -> list[str]:
        return [
            "python", "-m", "torch.distributed.run",
            f"--nnodes={len(self.nodes)}", f"--node-rank={node.index}", f"--nproc-per-node={self.gpus_per_node}",
            f"--master-addr={self.master_addr}", f"--master-port={self.master_port}", "--max-restarts=0",
            "-m", module, *args,
        ]  # fmt: skip

    def create_kwargs(self, run_id: str, stage: str, node: Node, command: list[str]) -> dict:
        """The SDK's containers.create arguments for one node of one stage."""
        import docker

        name = self.container_name(run_id, stage, node)
        kw: dict[str, Any] = {
            "image": self.image_id or self.image,
            "command": command,
            "name": name,
            "labels": {LABEL_RUN: run_id, "kit.stage": stage, "kit.node": str(node.index), "kit.host": node.host},
            "environment": {**self.env, "KIT_NODE_HOST": node.host},
            "user": self.user,
            "working_dir": "/tmp",
            "mounts": [
                docker.types.Mount(m["target"], m["source"], type="bind", read_only=m["read_only"])
                for m in self.mounts
            ],
            "ipc_mode": "host",
            "ulimits": [docker.types.Ulimit(name=k, soft=s, hard=h) for k, (s, h) in self.ulimits.items()],
            "init": True,
            "detach": True,
        }
        if self.own_network:
            kw["network"] = self.network
            kw["hostname"] = f"kit-node{node.index}"
            kw["networking_config"] = {
                self.network: node.client.api.create_endpoint_config(aliases=[f"kit-node{node.index}"])
            }
        else:
            kw["network_mode"] = "host"
        if self.use_gpus:  # the devices, as their vendor hands them to a container
            access = self.device_vendor().container_access(self.gpus_per_node)
            if access.device_requests:
                kw["device_requests"] = [docker.types.DeviceRequest(**r) for r in access.device_requests]
            kw["devices"] = list(access.devices)
            kw["mounts"] += [docker.types.Mount(c, h, type="bind", read_only=True) for h, c in access.volumes.items()]
            kw["environment"] = {**access.environment, **kw["environment"]}
            if access.group_add:
                kw["group_add"] = list(access.group_add)
        if node.infiniband:
            kw["devices"] = [*kw.get("devices", []), "/dev/infiniband:/dev/infiniband:rwm"]
            kw["cap_add"] = ["IPC_LOCK"]
        if not kw.get("devices"):
            kw.pop("devices", None)
        return kw


def forwarded_env(extra: list[str] | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The collectives' and launch settings from the host's environment plus `--env KEY=VALUE`, over kit's
    defaults."""
    environ = os.environ if environ is None else environ
    env = dict(CONTAINER_ENV)
    env.update({k: v for k, v in environ.items() if _forwarded(k)})
    for item in extra or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not key.replace("_", "a").isalnum():
            raise ValueError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def parse_ulimits(items: list[str] | None) -> dict[str, list[int]]:
    """kit's limits, with `--ulimit NAME=SOFT[:HARD]` over them (-1: unlimited), as docker's --ulimit reads them."""
    out = {k: list(v) for k, v in ULIMITS.items()}
    for item in items or []:
        name, sep, value = item.partition("=")
        soft, _, hard = value.partition(":")
        try:
            limits = [int(soft), int(hard or soft)]
        except ValueError:
            raise ValueError(f"--ulimit {item!r}: expected NAME=SOFT[:HARD] in numbers (-1: unlimited)") from None
        if not sep or not name.isalpha():
            raise ValueError(f"--ulimit {item!r}: expected NAME=SOFT[:HARD], e.g. memlock=-1 or nofile=65536:65536")
        if -1 not in limits and limits[0] > limits[1]:
            raise ValueError(f"--ulimit {item!r}: the soft limit is above the hard one")
        out[name] = limits
    return out


def start_error_fix(text: str, use_gpus: bool) -> str:
    """What to do about an engine's refusal to start a container."""
    if "rlimit" in text:
        return RLIMIT_FIX
    if use_gpus and ("device driver" in text or "gpu" in text.lower() or "device" in text.lower()):
        return ("the engine could not hand the devices to the container: `kit check-host --deep` tries a container "
                "with them and names the fix for this host's vendor")
    return "look at the engine's log (`journalctl -u docker`) and `kit check-host --deep`"


def default_image(results: Path, client: Any) -> str:
    """The newest image `kit build` recorded under RESULTS/builds that the engine still has."""
    import docker

    records = []
    for p in (results / "builds").glob("*.json"):
        try:
            records.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    for rec in sorted(records, key=lambda r: r.get("finished", 0), reverse=True):
        try:
            client.images.get(rec["tag"])
            return rec["tag"]
        except (docker.errors.ImageNotFound, KeyError):
            continue
        except docker.errors.APIError:
            break
    raise ContainerError(
        f"no kit image: no build record under {results / 'builds'} names an image this engine has",
        "build it with `kit build` (the run then uses the newest build), or pass --image IMAGE; "
        "--native runs on this host without containers",
    )


def mounts_for(results: Path, read_only: list[Path]) -> list[dict]:
    """Each directory at its own path; results read-write. Nested read-only dirs under results stay read-only."""
    seen: dict[str, dict] = {}
    for path, ro in [(results, False), *((p, True) for p in read_only)]:
        src = str(Path(path).resolve())
        if src not in seen:
            seen[src] = {"source": src, "target": src, "read_only": ro}
    return sorted(seen.values(), key=lambda m: (len(m["source"]), m["source"]))


def plan(
    *, hosts: list[str], image: str | None, results: Path, read_only: list[Path], gpus_per_node: int, use_gpus: bool,
    env: dict[str, str], ssh_options: list[str], master_addr: str | None, master_port: int | None,
    run_tag: str, connect_timeout: float = 60, ulimits: dict[str, list[int]] | None = None, vendor: str = "", create: bool = True,
) -> ContainerPlan:
    """Reach every node's engine, pin the image by id, choose the network and the rendezvous; raises ContainerError.

    `create=False` (a dry run) writes nothing: the results directory, mounted into every container, is only
    created for a real launch."""
    nodes = [Node(i, h, base_url_of(h)) for i, h in enumerate(hosts)]
    for node in nodes:
        connect(node, connect_timeout)
    first = nodes[0]
    if create:
        results.mkdir(parents=True, exist_ok=True)
    image = image or default_image(results, first.client)
    import docker

    for node in nodes:
        try:
            node.image_id = node.client.images.get(image).id
        except docker.errors.ImageNotFound:
            fix = "build it there with `kit build`, or copy it: `docker save IMAGE | ssh HOST docker load`"
            if node.index == 0 and not node.base_url.startswith("ssh://"):
                fix = "build it with `kit build`, or pass --image with an image `docker images` lists"
            raise ContainerError(f"{node.where}: the engine has no image {image}", fix.replace("IMAGE", image)) from None
    ids = {n.image_id for n in nodes}
    if len(ids) > 1:
        listing = ", ".join(f"{n.where}: {n.image_id[:19]}" for n in nodes)
        raise ContainerError(
            f"{image} is not the same image on every node ({listing}): results of a mixed run do not compare",
            "build once and copy the image to every node (`docker save | docker load`), or rebuild with `kit build` "
            "from the same kit checkout everywhere",
        )

    engines = {n.engine_id for n in nodes}
    if len(nodes) > 1 and len(engines) == 1:
        network = f"kit-{run_tag}"
        addr, port = "kit-node0", master_port or DEFAULT_MASTER_PORT
    elif len(engines) < len(nodes):
        shared = [n.where for n in nodes if sum(m.engine_id == n.engine_id for m in nodes) > 1]
        raise ContainerError(
            f"{', '.join(shared)} are the same Docker engine, but other nodes are not: host networking would put "
            "two nodes' ranks on one host's ports",
            "give each node its own host in --hosts, or every node the same engine (a rehearsal on one host)",
        )
    else:
        network = "host"
        addr = master_addr or ("127.0.0.1" if len(nodes) == 1 else _node_address(first))
        port = master_port or (free_port() if first.base_url.startswith("unix://") else DEFAULT_MASTER_PORT)
    for node in nodes:
        node.infiniband = use_gpus and has_infiniband(node, ssh_options)
    mounts = mounts_for(results, read_only)
    return ContainerPlan(
        image=image, image_id=first.image_id, nodes=nodes, gpus_per_node=gpus_per_node, use_gpus=use_gpus, vendor=vendor,
        network=network, master_addr=addr, master_port=port, user=f"{os.getuid()}:{os.getgid()}", mounts=mounts,
        env=env, ssh_options=list(ssh_options), ulimits=ulimits or parse_ulimits(None),
    )  # fmt: skip


def unreached_plan(
    *, hosts: list[str], image: str | None, results: Path, read_only: list[Path], gpus_per_node: int, use_gpus: bool,
    env: dict[str, str], ssh_options: list[str], master_addr: str | None, master_port: int | None, run_tag: str,
    ulimits: dict[str, list[int]] | None = None, vendor: str = "",
) -> ContainerPlan:
    """The plan a dry run shows when an engine cannot be reached: what the request decides, with what only the
    engines answer left open (the image's id, engine names, InfiniBand; a one-engine rehearsal's network is taken
    from --hosts naming one host for every node). Master port 0: a free one, found at launch."""
    nodes = [Node(i, h, base_url_of(h)) for i, h in enumerate(hosts)]
    if len(nodes) > 1 and len(set(hosts)) == 1:
        network, addr, port = f"kit-{run_tag}", "kit-node0", master_port or DEFAULT_MASTER_PORT
    else:
        network = "host"
        addr = master_addr or ("127.0.0.1" if len(nodes) == 1 else _node_address(nodes[0]))
        port = master_port or (0 if nodes[0].base_url.startswith("unix://") else DEFAULT_MASTER_PORT)
    return ContainerPlan(
        image=image or "the newest `kit build` under --results", image_id="", nodes=nodes,
        gpus_per_node=gpus_per_node, use_gpus=use_gpus, vendor=vendor, network=network, master_addr=addr,
        master_port=port,
        user=f"{os.getuid()}:{os.getgid()}", mounts=mounts_for(results, read_only), env=env,
        ssh_options=list(ssh_options), ulimits=ulimits or parse_ulimits(None),
    )  # fmt: skip


# Run with the image's Python in a throwaway container on each node before a multi-host launch.
PREFLIGHT = r"""
import os, socket, sys, time
role, addr, port, marker, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
if not os.path.isfile(marker):
    print("NOT-SHARED", flush=True); sys.exit(3)
if role == "listen":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("", port))
    except OSError as e:
        print(f"BUSY {e}", flush=True); sys.exit(4)
    s.listen(64)
    s.settimeout(float(os.environ.get("KIT_PREFLIGHT_TIMEOUT", "60")))
    print("LISTENING", flush=True)
    for _ in range(n):
        try:
            s.accept()[0].close()
        except OSError:
            print("NOBODY-CAME", flush=True); sys.exit(5)
    sys.exit(0)
deadline = time.time() + float(os.environ.get("KIT_PREFLIGHT_TIMEOUT", "60"))
while True:
    try:
        socket.create_connection((addr, port), timeout=5).close(); sys.exit(0)
    except OSError as e:
        if time.time() > deadline:
            print(f"UNREACHABLE {e}", flush=True); sys.exit(6)
        time.sleep(1)
"""


def preflight(plan_: ContainerPlan, results: Path, timeout: float = 60) -> None:
    """Before a launch on several hosts: the results directory is the same shared one on every node, node 0's
    rendezvous port is free, and every other node reaches node 0 at master_addr:master_port. ContainerError else.

    Node 0 listens on the port in a throwaway container (host networking, the run's image, user and mounts) and
    each other node connects to it from one of its own; each also looks for a marker file written here.
    """
    marker = results / f".kit-preflight-{uuid.uuid4().hex[:8]}"
    marker.write_text("kit preflight: removed when the check ends\n")
    started: list[tuple[Node, Any]] = []
    env = {**CONTAINER_ENV, "KIT_PREFLIGHT_TIMEOUT": str(timeout)}
    try:
        for node in plan_.nodes:
            role = "listen" if node.index == 0 else "connect"
            cmd = ["python", "-c", PREFLIGHT, role, plan_.master_addr, str(plan_.master_port), str(marker),
                   str(len(plan_.nodes) - 1)]  # fmt: skip
            kw = plan_.create_kwargs("preflight", "preflight", node, cmd)
            kw.update(name=f"kit-preflight-{marker.name[-8:]}-node{node.index}", environment=env)
            kw.pop("device_requests", None)
            c = node.client.containers.create(**kw)
            started.append((node, c))
            c.start()
            if node.index == 0:  # the others connect only once node 0 listens (or has failed)
                deadline = time.time() + timeout
                while time.time() < deadline:
                    c.reload()
                    if c.status != "running" or b"LISTENING" in c.logs():
                        break
                    time.sleep(0.3)
        problems: list[str] = []
        for node, c in started[1:] + started[:1]:  # node 0 last: "nobody came" only when nothing else explains it
            code = c.wait(timeout=timeout + 60).get("StatusCode", 1)
            out = c.logs().decode(errors="replace").strip()
            if code == 3:
                problems.append(f"{node.where} does not see {results} as this host does (no marker file there)")
            elif code == 4:
                problems.append(f"{node.where}: port {plan_.master_port} is taken ({out.removeprefix('BUSY ')})")
            elif code == 6:
                problems.append(f"{node.where} cannot reach node 0 at {plan_.master_addr}:{plan_.master_port} "
                                f"({out.removeprefix('UNREACHABLE ')})")  # fmt: skip
            elif code == 5 and len(problems) == 0:
                problems.append(f"node 0 heard from fewer than {len(plan_.nodes) - 1} node(s) within {timeout:g} s")
            elif code not in (0, 5):
                problems.append(f"{node.where}: the check exited {code}: {out[-300:]}")
        if problems:
            raise ContainerError(
                "the nodes are not ready for one job: " + "; ".join(problems),
                "--results, --data and --models must be one shared filesystem mounted at the same path on every "
                "node; pass --master-port with a free port, and --master-addr with an address of node 0 that every "
                "node reaches (check firewalls between the hosts)",
            )
    finally:
        for _, c in started:
            _remove(c)
        marker.unlink(missing_ok=True)


def _node_address(node: Node) -> str:
    if node.base_url.startswith("ssh://"):
        dest, _ = ssh_destination(node.base_url)
        return dest.rsplit("@", 1)[-1].strip("[]")
    if node.base_url.startswith("tcp://"):
        return node.base_url.removeprefix("tcp://").rsplit(":", 1)[0]
    return socket.gethostname() if node.base_url.startswith("unix://") else (node.engine_name or "127.0.0.1")


def describe(plan_: ContainerPlan) -> list[str]:
    """The plan in words, for --dry-run and the run's start."""
    lines = [
        f"image {plan_.image} ({plan_.image_id[:19] or 'id not looked up'})",
        f"{len(plan_.nodes)} node(s) x {plan_.gpus_per_node} {plan_.device_vendor().device_word if plan_.use_gpus else 'CPU rank'}(s); "
        f"network {plan_.network}; rendezvous {plan_.master_addr}:{plan_.master_port or '<free port>'}",
        f"user {plan_.user}; ipc host; ulimits "
        + " ".join(f"{k}={'unlimited' if v[0] == -1 else v[0]}" for k, v in sorted(plan_.ulimits.items()))
        + "; init; not privileged",
    ]
    for n in plan_.nodes:
        ib = "; InfiniBand devices + IPC_LOCK" if n.infiniband else ""
        lines.append(f"node {n.index}: {n.host} -> {n.base_url} (engine {n.engine_name or '?'}){ib}")
    for m in plan_.mounts:
        lines.append(f"mount {m['source']} ({'ro' if m['read_only'] else 'rw'})")
    if plan_.use_gpus:
        access = plan_.device_vendor().container_access(plan_.gpus_per_node)
        nodes_ = ", ".join(d.split(":")[0] for d in access.devices)
        lines.append(f"devices: {access.note}" + (f" ({nodes_})" if nodes_ else ""))
    shown = {k: v for k, v in plan_.env.items() if k not in CONTAINER_ENV}
    lines.append("environment: " + (" ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "(kit's defaults only)"))
    return lines


# --- running ---------------------------------------------------------------------------------------------


class _LogPump(threading.Thread):
    """Copies one container's output to a log file as it comes."""

    def __init__(self, container: Any, path: Path) -> None:
        super().__init__(daemon=True)
        self.container, self.path = container, path
        self.last = ""

    def run(self) -> None:
        try:
            with open(self.path, "ab") as out:
                for chunk in self.container.logs(stream=True, follow=True, stdout=True, stderr=True):
                    out.write(chunk)
                    out.flush()
                    text = chunk.decode(errors="replace").strip()
                    if text:
                        self.last = text.splitlines()[-1][:120]
        except Exception:  # noqa: BLE001 - the container went away; the log has what came
            pass


class ContainerLauncher(LauncherBase):
    """Runs the case's helpers and stages in containers, as the plan says (the `Launcher` interface)."""

    name = "containers"
    what = "container"
    groups = ("containers",)

    # ---- lifecycle ----

    @classmethod
    def request_problems(cls, req: Any) -> list[str]:
        out = super().request_problems(req)
        try:
            parse_hosts(req.hosts, req.nodes)
            forwarded_env(req.env)
            parse_ulimits(req.ulimits)
        except ValueError as e:
            out.append(str(e))
        if req.master_port is not None and not 1024 <= req.master_port <= 65535:
            out.append(f"--master-port {req.master_port}: expected a port from 1024 to 65535")
        return out

    @classmethod
    def session(cls, req: Any) -> SshPolicy:
        return SshPolicy(req.ssh_options)

    @classmethod
    def _plan_kwargs(cls, req: Any, cfg: Any, tag: str) -> dict[str, Any]:
        read_only = [Path(p) for p in (req.data, req.models, req.eval_data, req.model_dir) if p]
        return dict(hosts=parse_hosts(req.hosts, req.nodes), image=req.image, results=Path(req.results).resolve(),
                    read_only=read_only, gpus_per_node=req.gpus, use_gpus=cfg.device != "cpu",
                    vendor=(vendors.for_config(cfg.device)).name,
                    env=forwarded_env(req.env), ssh_options=req.ssh_options, master_addr=req.master_addr,
                    master_port=req.master_port, run_tag=tag, ulimits=parse_ulimits(req.ulimits))  # fmt: skip

    @classmethod
    def prepare(cls, req: Any, cfg: Any, dry: bool = False) -> tuple[ContainerLauncher, list]:
        """Reach the nodes' engines and fix the containers' shape (ContainerError, exit 3). A dry run writes nothing,
        not even the results directory; an engine it cannot reach is a stop, and the plan is shown with what only
        the engines know left open."""

        tag = "<run id>" if dry else uuid.uuid4().hex[:8]
        kw = cls._plan_kwargs(req, cfg, tag)
        try:
            p = plan(**kw, create=not dry)
        except ContainerError as e:
            if not dry:
                raise
            return cls(cases.get(req.case), unreached_plan(**kw), "<run id>", req.hang_timeout, reached=False), [
                Stop(EXIT_ENVIRONMENT, str(e))]
        return cls(cases.get(req.case), p, "<run id>" if dry else "", req.hang_timeout), []

    def describe(self, req: Any, cfg: Any, console: Any, commands: dict[str, list[str]], run: Path) -> list:
        from rich.text import Text


        p = self.plan
        for node in p.nodes:
            for stage, args in commands.items():
                cmd = " ".join(p.torchrun(node, stage_of(self.case, stage).module, args))
                console.print(Text(f"{stage}, {node.where}: {cmd}".replace("--master-port=0", "--master-port=<free port>")))
        for line in describe(p):
            console.print(Text(line))
        if not self.reached:
            console.print(Text("image stack: not read (no engine or image to read it from: see below)"))
            return []
        stops = []
        stack = self.image_stack()
        needs = [f"{n.key} = {n.value!r} needs {n.package}" for n in stacks.config_needs(cfg.to_dict())]
        if problem := stacks.config_problem(cfg.to_dict(), stack, p.image):
            stops.append(Stop(EXIT_USAGE, problem))
            console.print(Text(f"image stack: {stacks.describe(stack)}"))
        else:
            met = f": it meets the config's needs ({'; '.join(needs)})" if needs else ""
            console.print(Text(f"image stack: {stacks.describe(stack)}{met}"))
        if len(p.nodes) > 1 and not p.own_network:
            console.print(Text("not checked by a dry run: that --results is shared by the nodes and node 0's "
                               "rendezvous port is free and reached (a launch starts a container per node to see)",
                               style="dim"))  # fmt: skip
        return stops

    def image_stack(self) -> dict:
        """The stack of the plan's image, from its labels (kit.image.stacks.image_stack)."""
        try:
            labels = self.plan.nodes[0].client.images.get(self.plan.image_id or self.plan.image).labels or {}
        except Exception:  # noqa: BLE001 - the plan just inspected it; an engine that went away reads as unlabelled
            labels = {}
        return stacks.image_stack(labels)

    def check_before_create(self, req: Any, cfg: Any, console: Any) -> None:
        """The image's stack must meet the config's needs, and several hosts must share --results and reach node 0:
        refused before anything starts."""

        if problem := stacks.config_problem(cfg.to_dict(), self.image_stack(), self.plan.image):
            raise UsageError(problem)
        if not self.plan.own_network and len(self.plan.nodes) > 1:
            with console.status("checking the nodes: shared results, rendezvous port, reachability"):
                preflight(self.plan, Path(req.results))

    def before_record(self, run: Any, req: Any, cfg: Any, console: Any) -> dict[str, Any]:
        self.run_id = run.path.name
        return {"containers": self.plan.to_dict(), "stack": self.image_stack()}

    def plan_lines(self) -> list[str]:
        return describe(self.plan)

    @classmethod
    def reopen(cls, run: Path, meta: dict[str, Any]) -> ContainerLauncher:
        """The plan of a run being continued: the same hosts, and the same image (by id), or ContainerError."""
        from dataclasses import replace as _replace


        stored = meta["containers"]
        req = RunRequest.from_dict(meta)
        req.image = stored["image"]
        req.hosts = ",".join(n["host"] for n in stored.get("nodes") or []) or req.hosts
        case = cases.get(meta["case"])
        cfg = cases.load_config(case, str(run / "config.toml"), [])
        tag = stored["network"].removeprefix("kit-") if stored["network"] != "host" else uuid.uuid4().hex[:8]
        if stored["network"] == "host" and req.nodes == 1:
            req = _replace(req, master_port=None)  # a fresh free port: the old one may be taken now
        p = plan(**cls._plan_kwargs(req, cfg, tag))
        if not p.own_network and len(p.nodes) > 1:
            preflight(p, Path(req.results))
        if p.image_id != stored["image_id"]:
            raise ContainerError(
                f"the image {stored['image']} is now {p.image_id[:19]}, but the run started with "
                f"{stored['image_id'][:19]}: a resumed run must use the image it started with",
                f"tag the original image again (`docker tag {stored['image_id'][:19]} {stored['image']}`) and resume, "
                "or start a new run",
            )
        return cls(case, p, run.name, float(meta.get("hang_timeout") or 0))

    @classmethod
    def ranks_here(cls, req: Any) -> bool:
        try:
            hosts = parse_hosts(req.hosts, req.nodes)
        except ValueError:
            return False
        return all(h == "local" for h in hosts) and os.environ.get("DOCKER_HOST", "unix://").startswith("unix://")

    def where_ranks_run(self) -> str:
        return f"the image {self.plan.image}"

    def environment_facts(self) -> dict[str, Any]:
        return {"containers": self.plan.to_dict()}

    def image_name(self) -> str:
        return self.plan.image

    def __init__(self, case: Case, plan_: ContainerPlan, run_id: str, hang_timeout: float = 0.0,
                 reached: bool = True) -> None:  # fmt: skip
        self.reached = reached
        self._done: set[int] = set()
        self._failed: Node | None = None
        self._stage = ""
        self.case = case
        self.plan = plan_
        self.run_id = run_id
        self.network = None
        self.hang_timeout = hang_timeout
        self.env: dict[str, str] = {}  # extra environment of every stage container (the heartbeat's path)

    # The plan's clients are attached by ContainerPlan creation; a resumed run reconnects.
    def _ensure_network(self) -> None:
        if not self.plan.own_network or self.network is not None:
            return
        client = self.plan.nodes[0].client
        import docker

        try:
            self.network = client.networks.get(self.plan.network)
        except docker.errors.NotFound:
            self.network = client.networks.create(self.plan.network, driver="bridge", labels={LABEL_RUN: self.run_id})

    def close(self) -> None:
        """Remove the run's network (containers are removed as each stage ends)."""
        if self.network is not None:
            try:
                self.network.remove()
            except Exception:  # noqa: BLE001 - best effort; `docker network prune` finds it by label
                pass
            self.network = None

    def run_module(self, module: str, args: list[str], log: Path) -> subprocess.CompletedProcess:
        """A single-process helper of the case (environment probe, synthetic data) in a container on node 0."""
        import docker

        node = self.plan.nodes[0]
        cmd = ["python", "-m", module, *args]
        kw = self.plan.create_kwargs(self.run_id, module.replace("_", "-"), node, cmd)
        kw["name"] = f"{kw['name']}-{uuid.uuid4().hex[:6]}"
        if module == "synthetic":  # the probe reports the GPUs; data generation needs none
            kw.pop("device_requests", None)
        if self.plan.own_network:
            for key in ("network", "hostname", "networking_config"):
                kw.pop(key, None)
            kw["network_mode"] = "none"
        log.parent.mkdir(parents=True, exist_ok=True)
        container = None
        try:
            container = node.client.containers.create(**kw)
            container.start()
            code = container.wait(timeout=7 * 24 * 3600).get("StatusCode", 1)  # the client's 60 s is for requests
            stdout = container.logs(stdout=True, stderr=False).decode(errors="replace")
            stderr = container.logs(stdout=False, stderr=True)
            with open(log, "ab") as out:
                out.write(f"$ {' '.join(cmd)}  [container {kw['name']} on {node.host}]\n".encode())
                out.write(stderr)
            return subprocess.CompletedProcess(cmd, code, stdout, "")
        except docker.errors.APIError as e:
            text = str(e.explanation or e)
            with open(log, "ab") as out:
                out.write(f"$ {' '.join(cmd)}\ncannot start a container on {node.where}: {text}\n".encode())
                out.write(f"fix: {start_error_fix(text, self.plan.use_gpus)}\n".encode())
            return subprocess.CompletedProcess(cmd, 125, "", text)
        finally:
            if container is not None:
                _remove(container)
            self._sweep(kw["labels"]["kit.stage"])

    def start(self, run: Path, stage: str, world: int, case_args: list[str], display: StageProgress) -> list:
        """One container per node, all created, then all started: [(node, container, log pump)]."""
        import docker

        stage_dir = run / stage
        module = stage_of(self.case, stage).module
        args = ["--stage", stage, "--run-dir", str(run), *case_args]
        containers: list[tuple[Node, Any, _LogPump]] = []
        self._ensure_network()
        try:
            for node in self.plan.nodes:
                cmd = self.plan.torchrun(node, module, args)
                kw = self.plan.create_kwargs(self.run_id, stage, node, cmd)
                kw["environment"] = {**kw["environment"], **self.env}
                log = self.node_log(stage_dir, node)
                with open(log, "ab") as out:
                    out.write(f"$ {' '.join(cmd)}  [container {kw['name']} on {node.host}]\n".encode())
                display.note(f"starting {len(self.plan.nodes)} container(s)")
                try:
                    c = node.client.containers.create(**kw)
                except docker.errors.APIError as e:
                    raise StartFailed(self._start_failed(stage, node, e, containers)) from None
                containers.append((node, c, _LogPump(c, log)))
            for node, c, pump in containers:
                try:
                    c.start()
                except docker.errors.APIError as e:
                    raise StartFailed(self._start_failed(stage, node, e, containers)) from None
                pump.start()
        except BaseException:
            self.cleanup(containers, stage)
            raise
        display.note("")
        self._stage = stage
        return containers

    def poll(self, containers: list) -> tuple[int | None, str | None]:
        """(None, None) while any runs; (0, None) when all exited 0; the first node to fail and its exit code."""
        running = False
        for node, c, _ in containers:
            if id(c) in self._done:
                continue
            c.reload()
            if c.status in ("exited", "dead"):
                code = c.attrs.get("State", {}).get("ExitCode", 1)
                if code != 0:
                    self._failed = node
                    return code, node.where
                self._done.add(id(c))
            else:
                running = True
        if running:
            return None, None
        self._done.clear()
        return 0, None

    def note(self, containers: list) -> str | None:
        """Until steps arrive, node 0's container's own last line."""
        last = containers[0][2].last if containers else ""
        return f"node 0: {escape(last[:60])}" if last else None

    def stop(self, containers: list) -> None:
        _stop_all(containers)
        for _, _, pump in containers:
            if pump.is_alive():
                pump.join(timeout=10)

    def failure(self, stage: str, stage_dir: Path, containers: list, code: int, where: str | None,
                failures: list[dict]) -> str:  # fmt: skip
        node = self._failed or self.plan.nodes[0]
        return self.failure_message(stage, stage_dir, node, code, failures)

    def cleanup(self, containers: list, stage: str | None = None) -> None:
        for _, c, _ in containers:
            _remove(c)
        self._sweep(stage or self._stage)
        self._done.clear()
        self._failed = None

    def _sweep(self, stage: str) -> None:
        """Remove whatever containers of this run and stage are left on any node's engine: a create whose answer
        timed out on the client may still have made one, which no handle here points at."""
        for client in {id(n.client): n.client for n in self.plan.nodes}.values():
            try:
                for c in client.containers.list(
                    all=True, filters={"label": [f"{LABEL_RUN}={self.run_id}", f"kit.stage={stage}"]}
                ):
                    _remove(c)
            except Exception:  # noqa: BLE001 - the engine went away; `kit.run` labels still find them later
                pass

    def node_log(self, stage_dir: Path, node: Node) -> Path:
        name = "launcher.log" if node.index == 0 else f"launcher-node{node.index}.log"
        return stage_dir / "logs" / name

    def _start_failed(self, stage: str, node: Node, error: Exception, started: list) -> StageResult:
        _stop_all(started)
        text = str(getattr(error, "explanation", None) or error)
        fix = start_error_fix(text, self.plan.use_gpus)
        return StageResult(
            stage, "failed", 125, message=f"stage {stage}: cannot start the container on {node.where}: {text}\nfix: {fix}"
        )

    def failure_message(self, stage: str, stage_dir: Path, node: Node, code: int, failures: list[dict]) -> str:
        """The failing node (host), rank and error; the other nodes were stopped because of it."""
        per_node = self.plan.gpus_per_node
        log = self.node_log(stage_dir, node)
        others = [n.where for n in self.plan.nodes if n is not node]
        stopped = f"; stopped {', '.join(others)}" if others else ""
        mine = [f for f in failures if int(f.get("rank", -1)) // per_node == node.index]
        root = launcher_root_cause(log)
        if mine:
            first = mine[0]
            rank = first.get("rank")
            return (
                f"stage {stage} failed on {node.where}, rank {rank} (container exit code {code}{stopped}): "
                f"{first.get('exception')}\nlast lines of {stage_dir / 'logs' / f'rank{rank}.log'}:\n"
                f"{tail_lines(stage_dir / 'logs' / f'rank{rank}.log')}"
            )
        if root is not None:
            rank = root["rank"]
            return (
                f"stage {stage} failed on {node.where}: rank {rank} died (exit code {root['exitcode']}) without a "
                f"Python error (container exit code {code}{stopped})\nlast lines of "
                f"{stage_dir / 'logs' / f'rank{rank}.log'}:\n{tail_lines(stage_dir / 'logs' / f'rank{rank}.log')}"
            )
        return (
            f"stage {stage} failed on {node.where}: the container exited {code} before any rank reported an error"
            f"{stopped}\nlast lines of {log}:\n{tail_lines(log)}"
        )


def _stop_all(containers: list) -> None:
    """SIGTERM (through docker-init to torchrun, which stops its ranks), SIGKILL after the grace period."""
    threads = [threading.Thread(target=_stop, args=(c,), daemon=True) for _, c, *_ in containers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=STOP_GRACE_S + 15)


def _stop(container: Any) -> None:
    try:
        container.stop(timeout=STOP_GRACE_S)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:  # noqa: BLE001 - gone already, or the engine went away; the label finds leftovers
        pass


def leftovers(client: Any, run_id: str | None = None) -> list[str]:
    """Names of containers a run (or any run) left behind, found by label."""
    label = f"{LABEL_RUN}={run_id}" if run_id else LABEL_RUN
    return [c.name for c in client.containers.list(all=True, filters={"label": label})]
