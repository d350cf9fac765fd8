"""`kit run` in containers (kit/launchers/containers.py).

The first half checks the plan's pieces without an engine. The second half runs for real on the Docker engine
that .ci/services.sh starts, with the CPU test image of .ci/test-image.sh (a Debian base from debootstrap, the
kit and the case under the CPU environment's versions): one node end to end, two nodes that rendezvous over a
Docker network (one engine reached twice: through its socket and through ssh:// on the loopback sshd), a
failing node, Ctrl-C and resume, a missing image.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from kit.launchers import containers
from tests.e2e.helpers import events, kit, only_run, start_kit, status_rows, steps, wait_for_step

from .services import services_env, unavailable

TINY = ("run", "llava1_5_7b", "--config", "tiny", "--synthetic")


def _memlock() -> tuple[str, ...]:
    """CI's engine runs where the hard memlock limit is 8 MiB and cannot raise it: ask for what it allows there."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return () if hard == resource.RLIM_INFINITY else (f"--ulimit=memlock={hard}",)


# --- the plan, without an engine --------------------------------------------------------------------------


def test_hosts_one_per_node():
    assert containers.parse_hosts(None, 1) == ["local"]
    assert containers.parse_hosts("gpu1, gpu2", 2) == ["gpu1", "gpu2"]
    with pytest.raises(ValueError, match=r"--nodes 2 needs --hosts with 2 entries.*local,local"):
        containers.parse_hosts(None, 2)
    with pytest.raises(ValueError, match=r"names 3 host\(s\) but --nodes is 2"):
        containers.parse_hosts("a,b,c", 2)
    with pytest.raises(ValueError, match="an empty entry"):
        containers.parse_hosts("a,,b", 3)


def test_base_urls(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert containers.base_url_of("local") == "unix:///var/run/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/docker.sock")
    assert containers.base_url_of("local") == "unix:///run/user/1000/docker.sock"
    assert containers.base_url_of("gpu1") == "ssh://gpu1"
    assert containers.base_url_of("root@10.0.0.2:2222") == "ssh://root@10.0.0.2:2222"
    assert containers.base_url_of("tcp://10.0.0.3:2376") == "tcp://10.0.0.3:2376"
    assert containers.ssh_destination("ssh://root@10.0.0.2:2222") == ("root@10.0.0.2", 2222)
    assert containers.ssh_destination("ssh://gpu1") == ("gpu1", None)


def test_forwarded_environment():
    host = {"NCCL_IB_HCA": "mlx5_0", "NCCL_NVLS_ENABLE": "0", "GLOO_SOCKET_IFNAME": "eth0", "PATH": "/x", "HOME": "/r"}
    env = containers.forwarded_env(["NCCL_DEBUG=INFO"], environ=host)
    assert env["NCCL_IB_HCA"] == "mlx5_0" and env["NCCL_NVLS_ENABLE"] == "0" and env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert env["NCCL_DEBUG"] == "INFO"
    assert "PATH" not in env and env["HOME"] == "/tmp/kit-home"  # the host's own HOME means nothing inside
    with pytest.raises(ValueError, match="--env 'NCCL_DEBUG': expected KEY=VALUE"):
        containers.forwarded_env(["NCCL_DEBUG"], environ={})


def test_mounts_results_rw_inputs_ro(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "runs").mkdir()
    m = containers.mounts_for(tmp_path / "runs", [tmp_path / "data", tmp_path / "data"])
    assert m == [
        {"source": str(tmp_path / "data"), "target": str(tmp_path / "data"), "read_only": True},
        {"source": str(tmp_path / "runs"), "target": str(tmp_path / "runs"), "read_only": False},
    ]


def _plan(**kw) -> containers.ContainerPlan:
    args = dict(
        image="kit-llava:t", image_id="sha256:" + "a" * 64,
        nodes=[containers.Node(0, "gpu1", "ssh://gpu1", infiniband=True), containers.Node(1, "gpu2", "ssh://gpu2")],
        gpus_per_node=8, use_gpus=True, network="host", master_addr="gpu1", master_port=29500, user="1000:1000",
        mounts=[{"source": "/runs", "target": "/runs", "read_only": False}], env={"NCCL_IB_HCA": "mlx5"},
        vendor="nvidia",
    )  # fmt: skip
    args.update(kw)
    return containers.ContainerPlan(**args)


