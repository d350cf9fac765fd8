"""`kit run --launcher slurm` on a real Slurm cluster on loopback (.ci/slurm.sh: slurmctld and two slurmd, `kit1`
and `kit2`, on this host, partition `kit`, found through SLURM_CONF).

The tiny case runs as a batch job: a two-node world of size 2 over gloo (one CPU rank per node, one srun task per
node, each its node's torchrun), followed to the result table. A rank that raises is named with its node; scancel
marks the run interrupted and `kit resume` submits it again and finishes it at the same step count. pyxis and
enroot are not packaged here: the srun lines they would receive are checked as text, and accepted by srun through a
SPANK plugin that registers pyxis's options (tests/host/test_slurm_checks.py builds it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kit.launchers import slurm as sl
from kit.run.dir import RunDir
from kit.run.events import load_stage

from ..host.services import ENV_FILE, services_env, unavailable
from .helpers import kit, only_run, start_kit, status_rows, wait_for_step

pytestmark = pytest.mark.slow
TINY = ("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--launcher", "slurm", "--native")


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    """The environment that reaches the cluster: SLURM_CONF from this process or the services file; the
    controller must answer and have two nodes idle."""
    conf = os.environ.get("SLURM_CONF") or (services_env().get("SLURM_CONF") if ENV_FILE.is_file() else None)
    if not conf or shutil.which("sbatch") is None:
        unavailable("no Slurm cluster (SLURM_CONF unset or sbatch missing; .ci/slurm.sh starts one)")
    env = {**os.environ, "SLURM_CONF": conf}
    env.pop("SLURM_JOB_ID", None)
    ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=30)
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        unavailable(f"the Slurm controller of {conf} does not answer: {ping.stdout}{ping.stderr}")
    os.environ["SLURM_CONF"] = conf  # for kit's own calls in this process (sl.hostnames, sl.job_info)
    return env


def squeue_empty(env: dict[str, str], run: Path, timeout: float = 120) -> None:
    """Wait until no job of the run is pending or running."""
    deadline = time.time() + timeout
    while time.time() < deadline and sl.live_job(run) is not None:
        time.sleep(1)
    assert sl.live_job(run) is None


@pytest.fixture(scope="module")
def two_node_run(cluster, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    results = tmp_path_factory.mktemp("slurm-runs")
    r = kit(*TINY, "--nodes", "2", "--gpus", "1", "--max-steps", "3", "--eval-limit", "4", "--results", str(results),
            env=cluster, timeout=1200)  # fmt: skip
    return only_run(results), r


def test_a_two_node_world_runs_every_stage_and_ends_in_the_table(two_node_run):
    run, r = two_node_run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "slurm job" in r.stdout and "RUNNING on kit[1-2]" in r.stdout
    assert "seed A800 1x8" in r.stdout  # the result table, as after any launcher
    for stage in ("pretrain", "finetune", "eval"):
        assert f"{stage}: finished" in r.stdout or stage in r.stdout
    meta = json.loads((run / "run.json").read_text())
    assert meta["launcher"] == "slurm" and meta["slurm"]["job_id"].isdigit()
    script = run / meta["slurm"]["script"]
    assert script.is_file() and sl.script_digest(script) == meta["slurm"]["script_sha256"]
    text = script.read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=1" in text and "kit.cli slurm-job" in text
    allocated = [row["detail"] for row in status_rows(run) if row["state"] == "allocated"]
    assert allocated and allocated[0]["nodes"] == ["kit1", "kit2"] and allocated[0]["job_id"] == meta["slurm"]["job_id"]
    env = json.loads((run / "environment.json").read_text())
    assert env["slurm"]["nodes"] == ["kit1", "kit2"]
    # one srun task per node, each its node's torchrun with one rank: ranks 0 and 1 on kit1 and kit2
    step = (run / "slurm" / "pretrain.sh").read_text()
    assert '--node-rank="$SLURM_PROCID"' in step and "--nnodes=2" in step and "--nproc-per-node=1" in step
    assert "--master-addr=127.0.0.1" in step  # kit1's NodeAddr: node names need not resolve
    for k in (0, 1):
        assert (run / "pretrain" / "logs" / f"launcher-node{k}.log").is_file()
    facts = load_stage(run / "pretrain")
    assert [s["step"] for s in facts.steps] == [1, 2, 3]
    world = {json.loads(line[9:])["value"].get("world_size") for line in (run / "pretrain" / "events.log").read_text()
             .splitlines() if line.startswith(":::MLLOG ") and '"kit_run_start"' in line}  # fmt: skip
    assert world <= {2, None}
    assert (run / "slurm" / f"job-{meta['slurm']['job_id']}.out").is_file()


def test_the_report_reads_a_slurm_run_as_any_other(two_node_run):
    run, _ = two_node_run
    r = kit("report", str(run), "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows  # the same table, from the run directory alone


def test_a_failing_rank_is_named_with_its_node(cluster, tmp_path):
    env = {**cluster, "KIT_INJECT_FAULT": "1:2"}  # rank 1 (on kit2) raises at step 2
    r = kit(*TINY, "--nodes", "2", "--gpus", "1", "--stage", "pretrain", "--max-steps", "4", "--results",
            str(tmp_path), env=env, timeout=900)  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "pretrain failed" in out
    flat = " ".join(out.split())
    assert "host kit2, rank 1" in flat and "injected fault" in flat, out
    run = only_run(tmp_path)
    assert status_rows(run)[-1]["state"] == "failed"
    squeue_empty(cluster, run)


def test_scancel_marks_the_run_interrupted_and_resume_finishes_it(cluster, tmp_path):
    proc = start_kit(*TINY, "--stage", "pretrain", "--max-steps", "12", "--results", str(tmp_path), env=cluster)
    run = wait_for_step(tmp_path, "pretrain", 2, proc)
    job = json.loads((run / "run.json").read_text())["slurm"]["job_id"]
    # a second kit may not submit the same run while its job lives
    r = kit("resume", str(run), env=cluster)
    assert r.returncode == 2 and f"still slurm job {job}" in " ".join(r.stderr.split()), r.stderr
    subprocess.run(["scancel", job], env=cluster, check=True)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0, out
    assert "interrupted" in out and f"kit resume {run}" in " ".join(out.split()).replace("\n", ""), out
    rows = status_rows(run)
    assert rows[-1]["stage"] is None and rows[-1]["state"] == "interrupted"
    assert ("pretrain", "interrupted") in [(row["stage"], row["state"]) for row in rows]
    squeue_empty(cluster, run)
    r = kit("resume", str(run), env=cluster, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [s["step"] for s in load_stage(run / "pretrain").steps] == list(range(1, 13))
    submitted = [row["detail"]["job_id"] for row in status_rows(run) if row["state"] == "submitted"]
    assert len(submitted) == 2 and submitted[0] == job and sl.job_ids(run) == submitted


def test_no_follow_returns_with_the_job_id_and_the_job_runs_on(cluster, tmp_path):
    t0 = time.time()
    r = kit(*TINY, "--stage", "pretrain", "--max-steps", "2", "--no-follow", "--results", str(tmp_path), env=cluster)
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path)
    job = json.loads((run / "run.json").read_text())["slurm"]["job_id"]
    flat = " ".join(r.stdout.split())
    assert f"submitted batch job {job}" in flat and f"scancel {job}" in flat and f"job-{job}.out" in flat
    assert "pretrain: finished" not in r.stdout and time.time() - t0 < 60  # it did not wait for the job
    squeue_empty(cluster, run, timeout=300)
    assert RunDir(run).stage_states() == {None: "finished", "pretrain": "finished"}
    assert "pretrain: finished" in (run / "slurm" / f"job-{job}.out").read_text()


def test_the_job_s_time_limit_marks_the_run_interrupted_not_finished(cluster, tmp_path):
    """rank 0 stops making progress at step 2 (and the hang watch is set far off): the job meets its one-minute
    limit, Slurm sends SIGTERM, and the run reads interrupted, with Slurm's TIMEOUT named; resumable."""
    env = {**cluster, "KIT_INJECT_HANG": "0:2"}
    r = kit(*TINY, "--stage", "pretrain", "--max-steps", "4", "--time", "1", "--hang-timeout", "3600", "--results",
            str(tmp_path), env=env, timeout=400)  # fmt: skip
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode != 0, out
    assert "TIMEOUT (its time limit" in out and "marked interrupted" in out and "kit resume" in out, out
    run = only_run(tmp_path)
    rows = status_rows(run)
    assert rows[-1]["stage"] is None and rows[-1]["state"] == "interrupted", rows[-3:]
    assert "#SBATCH --time=1" in (run / "slurm" / "job.sbatch").read_text()
    squeue_empty(cluster, run)


