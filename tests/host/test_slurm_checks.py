"""`kit check-host --launcher slurm` against a real Slurm cluster on loopback (.ci/slurm.sh: slurmctld and two
slurmd on this host, partition `kit`, CPU nodes), found through SLURM_CONF.

Every check is asked of that cluster: passing as it is, and failing for a partition it lacks, more nodes than it
has, a GPU config on its CPU nodes, pyxis missing, a controller that does not answer (a copy of its slurm.conf
with a closed port) and a SLURM_CONF that names no file. pyxis itself cannot be built here (no network, no
enroot); its stand-in is a real SPANK plugin, compiled in the test, that registers pyxis's --container-image
option, so srun lists it as it lists pyxis's. The GRES parser and the node-state rules run on recorded strings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kit import case as cases
from kit.checks import Check
from kit.checks import slurm as sl
from kit.commands import check_host as ch

from .services import ENV_FILE, unavailable

CASE = cases.get("llava1_5_7b")
KIT = Path(sys.executable).with_name("kit")
runner = CliRunner()


def cfg(name: str = "tiny"):
    return cases.load_config(CASE, name)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _from_env_file() -> dict[str, str]:
    out: dict[str, str] = {}
    if ENV_FILE.is_file():
        for line in ENV_FILE.read_text().splitlines():
            m = re.fullmatch(r"\s*(?:export\s+)?(\w+)='?([^']*)'?\s*", line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    """SLURM_CONF (this process's, else the services env file's), the partition and node count; the
    controller must answer `scontrol ping`."""
    saved = _from_env_file()
    conf = os.environ.get("SLURM_CONF") or saved.get("SLURM_CONF")
    if not conf:
        unavailable(f"SLURM_CONF is not set and {ENV_FILE} names no Slurm cluster (.ci/slurm.sh writes it)")
    if shutil.which("scontrol") is None:
        unavailable("the Slurm client commands are not installed")
    env = {**os.environ, "SLURM_CONF": conf}
    try:
        ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=20)
        answers = ping.returncode == 0 and " is UP" in ping.stdout
    except subprocess.TimeoutExpired:
        answers = False
    if not answers:
        unavailable(f"the Slurm controller of SLURM_CONF={conf} does not answer `scontrol ping`")
    return {**env, "KIT_TEST_SLURM_PARTITION": os.environ.get("KIT_TEST_SLURM_PARTITION")
            or saved.get("KIT_TEST_SLURM_PARTITION", "kit"),
            "KIT_TEST_SLURM_NODES": os.environ.get("KIT_TEST_SLURM_NODES") or saved.get("KIT_TEST_SLURM_NODES", "1")}


def part(env: dict[str, str]) -> str:
    return env["KIT_TEST_SLURM_PARTITION"]


def nodes(env: dict[str, str]) -> int:
    return int(env["KIT_TEST_SLURM_NODES"])


def conf_copy(env: dict[str, str], tmp_path: Path, **settings: str) -> str:
    """The cluster's slurm.conf with some top-level settings replaced; the copy's path."""
    text = Path(env["SLURM_CONF"]).read_text()
    for key, value in settings.items():
        text, n = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
        if n == 0:
            text = f"{key}={value}\n" + text
    path = tmp_path / "slurm.conf"
    path.write_text(text)
    return str(path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the real cluster


def test_every_check_passes_on_the_real_cluster(cluster):
    checks = sl.slurm_checks(cfg("tiny"), part(cluster), nodes(cluster), containers=False, env=cluster)
    assert [c.name for c in checks] == ["client commands", "controller", "partition", "GPUs per node",
                                        "node count", "containers"]
    assert [c.status for c in checks] == ["ok"] * 5 + ["skip"], [(c.name, c.detail) for c in checks]
    got = by_name(checks)
    assert " is UP" in got["controller"].detail and cluster["SLURM_CONF"] in got["controller"].detail
    assert re.search(r"\d+\.\d+", got["controller"].data["version"])
    assert f"{nodes(cluster)} of {nodes(cluster)} nodes take jobs" in got["partition"].detail
    assert "no GPUs needed" in got["GPUs per node"].detail
    assert got["node count"].data == {"asked": nodes(cluster), "partition_nodes": nodes(cluster),
                                      "usable": nodes(cluster), "max_nodes": None}
    assert all(not c.fix for c in checks)


def test_the_default_partition_when_none_is_given(cluster):
    got = by_name(sl.slurm_checks(cfg("tiny"), None, 1, containers=False, env=cluster))
    assert got["partition"].status == "ok"
    assert got["partition"].detail.startswith(f"partition {part(cluster)} (the default):")


def test_the_real_nodes_as_sinfo_lists_them(cluster):
    found = sl.read_nodes(part(cluster), cluster)
    assert len(found) == nodes(cluster)
    assert all(n.usable and n.gres == "(null)" and n.gpus == 0 and n.cpus >= 1 for n in found)
    [p] = [p for p in sl.read_partitions(cluster) if p.name == part(cluster)]
    assert p.default and p.state == "UP" and p.total_nodes == nodes(cluster) and p.max_nodes is None


def test_a_partition_the_cluster_lacks_fails_naming_those_it_has(cluster):
    checks = sl.slurm_checks(cfg("tiny"), "no-such-part", 1, containers=False, env=cluster)
    got = by_name(checks)
    assert got["partition"].status == "fail"
    assert "no partition 'no-such-part'" in got["partition"].detail and part(cluster) in got["partition"].detail
    assert "--partition" in got["partition"].fix
    assert "GPUs per node" not in got and "node count" not in got  # nothing to count on


def test_more_nodes_than_the_partition_has_fails(cluster):
    n = nodes(cluster)
    got = by_name(sl.slurm_checks(cfg("tiny"), part(cluster), n + 1, containers=False, env=cluster))
    row = got["node count"]
    assert row.status == "fail"
    assert row.detail == f"{n + 1} nodes asked; partition {part(cluster)} has {n}"
    assert f"--nodes {n} or fewer" in row.fix
    assert got["partition"].status == "ok"


def test_a_gpu_config_on_the_cpu_nodes_fails(cluster):
    got = by_name(sl.slurm_checks(cfg("A800x1x8"), part(cluster), 1, containers=False, env=cluster))
    row = got["GPUs per node"]
    assert row.status == "fail"
    assert "needs 8 GPUs per node" in row.detail and "(null)" in row.detail
    assert "--partition whose nodes have 8 GPUs" in row.fix and "Gres=gpu:8" in row.fix
    assert row.data["need_per_node"] == 8 and row.data["fitting"] == []
    assert got["node count"].status == "ok"


def test_pyxis_missing_when_containers_are_asked(cluster):
    got = by_name(sl.slurm_checks(cfg("tiny"), part(cluster), 1, containers=True, env=cluster))
    assert got["pyxis"].status == "fail"
    assert "no --container-image" in got["pyxis"].detail
    assert "Slurm's own --container" in got["pyxis"].detail  # 22.05's OCI option is not mistaken for pyxis
    assert "--native" in got["pyxis"].fix and "plugstack.conf" in got["pyxis"].fix
    enroot = shutil.which("enroot")
    assert got["enroot"].status == ("ok" if enroot else "warn")
    if not enroot:
        assert f"srun -p {part(cluster)} -N1 enroot version" in got["enroot"].fix


SPANK_STAND_IN = r"""
/* Registers pyxis's srun option, as pyxis does; the layout of struct spank_option is Slurm's <slurm/spank.h>. */
struct spank_option { char *name; char *arginfo; char *usage; int has_arg; int val; int (*cb)(int, const char *, int); };
const char plugin_name[] = "pyxis";
const char plugin_type[] = "spank";
const unsigned int plugin_version = (%d << 16) | (%d << 8);
static int take(int val, const char *optarg, int remote) { return 0; }
struct spank_option spank_options[] = {
    {"container-image", "[USER@][REGISTRY#]IMAGE[:TAG]|PATH", "[pyxis] the image to use", 1, 0, take},
    {0, 0, 0, 0, 0, 0},
};
int slurm_spank_init(void *sp, int ac, char **av) { return 0; }
"""


def test_pyxis_found_when_srun_lists_its_option(cluster, tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the SPANK plugin that stands in for pyxis")
    version = subprocess.run(["scontrol", "--version"], env=cluster, capture_output=True, text=True).stdout
    major, minor = map(int, re.search(r"(\d+)\.(\d+)", version).groups())
    (tmp_path / "p.c").write_text(SPANK_STAND_IN % (major, minor))
    so = tmp_path / "spank_pyxis.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(tmp_path / "p.c")], check=True)
    (tmp_path / "plugstack.conf").write_text(f"required {so}\n")
    env = {**cluster, "SLURM_CONF": conf_copy(cluster, tmp_path, PlugStackConfig=str(tmp_path / "plugstack.conf"))}
    got = by_name(sl.slurm_checks(cfg("tiny"), part(cluster), 1, containers=True, env=env))
    assert got["pyxis"].status == "ok", got["pyxis"].detail
    assert got["pyxis"].data["option"].startswith("--container-image=[USER@][REGISTRY#]IMAGE")
    assert got["controller"].status == "ok"  # the copy names the same controller


def test_a_controller_that_does_not_answer_fails_fast_naming_slurm_conf(cluster, tmp_path):
    conf = conf_copy(cluster, tmp_path, SlurmctldPort=str(closed_port()))
    started = time.monotonic()
    checks = sl.slurm_checks(cfg("tiny"), part(cluster), 1, env={**cluster, "SLURM_CONF": conf})
    assert time.monotonic() - started < 15
    assert [c.name for c in checks] == ["client commands", "controller"]
    row = checks[1]
    assert row.status == "fail" and "is DOWN" in row.detail and f"SLURM_CONF={conf}" in row.detail
    assert "slurmctld" in row.fix and conf in row.fix


def test_a_slurm_conf_that_names_no_file(tmp_path):
    """No cluster needed: the file is checked before scontrol, which would retry it for 60 s."""
    missing = tmp_path / "absent" / "slurm.conf"
    checks = sl.slurm_checks(cfg("tiny"), env={**os.environ, "SLURM_CONF": str(missing)}, timeout=5)
    row = by_name(checks)["controller"]
    assert row.status == "fail" and row.detail == f"SLURM_CONF={missing}: no such file"
    assert "export SLURM_CONF=" in row.fix


def test_client_commands_missing(tmp_path):
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    [row] = sl.slurm_checks(cfg("tiny"), env={"PATH": str(tmp_path)})
    assert row.status == "fail" and row.detail == "not on PATH: sbatch, scontrol, sinfo"
    assert "slurm-client" in row.fix and "module load slurm" in row.fix
    assert row.data["found"]["srun"] == str(tmp_path / "srun")


# ---------------------------------------------------------------- GRES strings and node states

# Recorded from real clusters' `sinfo -o %G` / `scontrol show node` (GresUsed for the IDX forms).
RECORDED = [
    ("(null)", 0, []),  # this test cluster's nodes
    ("gpu:8(S:0-3)", 8, []),
    ("gpu:a100:8(S:0-1)", 8, ["a100"]),
    ("gpu:A100:8(S:0-1)", 8, ["A100"]),
    ("gpu:A100_80GB:8(S:0-1),shard:A100_80GB:640(S:0-1)", 8, ["A100_80GB"]),
    ("gpu:2", 2, []),
    ("tmp:844G", 0, []),
    ("gpu:1080ti:1(IDX:0),gpu:980gtx:1(IDX:1)", 2, ["1080ti", "980gtx"]),
    ("gpu:titanx:0(IDX:N/A)", 0, ["titanx"]),
    ("gpu:a100_3g.20gb:2", 2, ["a100_3g.20gb"]),
]


@pytest.mark.parametrize(("text", "gpus", "types"), RECORDED)
def test_gres_recorded_strings(text, gpus, types):
    assert sl.gpu_count(text) == gpus
    assert sl.gpu_types(text) == types


def test_gres_items_in_full():
    assert sl.parse_gres("gpu:A100_80GB:8(S:0-1),shard:A100_80GB:640(S:0-1)") == [
        sl.Gres("gpu", "A100_80GB", 8, "S:0-1"), sl.Gres("shard", "A100_80GB", 640, "S:0-1")]
    assert sl.parse_gres("tmp:844G") == [sl.Gres("tmp", None, 844 * 1024**3)]
    # A socket list holds commas of its own; `gpu` alone is one GPU; the TRES spelling has a gres/ prefix.
    assert sl.parse_gres("gpu:tesla:2(S:0,2),nic:1") == [sl.Gres("gpu", "tesla", 2, "S:0,2"), sl.Gres("nic", None, 1)]
    assert sl.gpu_count("gpu") == 1 and sl.gpu_count("gres/gpu:h100:4") == 4
    assert sl.parse_gres("") == [] and sl.parse_gres("N/A") == [] and sl.parse_gres(None) == []


@pytest.mark.parametrize("bad", ["gpu:a100:8(S:0-1", ":8", "8:gpu"])
def test_gres_that_fits_no_form_is_named(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        sl.parse_gres(bad)


# `sinfo -h -N -o '%N|%T|%G|%c|%E'` on a GPU partition: Slurm's long state names with their flag characters.
GPU_PART = """\
gpu01|drained|gpu:a100:8(S:0-1)|128|Kill task failed
gpu02|down*|gpu:a100:8(S:0-1)|128|Not responding
gpu03|mixed|gpu:a100:8(S:0-1)|128|none
gpu04|idle~|gpu:a100:8(S:0-1)|128|none
gpu05|idle|gpu:a100:4(S:0)|64|none
"""
# This test cluster's real `scontrol show partition -o` line, renamed and with MaxNodes=2.
PART_LINE = ("PartitionName=gpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A "
             "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=2 "
             "MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=gpu[01-05] PriorityJobFactor=1 "
             "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
             "TotalCPUs=512 TotalNodes=5 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
             "MaxMemPerNode=UNLIMITED TRES=cpu=512,mem=2G,node=5,billing=512")


def gpu_partition() -> sl.Partition:
    [p] = sl.parse_partitions(PART_LINE)
    p.nodes = sl.parse_nodes(GPU_PART)
    return p


def test_node_states_and_partition_fields():
    p = gpu_partition()
    assert (p.name, p.default, p.state, p.max_nodes, p.total_nodes) == ("gpu", False, "UP", 2, 5)
    assert p.fields["TRES"] == "cpu=512,mem=2G,node=5,billing=512"
    assert [(n.name, n.usable) for n in p.nodes] == [("gpu01", False), ("gpu02", False), ("gpu03", True),
                                                     ("gpu04", True), ("gpu05", True)]
    assert p.nodes[0].reason == "Kill task failed" and p.nodes[2].reason == ""
    row, _ = sl.partition_check([p], "gpu")
    assert row.status == "ok" and "3 of 5 nodes take jobs" in row.detail
    assert "gpu01 drained (Kill task failed)" in row.detail and "gpu02 down* (Not responding)" in row.detail


def test_gpus_per_node_counts_only_nodes_with_enough():
    p = gpu_partition()
    a800x2x8 = cfg("A800x2x8")
    ok = sl.gpu_check(a800x2x8, p, 2)  # gpu03 and gpu04 take jobs with 8 GPUs
    assert ok.status == "ok" and ok.data["fitting_up"] == ["gpu03", "gpu04"] and ok.data["types"] == ["a100"]
    waits = sl.gpu_check(a800x2x8, p, 3)  # gpu01-04 have 8, but two are out
    assert waits.status == "warn" and "only 2 of them take jobs now" in waits.detail
    short = sl.gpu_check(a800x2x8, p, 5)  # gpu05 has 4
    assert short.status == "fail" and "partition gpu has 4" in short.detail


def test_max_nodes_per_job_and_nodes_out_of_service():
    p = gpu_partition()
    assert sl.node_count_check(p, 2).status == "ok"
    over = sl.node_count_check(p, 3)
    assert over.status == "fail" and "at most 2 per job (MaxNodes)" in over.detail and "--nodes 2" in over.fix
    p.max_nodes = None
    waits = sl.node_count_check(p, 4)
    assert waits.status == "warn" and "3 of partition gpu's 5 take jobs now" in waits.detail
    assert sl.node_count_check(p, 6).status == "fail"


def test_a_partition_whose_nodes_are_all_out():
    [p] = sl.parse_partitions(PART_LINE)
    p.nodes = sl.parse_nodes("\n".join(GPU_PART.splitlines()[:2]))
    row, _ = sl.partition_check([p], "gpu")
    assert row.status == "fail" and "none of its 2 nodes takes jobs" in row.detail
    assert "scontrol update nodename=gpu01,gpu02 state=resume" in row.fix and "sinfo -R" in row.fix
    down = sl.parse_partitions(PART_LINE.replace("State=UP", "State=DOWN"))
    row, _ = sl.partition_check(down, None)
    assert row.status == "fail" and "no default one" in row.detail  # gpu is not the default


# ---------------------------------------------------------------- the command


def app() -> typer.Typer:
    a = typer.Typer()
    a.command("check-host")(ch.check_host)
    a.command("other")(lambda: None)  # two commands: Typer keeps `check-host` as a subcommand
    return a


def test_check_host_launcher_slurm_json(cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_CONF", cluster["SLURM_CONF"])
    n = nodes(cluster)
    r = runner.invoke(app(), ["check-host", "--launcher", "slurm", "--partition", part(cluster), "--config", "tiny",
                              "--nodes", str(n), "--native", "--results", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["launcher"] == "slurm" and doc["ready"] is True
    column = f"slurm:{part(cluster)}"
    assert list(doc["hosts"]) == [column]
    rows = {(c["group"], c["name"]): c["status"] for c in doc["hosts"][column]}
    assert rows[("slurm", "node count")] == "ok" and rows[("slurm", "containers")] == "skip"
    assert rows[("system", "disk (results)")] == "ok" and ("gpu", "GPU count") not in rows  # no login-host GPUs

    r = runner.invoke(app(), ["check-host", "--launcher", "slurm", "--config", "A800x1x8", "--nodes", str(n + 1),
                              "--results", str(tmp_path)])
    assert r.exit_code == 1
    out = " ".join(r.output.split())
    assert "GPUs per node (slurm):" in out and f"{n + 1} nodes asked" in out and "pyxis" in out
    assert "fix: pass --nodes" in out


def test_check_host_slurm_usage_errors():
    r = runner.invoke(app(), ["check-host", "--launcher", "pbs"])
    assert r.exit_code == 2 and "unknown --launcher 'pbs'; use one of: local, slurm" in r.output
    r = runner.invoke(app(), ["check-host", "--launcher", "slurm", "--hosts", "a,b"])
    assert r.exit_code == 2 and "--hosts is for --launcher local" in r.output
    r = runner.invoke(app(), ["check-host", "--partition", "kit"])
    assert r.exit_code == 2 and "add `--launcher slurm`" in r.output


def test_native_leaves_the_docker_checks_out_locally():
    args = ch.CheckArgs(config="tiny", native=True)
    [row] = ch.docker_host_checks(ch.CheckContext(args, cfg("tiny")))
    assert (row.group, row.status) == ("docker", "skip") and "--native" in row.detail
    assert "--native" in args.remote_argv()
    assert "--native" not in ch.CheckArgs(config="tiny").remote_argv()


def test_the_kit_command_itself(cluster, tmp_path):
    """The installed entry point, in a subprocess: the option is wired into `kit` as users run it."""
    kit = [str(KIT)] if KIT.exists() else [sys.executable, "-m", "kit.cli"]
    proc = subprocess.run([*kit, "check-host", "--launcher", "slurm", "--config", "tiny", "--native",
                           "--results", str(tmp_path), "--json"], env=cluster, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == {"slurm": "ok"}