def test_container_arguments_for_gpu_nodes():
    p = _plan()
    cmd = p.torchrun(p.nodes[1], "cases.llava1_5_7b.train", ["--stage", "pretrain"])
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nnodes=2" in cmd and "--node-rank=1" in cmd and "--nproc-per-node=8" in cmd
    assert "--master-addr=gpu1" in cmd and "--master-port=29500" in cmd
    kw = p.create_kwargs("RUN", "pretrain", p.nodes[0], cmd)
    assert kw["device_requests"][0]["Count"] == 8 and kw["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert kw["devices"] == ["/dev/infiniband:/dev/infiniband:rwm"]  # node 0 has InfiniBand
    assert kw["ipc_mode"] == "host" and kw["network_mode"] == "host" and kw["init"] is True
    assert kw["user"] == "1000:1000"
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in kw["ulimits"]} == {
        "memlock": (-1, -1), "stack": (67108864, 67108864)
    }  # fmt: skip
    assert kw["devices"] == ["/dev/infiniband:/dev/infiniband:rwm"] and kw["cap_add"] == ["IPC_LOCK"]
    assert "privileged" not in kw and "security_opt" not in kw
    assert kw["labels"]["kit.run"] == "RUN" and kw["labels"]["kit.node"] == "0"
    assert kw["environment"]["NCCL_IB_HCA"] == "mlx5"
    assert kw["mounts"][0]["ReadOnly"] is False
    no_ib = p.create_kwargs("RUN", "pretrain", p.nodes[1], cmd)
    assert "devices" not in no_ib and "cap_add" not in no_ib
    d = p.to_dict()
    assert d["collectives"] == {"NCCL_IB_HCA": "mlx5"} and d["privileged"] is False and d["vendor"] == "nvidia"
    json.dumps(d)  # goes into run.json as is



def test_container_arguments_follow_the_devices_vendor():
    """The devices reach a container as their vendor says (kit/vendors): AMD's device nodes and groups, Ascend's
    NPUs, manager devices and read-only driver mounts; no NVIDIA device request for either."""
    amd = _plan(vendor="amd", gpus_per_node=2)
    kw = amd.create_kwargs("RUN", "pretrain", amd.nodes[1], ["true"])
    assert "device_requests" not in kw and kw["devices"] == ["/dev/kfd:/dev/kfd:rwm", "/dev/dri:/dev/dri:rwm"]
    assert sorted(kw["group_add"]) == ["render", "video"]
    ascend = _plan(vendor="ascend", gpus_per_node=2)
    kw = ascend.create_kwargs("RUN", "pretrain", ascend.nodes[0], ["true"])
    assert "device_requests" not in kw
    assert kw["devices"][:3] == ["/dev/davinci0:/dev/davinci0:rwm", "/dev/davinci1:/dev/davinci1:rwm",
                                 "/dev/davinci_manager:/dev/davinci_manager:rwm"]  # fmt: skip
    assert kw["devices"][-1] == "/dev/infiniband:/dev/infiniband:rwm"  # node 0's InfiniBand after the NPUs
    driver = next(m for m in kw["mounts"] if m["Target"] == "/usr/local/Ascend/driver")
    assert driver["Source"] == "/usr/local/Ascend/driver" and driver["ReadOnly"] is True
    assert "2 NPU(s)" in containers.describe(ascend)[1]