def test_a_partition_slurm_refuses_leaves_no_run_behind(cluster, tmp_path):
    r = kit(*TINY, "--stage", "pretrain", "--partition", "no-such-partition", "--results", str(tmp_path), env=cluster)
    assert r.returncode == 3, r.stdout + r.stderr
    flat = " ".join(r.stderr.split())
    assert "sbatch" in flat and "fix:" in flat and "partition" in flat.lower()
    assert not [p for p in tmp_path.iterdir() if (p / "run.json").exists()] if tmp_path.exists() else True


def test_hostnames_and_node_addresses_come_from_slurm(cluster):
    assert sl.hostnames("kit[1-2]") == ["kit1", "kit2"]
    assert sl.hostnames("gpu[07-08],dgx3") == ["gpu07", "gpu08", "dgx3"]
    assert sl.node_address("kit1") == "127.0.0.1"


# ---------------------------------------------------------------- the generated scripts, as text


META = {
    "case": "llava1_5_7b", "config": {"name": "A800x2x8"}, "nodes": 2, "gpus": 8, "results": "/shared/runs",
    "data": "/shared/llava", "models": "/shared/models", "eval_data": "/shared/llava/MMMU", "model_dir": None,
    "slurm": {"partition": "gpu", "account": "bench", "time": "04:00:00", "sbatch_args": ["--qos=high"],
              "container_image": "/shared/kit-llava.sqsh"},
}  # fmt: skip