def test_ulimits():
    assert containers.parse_ulimits(None) == {"memlock": [-1, -1], "stack": [67108864, 67108864]}
    assert containers.parse_ulimits(["memlock=8388608", "nofile=1024:4096"])["memlock"] == [8388608, 8388608]
    assert containers.parse_ulimits(["nofile=1024:4096"])["nofile"] == [1024, 4096]
    for bad, msg in (("memlock", "expected NAME=SOFT"), ("memlock=lots", "in numbers"), ("nofile=9:1", "above")):
        with pytest.raises(ValueError, match=msg):
            containers.parse_ulimits([bad])
    assert "LimitMEMLOCK=infinity" in containers.start_error_fix("error setting rlimit type 8", use_gpus=True)


def test_cpu_config_asks_for_no_gpus():
    kw = _plan(use_gpus=False).create_kwargs("RUN", "pretrain", containers.Node(0, "local", "unix://x"), ["true"])
    assert "device_requests" not in kw


def test_ssh_policy_wraps_ssh(monkeypatch):
    """The `ssh` the SDK runs while a run talks to engines: batch mode, host keys checked, the user's options."""
    import shutil

    if shutil.which("ssh") is None:
        pytest.skip("no ssh client")
    with containers.SshPolicy(["-o", "ConnectionAttempts=3"]):
        assert shutil.which("ssh").startswith(os.path.join(os.sep, "tmp")) or "kit-ssh-" in shutil.which("ssh")
        out = subprocess.run(["ssh", "-G", "example.invalid"], capture_output=True, text=True, check=True).stdout
    settings = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert settings["batchmode"] == "yes"
    assert settings["stricthostkeychecking"] == "true"
    assert settings["connectionattempts"] == "3"
    assert "kit-ssh-" not in (shutil.which("ssh") or "")  # PATH restored
    with pytest.raises(ValueError, match="keeps host-key checking on"):
        containers.SshPolicy(["-o", "StrictHostKeyChecking=no"])


def test_unreachable_engine_is_named(tmp_path):
    with pytest.raises(containers.ContainerError) as e:
        containers.plan(
            hosts=[f"unix://{tmp_path}/no.sock"], image="x", results=tmp_path / "runs", read_only=[],
            gpus_per_node=1, use_gpus=False, env={}, ssh_options=[], master_addr=None, master_port=None, run_tag="t",
            connect_timeout=5,
        )  # fmt: skip
    assert f"node 0 (unix://{tmp_path}/no.sock): cannot reach the Docker engine" in str(e.value)
    assert "fix:" in str(e.value)


def test_native_refuses_container_options(tmp_path):
    r = kit(*TINY, "--native", "--image", "x", "--results", str(tmp_path))
    assert r.returncode == 2 and "--image belong(s) to the container path" in r.stderr
    r = kit(*TINY, "--nodes", "2", "--results", str(tmp_path))
    assert r.returncode == 2 and "--nodes 2 needs --hosts" in r.stderr
    r = kit(*TINY, "--master-port", "80", "--results", str(tmp_path))
    assert r.returncode == 2 and "--master-port 80: expected a port from 1024 to 65535" in r.stderr
    r = kit(*TINY, "--ulimit", "memlock=lots", "--results", str(tmp_path))
    assert r.returncode == 2 and "--ulimit 'memlock=lots': expected NAME=SOFT[:HARD] in numbers" in r.stderr
    assert not any(tmp_path.iterdir())