def test_the_batch_script_asks_for_whole_nodes_and_their_gpus(tmp_path):
    run = tmp_path / "runs" / "r1"
    text = sl.batch_script(run, META, use_gpus=True)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --exclusive", "#SBATCH --gres=gpu:8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=bench", "#SBATCH --time=04:00:00", "#SBATCH --qos=high",
                 f"#SBATCH --output={run}/slurm/job-%j.out"):  # fmt: skip
        assert line in text.splitlines(), line
    assert text.splitlines()[-1].endswith(f"-m kit.cli slurm-job {run}")
    assert "--gres" not in sl.batch_script(run, META, use_gpus=False)
    # the GRES is the vendor's (kit/vendors): Ascend's NPUs are counted as npu; the CPU is scheduled by CPUs alone
    assert "#SBATCH --gres=npu:8" in sl.batch_script(run, META, use_gpus=True, gres="npu").splitlines()
    assert "--gres" not in sl.batch_script(run, META, use_gpus=True, gres=None)
    r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr


def test_the_pyxis_lines_mount_every_directory_at_its_own_path(tmp_path):
    stage_dir = tmp_path / "run" / "finetune"
    cmd = sl.stage_srun(META, stage_dir, tmp_path / "run" / "slurm" / "finetune.sh")
    assert cmd[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert "--container-image=/shared/kit-llava.sqsh" in cmd and "--no-container-mount-home" in cmd
    mounts = next(c for c in cmd if c.startswith("--container-mounts=")).split("=", 1)[1].split(",")
    assert mounts == ["/shared/runs:/shared/runs", "/shared/llava:/shared/llava:ro", "/shared/models:/shared/models:ro",
                      "/shared/llava/MMMU:/shared/llava/MMMU:ro"]  # fmt: skip
    native = {**META, "slurm": {**META["slurm"], "container_image": None}}
    assert not [c for c in sl.stage_srun(native, stage_dir, Path("s.sh")) if c.startswith("--container")]


def test_the_step_script_wires_each_node_to_the_first(tmp_path):
    """Two nodes: each srun task (SLURM_PROCID 0 and 1) starts torchrun with its node rank and the first node's
    address; run through bash with a python that prints its argv, as each node would."""
    text = sl.step_script("python3", "cases.llava1_5_7b.train", 2, 8, "10.0.0.7", 29500,
                          ["--stage", "pretrain", "--run-dir", "/shared/runs/r 1"])  # fmt: skip
    script = tmp_path / "step.sh"
    script.write_text(text.replace("exec python3 ", "exec python3 -c 'import sys, json; print(json.dumps(sys.argv))' "))
    seen = []
    for procid in ("0", "1"):
        r = subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_PROCID": procid}, capture_output=True,
                           text=True, check=True)  # fmt: skip
        seen.append(json.loads(r.stdout))
    for rank, argv in enumerate(seen):
        assert f"--node-rank={rank}" in argv and "--nnodes=2" in argv and "--nproc-per-node=8" in argv
        assert "--master-addr=10.0.0.7" in argv and "--master-port=29500" in argv
        assert argv[-2:] == ["--run-dir", "/shared/runs/r 1"]  # quoted through the shell


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--launcher", "slurm"], "--container-image IMAGE"),
        (["--launcher", "slurm", "--native", "--container-image", "x.sqsh"], "exclude each other"),
        (["--launcher", "slurm", "--native", "--hosts", "a,b"], "Docker container path"),
        (["--native", "--partition", "gpu"], "belong(s) to --launcher slurm"),
        (["--launcher", "slurm", "--native", "--time", "four hours"], "--time 'four hours'"),
        (["--launcher", "pbs", "--native"], "--launcher 'pbs'"),
    ],
)
def test_usage_errors_name_the_flag_and_the_fix(tmp_path, args, said):
    r = kit("run", "llava1_5_7b", "--config", "tiny", "--synthetic", *args, "--results", str(tmp_path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert said in " ".join(r.stderr.split()), r.stderr
    assert not list(tmp_path.glob("*/run.json"))


def test_slurm_job_outside_an_allocation_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    r = kit("slurm-job", str(tmp_path), env=env)
    assert r.returncode == 2 and "inside the run's Slurm job" in " ".join(r.stderr.split())


def test_ended_words_name_slurm_s_reason():
    assert "TIMEOUT (its time limit, 00:10:00)" in sl.ended_words({"JobState": "TIMEOUT", "TimeLimit": "00:10:00",
                                                                    "Reason": "None", "ExitCode": "0:15"}, "7")  # fmt: skip
    assert "no longer known" in sl.ended_words(None, "7")
    assert re.search(r"CANCELLED \(scancel\)", sl.ended_words({"JobState": "CANCELLED", "Reason": "None"}, "7"))


def test_a_dry_run_prints_the_batch_script_and_every_step(tmp_path):
    r = kit("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--launcher", "slurm", "--nodes", "2", "--gpus",
            "1", "--container-image", "/shared/kit.sqsh", "--partition", "gpu", "--dry-run", "--results", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "#SBATCH --nodes=2" in r.stdout and "#SBATCH --partition=gpu" in r.stdout
    for stage in ("pretrain", "finetune", "eval"):
        assert f"{stage}: srun --nodes=2 --ntasks=2" in r.stdout
    assert "--container-image=/shared/kit.sqsh" in r.stdout and '--node-rank="$SLURM_PROCID"' in r.stdout
    assert not list(tmp_path.glob("*/run.json"))