# --- for real, on the engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    """(client, services env) with the kit test image present."""
    import docker

    env = services_env()
    image = env.get("KIT_TEST_KIT_IMAGE")
    if not image:
        unavailable("no KIT_TEST_KIT_IMAGE in the services env (run `sudo .ci/test-image.sh`)")
    try:
        client = docker.DockerClient(base_url=env.get("KIT_TEST_DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=900)
        client.images.get(image)
    except Exception as e:  # noqa: BLE001
        unavailable(f"the engine or the image {image} does not answer ({e})")
    yield client, env
    client.close()


def _no_leftovers(client, run: Path) -> None:
    assert containers.leftovers(client, run.name) == [], "containers left behind"
    assert client.networks.list(filters={"label": f"kit.run={run.name}"}) == [], "network left behind"


def _ssh_args(env: dict) -> list[str]:
    out = []
    for token in shlex.split(env["KIT_TEST_SSH_OPTIONS"]):
        out.append(f"--ssh-option={token}")
    return out


def _owned_by_me(root: Path) -> None:
    strangers = [p for p in root.rglob("*") if p.lstat().st_uid != os.getuid()]
    assert not strangers, f"not owned by uid {os.getuid()}: {strangers[:5]}"


def test_one_node_end_to_end_in_a_container(engine, tmp_path):
    """Every stage of the tiny case in containers of the test image; the host reports the results."""
    client, env = engine
    r = kit(*TINY, "--image", env["KIT_TEST_KIT_IMAGE"], *_memlock(), "--results", str(tmp_path), timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "seed A800 1x8" in r.stdout  # the report's table at the end
    run = only_run(tmp_path)
    meta = json.loads((run / "run.json").read_text())
    assert meta["native"] is False and meta["containers"]["network"] == "host"
    assert meta["containers"]["image_id"] == client.images.get(env["KIT_TEST_KIT_IMAGE"]).id
    probe = json.loads((run / "environment.json").read_text())
    assert probe["case"]["python"].startswith("3.11")  # the image's Python, not this host's venv
    labels = client.images.get(env["KIT_TEST_KIT_IMAGE"]).labels or {}
    assert meta["stack"] == {"name": "current", "lock_sha256": labels["kit.build.lock-sha256"], "variant": "cpu"}
    assert probe["containers"]["user"] == f"{os.getuid()}:{os.getgid()}"
    assert [s["state"] for s in status_rows(run) if s["stage"] is None][-1] == "finished"
    for stage in ("pretrain", "finetune"):
        assert steps(run / stage / "events.log"), stage
        assert "torch.distributed.run" in (run / stage / "logs" / "launcher.log").read_text()
    assert (run / "eval" / "mmmu" / "summary.json").is_file()
    _owned_by_me(run)
    _no_leftovers(client, run)
    rep = kit("report", str(run), "--format", "json")
    assert rep.returncode == 0 and json.loads(rep.stdout)["stages"]["finetune"]["state"] == "finished"


def test_two_nodes_rendezvous_over_a_docker_network(engine, tmp_path):
    """Two containers, one per node (one engine reached by its socket and by ssh://), train one job together."""
    client, env = engine
    ssh_host = f"ssh://{env['KIT_TEST_SSH_HOST']}"
    r = kit(*TINY, "--stage", "pretrain", "--max-steps", "3", "--no-save", "--nodes", "2", "--gpus", "1",
            "--hosts", f"local,{ssh_host}", *_ssh_args(env), "--image", env["KIT_TEST_KIT_IMAGE"], *_memlock(),
            "--results", str(tmp_path), timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path)
    meta = json.loads((run / "run.json").read_text())
    plan = meta["containers"]
    assert plan["network"].startswith("kit-") and plan["master_addr"] == "kit-node0"
    assert [n["host"] for n in plan["nodes"]] == ["local", ssh_host]
    assert plan["nodes"][0]["engine_id"] == plan["nodes"][1]["engine_id"]
    facts = [e["value"] for e in events(run / "pretrain" / "events.log") if e["key"] == "kit_facts"]
    assert facts[-1]["world_size"] == 2
    assert [s["step"] for s in steps(run / "pretrain" / "events.log")] == [1, 2, 3]
    node1 = (run / "pretrain" / "logs" / "launcher-node1.log").read_text()
    assert "--node-rank=1" in node1 and "--nnodes=2" in node1
    assert (run / "pretrain" / "logs" / "rank1.log").is_file()
    _no_leftovers(client, run)


def test_failing_node_is_named_and_every_container_removed(engine, tmp_path):
    client, env = engine
    ssh_host = f"ssh://{env['KIT_TEST_SSH_HOST']}"
    r = kit(*TINY, "--stage", "pretrain", "--max-steps", "4", "--no-save", "--nodes", "2", "--gpus", "1",
            "--hosts", f"local,{ssh_host}", *_ssh_args(env), "--image", env["KIT_TEST_KIT_IMAGE"], *_memlock(),
            "--results", str(tmp_path), env={"KIT_INJECT_FAULT": "1:2"}, timeout=900)  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert f"failed on node 1 ({ssh_host}), rank 1" in out, r.stdout
    assert "injected fault" in out and "stopped node 0 (local)" in out
    run = only_run(tmp_path)
    assert json.loads((run / "run.json").read_text())["containers"]["env"]["KIT_INJECT_FAULT"] == "1:2"
    assert status_rows(run)[-1]["state"] == "failed"
    _no_leftovers(client, run)


def test_sigterm_removes_the_containers_and_resume_finishes(engine, tmp_path):
    """SIGTERM (a scheduler's time limit, `timeout`, `docker stop`) takes Ctrl-C's path: every container removed."""
    client, env = engine
    proc = start_kit(*TINY, "--stage", "pretrain", "--no-save", "--image", env["KIT_TEST_KIT_IMAGE"], *_memlock(),
                     "--results", str(tmp_path))  # fmt: skip
    run = wait_for_step(tmp_path, "pretrain", 10, proc)  # past the checkpoint at step 8
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, out
    assert status_rows(run)[-1]["state"] == "interrupted" and status_rows(run)[-1]["detail"] == {"signal": "SIGTERM"}
    _no_leftovers(client, run)
    r = kit("resume", str(run), timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    facts = [e["value"] for e in events(run / "pretrain" / "events.log") if e["key"] == "kit_facts"]
    assert facts[-1]["resumed_from_step"] == 8
    _no_leftovers(client, run)


def test_missing_image_and_dry_run_start_nothing(engine, tmp_path):
    client, env = engine
    before = {c.id for c in client.containers.list(all=True)}
    r = kit(*TINY, "--image", "kit-test/absent:0", "--results", str(tmp_path))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "node 0 (local): the engine has no image kit-test/absent:0" in " ".join(r.stderr.split())
    assert not any(tmp_path.iterdir())  # refused before the run directory was made
    r = kit(*TINY, "--nodes", "2", "--gpus", "1", "--hosts", "local,local", "--dry-run",
            "--image", env["KIT_TEST_KIT_IMAGE"], *_memlock(), "--results", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert "pretrain, node 1 (local): python -m torch.distributed.run --nnodes=2 --node-rank=1" in out
    assert "rendezvous kit-node0:29500" in out and "user " in out
    assert not [p for p in tmp_path.iterdir() if (p / "run.json").exists()]
    assert {c.id for c in client.containers.list(all=True)} == before


def test_engine_that_cannot_raise_memlock_says_so(engine, tmp_path):
    """Where the engine's own memlock limit is finite (CI), kit's default (unlimited) fails with the fix."""
    client, env = engine
    if not _memlock():
        pytest.skip("this engine may raise memlock to unlimited")
    r = kit(*TINY, "--image", env["KIT_TEST_KIT_IMAGE"], "--results", str(tmp_path))
    assert r.returncode == 3, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert "error setting rlimit" in out and "LimitMEMLOCK=infinity" in out and "--ulimit memlock=BYTES" in out
    run = only_run(tmp_path)
    _no_leftovers(client, run)


def _host_network_pair(client, env, tmp_path: Path, addr: str, port: int, mounts=None) -> containers.ContainerPlan:
    """Two 'hosts' that are this engine twice, on host networking: what the preflight sees across real hosts."""
    nodes = []
    for i in range(2):
        n = containers.Node(i, "local", "unix:///var/run/docker.sock", client=client)
        nodes.append(n)
    results = tmp_path / "runs"
    results.mkdir(exist_ok=True)
    return containers.ContainerPlan(
        image=env["KIT_TEST_KIT_IMAGE"], image_id=client.images.get(env["KIT_TEST_KIT_IMAGE"]).id, nodes=nodes,
        gpus_per_node=1, use_gpus=False, network="host", master_addr=addr, master_port=port,
        user=f"{os.getuid()}:{os.getgid()}", env={},
        mounts=containers.mounts_for(results, []) if mounts is None else mounts,
        ulimits=containers.parse_ulimits([a.removeprefix("--ulimit=") for a in _memlock()]),
    )  # fmt: skip


def test_preflight_across_hosts(engine, tmp_path):
    """Shared results, a free rendezvous port and node 0 reachable: each checked, each failure named."""
    import socket

    from kit.launchers.base import free_port

    client, env = engine
    results = tmp_path / "runs"
    port = free_port()
    containers.preflight(_host_network_pair(client, env, tmp_path, "127.0.0.1", port), results, timeout=20)
    assert not list(results.glob(".kit-preflight-*")) and containers.leftovers(client, "preflight") == []

    with socket.socket() as busy:  # something else holds the port on node 0's host
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the check's own connection left TIME_WAIT
        busy.bind(("", port))
        busy.listen(1)
        with pytest.raises(containers.ContainerError, match=rf"node 0 \(local\): port {port} is taken"):
            containers.preflight(_host_network_pair(client, env, tmp_path, "127.0.0.1", port), results, timeout=5)

    with pytest.raises(containers.ContainerError, match=r"node 1 \(local\) cannot reach node 0 at 192\.0\.2\.1"):
        containers.preflight(_host_network_pair(client, env, tmp_path, "192.0.2.1", free_port()), results, timeout=5)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    unshared = _host_network_pair(client, env, tmp_path, "127.0.0.1", free_port(),
                                  mounts=containers.mounts_for(elsewhere, []))  # fmt: skip
    with pytest.raises(containers.ContainerError, match=r"node 0 \(local\) does not see .* as this host does"):
        containers.preflight(unshared, results, timeout=5)
    assert containers.leftovers(client, "preflight") == []


def test_a_need_the_image_cannot_meet_is_refused_before_anything_starts(engine, tmp_path):
    """model.kernels = liger needs liger-kernel (env/stacks.toml): an image without kit's stack labels cannot show
    it has it, so the run is refused (exit 2) naming the key, the image and the fixes; no run directory is made."""
    client, env = engine
    image = env["KIT_TEST_DOCKER_IMAGE"]  # busybox: no kit labels at all
    r = kit(*TINY, "--image", image, "--set", "model.kernels=liger", "--stage", "pretrain", "--results", str(tmp_path))
    flat = " ".join(r.stderr.split())
    assert r.returncode == 2, r.stdout + r.stderr
    assert "model.kernels = 'liger'" in flat and "liger-kernel" in flat and image in flat, flat
    assert "kit build --stack current" in flat and "--set model.kernels=none" in flat, flat
    assert not list(tmp_path.glob("*/run.json")) if tmp_path.exists() else True


def test_the_current_stack_image_gets_past_the_need_check(engine, tmp_path):
    """The CPU test image carries the current stack's labels (.ci/test-image.sh): the same request passes the check
    (a dry run asks it of the real engine's labels, as a launch does); test_one_node_end_to_end_in_a_container
    checks that a run in that image records the stack."""
    client, env = engine
    image = env["KIT_TEST_KIT_IMAGE"]
    labels = client.images.get(image).labels or {}
    assert labels.get("kit.build.stack") == "current", labels
    r = kit(*TINY, "--image", image, "--set", "model.kernels=liger", "--stage", "pretrain", "--dry-run",
            "--results", str(tmp_path))  # fmt: skip
    out = " ".join(r.stdout.split())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "image stack: current (lock " in out and "it meets the config's needs (model.kernels = 'liger' needs " \
        "liger-kernel)" in out, out
    assert "would stop here" not in out
    busybox = kit(*TINY, "--image", env["KIT_TEST_DOCKER_IMAGE"], "--set", "model.kernels=liger", "--dry-run",
                  "--results", str(tmp_path))  # fmt: skip
    assert "a launch would stop here (exit 2): the config sets model.kernels = 'liger'" in " ".join(busybox.stdout.split())
    assert not list(tmp_path.glob("*/run.json")) if tmp_path.exists() else True
