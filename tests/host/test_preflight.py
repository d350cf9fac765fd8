"""`kit run`'s checks before anything is created or launched: GPUs, disk, --results, --python, the record files,
--synthetic with --data; a failure before the first stage leaves no run behind; `kit resume`'s corrections."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kit.checks import system
from kit.cli import app
from kit.errors import UsageError
from kit.launchers import launcher_class
from kit.run import stages
from kit.run.dir import RunDir
from kit.run.request import RunRequest, resolve
from kit.vendors.nvidia import nvml


def _plan(case: str, config: str, stage: str, **kw):
    """A request resolved as `kit run` resolves it (kit/run/request.py)."""
    req = RunRequest(case=case, config=config, stage=stage, **kw)
    return resolve(req, launcher_class(req))


# The pieces of `kit run` these tests call, by the names they had when they lived in one module.
run_cmd = SimpleNamespace(plan=_plan, device_problem=stages.device_problem, disk_need=stages.disk_need,
                          preflight=stages.preflight, record_check=stages.record_check,
                          resume_overrides=stages.resume_overrides, start=stages.start,
                          UsageError=UsageError)  # fmt: skip

runner = CliRunner()
RECORDING = Path(__file__).resolve().parents[1] / "fixtures" / "hosts" / "nvml-h200x2.json"
TINY = ["run", "llava1_5_7b", "--config", "tiny", "--native"]
GOOD = {"id": "a", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]}


def invoke(*args: str, **env: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "1000", **env})


def text(r) -> str:
    return " ".join(r.output.split())


def error(r) -> str:
    """The error line (a records check prints what it reads first)."""
    return next(line for line in r.output.splitlines() if line.startswith("error: "))


@pytest.fixture
def no_nvml(monkeypatch):
    """A host without GPUs, whatever this one has (and this host's Docker engine)."""
    monkeypatch.delenv("KIT_NVML_RECORDING", raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)

    def unavailable(*_a, **_k):
        raise nvml.NVMLUnavailable("NVML cannot start: NVML Shared Library Not Found (no NVIDIA driver loaded on this host?)")

    monkeypatch.setattr(nvml, "open_nvml", unavailable)


@pytest.fixture
def roomy(monkeypatch):
    """Plenty of disk under --results, so a test sees only the check it is about."""
    monkeypatch.setattr(system, "free_bytes", lambda p: (Path(p), 10**15))


def empty(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


# ---------------------------------------------------------------- GPUs


def test_a_gpu_config_on_a_host_without_gpus_exits_3_and_creates_nothing(tmp_path, no_nvml, roomy):
    r = invoke("run", "llava1_5_7b", "--config", "H200x1x1", "--synthetic", "--native", "--results", str(tmp_path / "runs"))
    assert r.exit_code == 3, r.output
    assert text(r) == (
        "error: config H200x1x1 needs 1 GPU per node (H200); this host has none: NVML cannot start: NVML Shared "
        "Library Not Found (no NVIDIA driver loaded on this host?) — run on a host with NVIDIA GPUs, or use --config tiny on a CPU"
    )
    assert empty(tmp_path / "runs")
    # The default config (A800x1x8) on the container path with this host's engine is counted the same way.
    r = invoke("run", "llava1_5_7b", "--synthetic", "--results", str(tmp_path / "runs"))
    assert r.exit_code == 3 and "config A800x1x8 needs 8 GPUs per node (A800); this host has none" in text(r)
    assert empty(tmp_path / "runs")


def test_a_dry_run_says_the_gpu_check_would_stop_the_launch(tmp_path, no_nvml, roomy):
    r = invoke("run", "llava1_5_7b", "--config", "H200x1x1", "--synthetic", "--native", "--dry-run",
               "--results", str(tmp_path))  # fmt: skip
    assert r.exit_code == 3, r.output  # the launch's own code
    assert "dry run: a launch would stop here (exit 3): config H200x1x1 needs 1 GPU per node (H200)" in text(r)
    assert r.output.splitlines()[-1] == "dry run: a launch would exit 3 at this check"
    assert empty(tmp_path)


def test_a_recorded_h200x2_host_passes_the_gpu_check(tmp_path, monkeypatch, roomy):
    monkeypatch.setenv("KIT_NVML_RECORDING", str(RECORDING))
    req, cfg = run_cmd.plan("llava1_5_7b", "H200x1x1", "all", synthetic=True, native=True, results=tmp_path)
    assert run_cmd.device_problem(req, cfg) is None
    r = invoke("run", "llava1_5_7b", "--config", "H200x1x1", "--synthetic", "--native", "--dry-run",
               "--results", str(tmp_path), KIT_NVML_RECORDING=str(RECORDING))  # fmt: skip
    assert r.exit_code == 0 and "would stop" not in r.output, r.output
    assert r.output.splitlines()[-1] == "dry run: the checks pass; a launch would go (exit 0)"
    req, cfg = run_cmd.plan("llava1_5_7b", "H200x1x1", "pretrain", gpus=4, synthetic=True, native=True,
                            results=tmp_path, overrides=["pretrain.micro_batch=8"])  # fmt: skip
    assert run_cmd.device_problem(req, cfg) == (
        "config H200x1x1 at --gpus 4 needs 4 GPUs per node (H200); this host has 2 (NVIDIA H200) — run on a host "
        "with 4, or pass --gpus 2 (or a config for 2: kit configs)"
    )


def test_the_gpu_check_counts_only_this_hosts_gpus(no_nvml, monkeypatch):
    tiny, _ = run_cmd.plan("llava1_5_7b", "tiny", "all", synthetic=True, native=True)
    assert run_cmd.device_problem(tiny, _) is None  # a CPU config
    local, cfg = run_cmd.plan("llava1_5_7b", "H200x1x1", "all", synthetic=True)  # containers on the local engine
    assert "needs 1 GPU per node" in run_cmd.device_problem(local, cfg)
    remote, cfg = run_cmd.plan("llava1_5_7b", "H200x1x1", "all", synthetic=True, hosts="gpu1")
    assert run_cmd.device_problem(remote, cfg) is None  # another host's GPUs: kit check-host --hosts counts them
    monkeypatch.setenv("DOCKER_HOST", "ssh://gpu1")
    assert run_cmd.device_problem(local, cfg) is None


# ---------------------------------------------------------------- dry runs: the whole plan, then every stop


def stops(r) -> list[str]:
    """A dry run's stop lines, in order (a stop's `fix:` line joined to it)."""
    out, lines = [], r.output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("dry run: a launch would stop here"):
            fix = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("fix: ") else ""
            out.append(" ".join(f"{line} {fix}".split()))
    return out


def test_the_issues_three_dry_runs_agree(tmp_path, no_nvml, roomy, monkeypatch):
    """`--nodes 1 --gpus 8 --dry-run` without --data/--models, with --synthetic in containers without an engine,
    and with --native: each prints the whole plan, then every check a launch would stop on, once each, with its
    exit code, and exits with the code of the first (the one a launch would exit with)."""
    sock = tmp_path / "absent.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    results = tmp_path / "runs"
    base = ["run", "llava1_5_7b", "--nodes", "1", "--gpus", "8", "--dry-run", "--results", str(results)]
    gpu = ("dry run: a launch would stop here (exit 3): config A800x1x8 needs 8 GPUs per node (A800); this host has "
           "none: NVML cannot start")  # fmt: skip
    engine = (f"dry run: a launch would stop here (exit 3): node 0 (local): cannot reach the Docker engine at "
              f"unix://{sock}: the Docker engine is not running: no socket at {sock} fix: start the daemon")  # fmt: skip

    r = invoke(*base)
    print(r.output)
    assert r.exit_code == 2, r.output  # the first stop's: a launch refuses the missing paths first
    assert "pretrain, node 0 (local): python -m torch.distributed.run --nnodes=1 --node-rank=0 --nproc-per-node=8" in r.output
    assert "eval, node 0 (local): python -m torch.distributed.run" in r.output and "mount " in r.output
    found = stops(r)
    assert found[0] == ("dry run: a launch would stop here (exit 2): --data and --models needed for a run on real "
                        "data and weights (or pass --synthetic)")  # fmt: skip
    assert found[1].startswith(gpu) and found[2].startswith(engine) and len(found) == 3, found  # MMMU: DATA/MMMU
    assert r.output.splitlines()[-1] == "dry run: a launch would exit 2 at the first of these 3 checks"

    r = invoke(*base, "--synthetic")
    print(r.output)
    assert r.exit_code == 3, r.output
    assert "pretrain, node 0 (local): python -m torch.distributed.run" in r.output and "--synthetic" in r.output
    assert "image the newest `kit build` under --results (id not looked up)" in r.output
    assert "image stack: not read (no engine or image to read it from: see below)" in r.output
    found = stops(r)
    assert len(found) == 2 and found[0].startswith(gpu) and found[1].startswith(engine), found

    r = invoke(*base, "--synthetic", "--native")
    print(r.output)
    assert r.exit_code == 3, r.output
    assert "pretrain: " in r.output and "--nproc-per-node=8" in r.output
    assert len(stops(r)) == 1 and stops(r)[0].startswith(gpu)
    assert r.output.count("would stop here") == 1
    assert r.output.splitlines()[-1] == "dry run: a launch would exit 3 at this check"
    assert not results.exists()


def test_a_dry_run_to_unreachable_ssh_hosts_names_ssh_s_reason_once_and_the_real_option(tmp_path, roomy):
    """`kit run --nodes 2 --gpus 8 --hosts a,b --dry-run --synthetic`: the plan for both nodes, then node 0's
    engine, with ssh's own words (no "cannot reach ... cannot reach ...") and `kit check-host --hosts`, an option
    that exists."""
    hosts = "gpu-a.invalid,gpu-b.invalid"  # .invalid never resolves (RFC 6761)
    r = invoke("run", "llava1_5_7b", "--nodes", "2", "--gpus", "8", "--hosts", hosts, "--dry-run", "--synthetic",
               "--results", str(tmp_path / "runs"))  # fmt: skip
    print(r.output)
    assert r.exit_code == 3, r.output
    assert "pretrain, node 1 (gpu-b.invalid): python -m torch.distributed.run --nnodes=2 --node-rank=1" in r.output
    assert "--master-addr=gpu-a.invalid --master-port=29500" in r.output
    assert "node 1: gpu-b.invalid -> ssh://gpu-b.invalid (engine ?)" in r.output
    assert stops(r) == [
        "dry run: a launch would stop here (exit 3): node 0 (gpu-a.invalid): cannot reach the Docker engine at "
        "ssh://gpu-a.invalid: ssh: Could not resolve hostname gpu-a.invalid: Name or service not known "
        "fix: `kit check-host --hosts gpu-a.invalid` says what is wrong with the host; ssh must reach it in batch "
        "mode with a known host key, and its user must be allowed to run docker (`ssh gpu-a.invalid docker info`)"
    ]
    assert r.output.count("cannot reach the Docker engine") == 1 and "--host " not in r.output
    # the help that fix names exists
    assert "--hosts" in runner.invoke(app, ["check-host", "--help"], env={"COLUMNS": "200"}).output
    assert not (tmp_path / "runs").exists()


def test_the_dry_run_exit_code_is_documented():
    r = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "1000"})
    assert "then every check a launch would stop on; start nothing, write nothing. Exit 0 when a launch would go, " \
           "else the code the launch would exit with." in " ".join(r.output.replace("│", " ").split())
    doc = " ".join((Path(__file__).resolve().parents[2] / "docs" / "running.md").read_text().split())
    assert "exits 0 when a launch would go" in doc


# ---------------------------------------------------------------- disk under --results


def test_too_little_disk_for_one_checkpoint_exits_3(tmp_path, monkeypatch):
    monkeypatch.setattr(system, "free_bytes", lambda p: (tmp_path, 1 << 20))
    r = invoke(*TINY, "--synthetic", "--results", str(tmp_path / "runs"))
    assert r.exit_code == 3, r.output
    assert text(r).startswith(f"error: --results {tmp_path / 'runs'}: 1 MiB free at {tmp_path}, but the run needs at "
                              "least 3 MiB for one checkpoint and the model (a whole run about 130 MiB: ")  # fmt: skip
    assert "free space there, or pass --results DIR on a larger disk" in text(r)
    assert empty(tmp_path / "runs")


def test_less_disk_than_a_whole_run_warns_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(system, "free_bytes", lambda p: (tmp_path, 50 << 20))
    req, cfg = run_cmd.plan("llava1_5_7b", "tiny", "all", synthetic=True, native=True, results=tmp_path)
    out = io.StringIO()
    run_cmd.preflight(req, cfg, Console(file=out, width=1000))
    assert f"warning: 50 MiB free at {tmp_path}; a whole run needs about 130 MiB" in out.getvalue()


def test_a_run_that_saves_nothing_large_is_not_held_to_the_disk_need(tmp_path):
    for stage, kw in (("pretrain", {}), ("train", {"save": False, "max_steps": 30})):
        req, cfg = run_cmd.plan("llava1_5_7b", "H200x1x1", stage, synthetic=True, native=True, **kw)
        assert run_cmd.disk_need(req, cfg) is None, stage  # no finetune checkpoint (every 500 steps), no model
    req, cfg = run_cmd.plan("llava1_5_7b", "H200x1x1", "train", synthetic=True, native=True, save=False)
    assert run_cmd.disk_need(req, cfg)[1] > 100e9  # a whole epoch checkpoints


# ---------------------------------------------------------------- --results and --python: exit 2, one line


def test_results_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("")
    r = invoke(*TINY, "--synthetic", "--results", str(f))
    assert r.exit_code == 2 and text(r) == (
        f"error: --results {f} is a file, not a directory; pass a directory (it is created when missing)")
    r = invoke(*TINY, "--synthetic", "--results", str(f / "runs"))
    assert r.exit_code == 2 and f"--results {f / 'runs'} is under {f}, a file, not a directory" in text(r)
    assert "Traceback" not in r.output and os.listdir(tmp_path) == ["afile"]


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this user cannot write: chmod 0o500, or (root, whom modes do not stop) a read-only tmpfs."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o500)
        yield d
        d.chmod(0o700)
        return
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)],
                                                         capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("root ignores file modes, and no read-only tmpfs can be mounted here")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_results_that_cannot_be_written_is_refused(read_only_dir):
    r = invoke(*TINY, "--synthetic", "--results", str(read_only_dir / "runs"))
    assert r.exit_code == 2, r.output
    assert text(r) == (f"error: --results {read_only_dir / 'runs'}: cannot create run directories there ({read_only_dir}, "
                       "where it would be created): not writable by this user; pass a directory you can write to")
    assert not (read_only_dir / "runs").exists()


def test_a_python_that_cannot_run_is_refused(tmp_path):
    fix = "pass --python PATH: the Python of an environment with the case's packages (torch, deepspeed)"
    plain = tmp_path / "plain"
    plain.write_text("")
    link = tmp_path / "python"
    link.symlink_to(tmp_path / "gone")
    for python, why in ((tmp_path / "nope" / "python", "does not exist"), (plain, "is not executable"),
                        (link, f"is a broken symlink (to {tmp_path / 'gone'}, which does not exist)"),
                        (tmp_path, "is a directory, not a Python executable")):  # fmt: skip
        r = invoke(*TINY, "--synthetic", "--results", str(tmp_path / "runs"), "--python", str(python))
        assert r.exit_code == 2 and text(r) == f"error: --python {python} {why}; {fix}", r.output
    r = invoke(*TINY, "--synthetic", "--results", str(tmp_path / "runs"), "--python", "no-such-python3")
    assert r.exit_code == 2 and "--python no-such-python3 is not a command on PATH" in text(r)
    assert not (tmp_path / "runs").exists()


def test_synthetic_with_data_is_refused(tmp_path):
    r = invoke(*TINY, "--synthetic", "--data", str(tmp_path), "--results", str(tmp_path / "runs"))
    assert r.exit_code == 2 and text(r) == (
        f"error: --synthetic generates its own data set; drop --data, or drop --synthetic to train on {tmp_path}")
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- the record files


@pytest.fixture
def real_layout(tmp_path):
    """--data and --models directories; the record files are the test's."""
    data, models = tmp_path / "data", tmp_path / "models"
    (data / "LLaVA-Pretrain").mkdir(parents=True)
    models.mkdir()
    return data, models


def pretrain_json(data: Path) -> Path:
    return data / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json"


def real(data: Path, models: Path, tmp_path: Path, *args: str):
    return invoke(*TINY, "--stage", "pretrain", "--data", str(data), "--models", str(models),
                  "--results", str(tmp_path / "runs"), *args)  # fmt: skip


def test_a_truncated_record_file_fails_in_seconds_with_exit_2(tmp_path, real_layout, roomy):
    data, models = real_layout
    f = pretrain_json(data)
    f.write_text(json.dumps([GOOD, GOOD])[:-30])
    r = real(data, models, tmp_path)
    assert r.exit_code == 2, r.output
    assert f"checking the pretrain records: {f} (0 MiB)" in r.output
    assert error(r).startswith(f"error: {f}: not valid JSON (") and error(r).endswith(
        "; the file may be truncated: download it again")
    f.unlink()
    r = real(data, models, tmp_path)
    assert r.exit_code == 2 and text(r) == f"error: --data {data}: the pretrain records {f} are missing; download them there"
    assert not (tmp_path / "runs").exists()


def test_bad_records_are_named_by_index_and_id(tmp_path, real_layout, roomy):
    data, models = real_layout
    f = pretrain_json(data)
    gpt_first = {**GOOD, "id": "b", "conversations": GOOD["conversations"][::-1]}
    f.write_text(json.dumps([GOOD, gpt_first, GOOD, {"id": 7, "image": "c.jpg"}]))
    r = real(data, models, tmp_path)
    assert r.exit_code == 2, r.output
    assert error(r) == (
        f"error: {f}: 2 of 4 records cannot be used (plain template): record #1 (id 'b'): turns must alternate human, "
        "gpt, ... starting with human; turn 0 is gpt (LLaVA would silently drop a leading gpt turn); record #3 "
        "(id 7): missing 'conversations' (a non-empty list of {from, value} turns); fix or remove the record(s), or "
        "set data.skip_bad_records (--set data.skip_bad_records=N) to skip a counted few"
    )
    r = real(data, models, tmp_path, "--set", "data.skip_bad_records=1")
    assert r.exit_code == 2 and "2 of 4 records cannot be used (plain template, more than data.skip_bad_records = 1)" in error(r)
    assert not (tmp_path / "runs").exists()


def test_a_dry_run_checks_the_records_of_every_training_stage(tmp_path, real_layout, roomy):
    """A dry run reads the records as a launch would, and lists each stage's problem (exit 2), after the plan."""
    data, models = real_layout
    pretrain_json(data).write_text(json.dumps([GOOD, {"id": "b"}]))
    finetune = data / "llava_v1_5_mix665k.json"
    finetune.write_text("[")
    r = invoke(*TINY, "--stage", "train", "--data", str(data), "--models", str(models), "--results",
               str(tmp_path / "runs"), "--dry-run")  # fmt: skip
    print(r.output)
    assert r.exit_code == 2, r.output
    plan_at = r.output.index("pretrain: ")
    found = stops(r)
    assert len(found) == 2 and r.output.index("would stop here") > plan_at, found
    assert found[0].startswith(f"dry run: a launch would stop here (exit 2): {pretrain_json(data)}: 1 of 2 records "
                               "cannot be used (plain template): record #1 (id 'b'): missing")  # fmt: skip
    assert found[1].startswith(f"dry run: a launch would stop here (exit 2): {finetune}: not valid JSON (")
    assert not (tmp_path / "runs").exists()


def test_bad_records_within_skip_bad_records_go_on_to_the_launch(tmp_path, real_layout, roomy, monkeypatch):
    data, models = real_layout
    f = pretrain_json(data)
    f.write_text(json.dumps([GOOD, {"id": "b"}, GOOD]))
    started = []
    monkeypatch.setattr(stages, "execute", lambda run, console, **kw: started.append(run) or 0)  # the launch itself
    r = real(data, models, tmp_path, "--set", "data.skip_bad_records=1")
    assert r.exit_code == 0 and len(started) == 1, r.output
    assert f"warning: {f}: 1 of 3 records will be skipped (data.skip_bad_records = 1): record #1 (id 'b'): missing" in text(r)


def test_only_the_stages_that_run_are_read(tmp_path, real_layout):
    data, models = real_layout
    pretrain_json(data).write_text(json.dumps([GOOD]))
    (data / "llava_v1_5_mix665k.json").write_text("[")  # finetune's: not read by a pretrain run
    req, cfg = run_cmd.plan("llava1_5_7b", "tiny", "pretrain", native=True, data=data, models=models)
    run_cmd.record_check(req, cfg, Console(file=io.StringIO()))
    req, cfg = run_cmd.plan("llava1_5_7b", "tiny", "train", native=True, data=data, models=models)
    with pytest.raises(run_cmd.UsageError, match="llava_v1_5_mix665k.json: not valid JSON"):
        run_cmd.record_check(req, cfg, Console(file=io.StringIO()))


# ---------------------------------------------------------------- no half-made run


def tiny_req(tmp_path):
    return run_cmd.plan("llava1_5_7b", "tiny", "pretrain", synthetic=True, native=True, results=tmp_path)


def test_a_failure_before_the_first_stage_leaves_no_run_directory(tmp_path, monkeypatch):
    req, cfg = tiny_req(tmp_path)
    from kit import io as kit_io

    real_write = kit_io.write_json

    def full_disk(path, obj, **kw):
        real_write(path, obj, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kit_io, "write_json", full_disk)
    with pytest.raises(OSError):
        run_cmd.start(req, cfg, Console(file=io.StringIO()))
    assert empty(tmp_path)
    monkeypatch.setattr(kit_io, "write_json", real_write)

    def refused(run, console, **kw):
        raise RuntimeError("the launcher could not start")

    monkeypatch.setattr(stages, "execute", refused)
    with pytest.raises(RuntimeError):
        run_cmd.start(req, cfg, Console(file=io.StringIO()))
    assert empty(tmp_path)


def test_a_run_that_got_further_is_marked_failed_not_removed(tmp_path, monkeypatch):
    req, cfg = tiny_req(tmp_path)

    def probe_then_crash(run, console, **kw):
        (run / "logs").mkdir()
        (run / "logs" / "probe.log").write_text("...")
        raise RuntimeError("boom")

    monkeypatch.setattr(stages, "execute", probe_then_crash)
    with pytest.raises(RuntimeError):
        run_cmd.start(req, cfg, Console(file=io.StringIO()))
    (run,) = tmp_path.iterdir()
    assert RunDir(run).stage_states() == {None: "failed"}


# ---------------------------------------------------------------- kit resume --python/--data/--models


@pytest.fixture
def stopped_run(tmp_path, monkeypatch):
    """A real run directory (start() with execute stubbed): tiny, native, synthetic, stopped after `created`."""
    req, cfg = tiny_req(tmp_path / "runs")
    monkeypatch.setattr(stages, "execute", lambda run, console, **kw: 1)
    run, _ = run_cmd.start(req, cfg, Console(file=io.StringIO()))
    monkeypatch.undo()
    return run


def test_resume_overrides_are_checked(stopped_run, tmp_path):
    with pytest.raises(run_cmd.UsageError, match=r"--python /nope/python does not exist"):
        run_cmd.resume_overrides(stopped_run, "/nope/python", None, None)
    with pytest.raises(run_cmd.UsageError, match=r"trains on the synthetic data set it generated"):
        run_cmd.resume_overrides(stopped_run, None, tmp_path, None)
    with pytest.raises(run_cmd.UsageError, match=r"--models /nope: no such directory"):
        run_cmd.resume_overrides(stopped_run, None, None, Path("/nope"))
    got = run_cmd.resume_overrides(stopped_run, sys.executable, None, tmp_path)
    assert got == {"python": sys.executable, "models": str(tmp_path.resolve())}
    r = invoke("resume", str(stopped_run), "--python", "/nope/python")
    assert r.exit_code == 2 and text(r).startswith("error: --python /nope/python does not exist")
    meta = json.loads((stopped_run / "run.json").read_text())
    meta["native"] = False
    (stopped_run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(run_cmd.UsageError, match="runs in containers, whose image holds the Python"):
        run_cmd.resume_overrides(stopped_run, sys.executable, None, None)


def test_resume_records_the_overrides_and_later_resumes_keep_them(stopped_run, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(stages, "execute", lambda run, console, **kw: seen.append(kw) or 0)
    r = invoke("resume", str(stopped_run), "--python", sys.executable)
    assert r.exit_code == 0, r.output
    assert seen == [{"resumed": True, "overrides": {"python": sys.executable}, "follow": True}]
    # What execute() writes: the "resumed" line carries them; the request is run.json overlaid, in order.
    first = json.loads((stopped_run / "run.json").read_text())["python"]
    RunDir(stopped_run).append_status("resumed", detail={"python": "/opt/a/python", "models": str(tmp_path)})
    RunDir(stopped_run).append_status("failed", detail="stage pretrain")
    RunDir(stopped_run).append_status("resumed")  # a resume without corrections keeps the earlier ones
    RunDir(stopped_run).append_status("resumed", detail={"python": "/opt/b/python"})
    meta = RunDir(stopped_run).effective_request()
    assert (meta["python"], meta["models"]) == ("/opt/b/python", str(tmp_path))
    assert json.loads((stopped_run / "run.json").read_text())["python"] == first  # never rewritten


def test_a_dry_run_over_the_loopback_sshd_quotes_ssh_s_refusal(tmp_path, roomy):
    """The real sshd of .ci/services.sh with the real engine behind it: without its known_hosts ssh refuses the
    host key, and the stop quotes ssh's own line (the SDK alone said "Remote end closed connection"); with it, the
    dry run reaches the engine over ssh:// and nothing would stop a launch."""
    import shlex

    from .services import docker_engine_env

    env = docker_engine_env()
    if not env.get("KIT_TEST_SSH_HOST"):
        from .services import unavailable

        unavailable("no KIT_TEST_SSH_HOST in the services env")
    host, image = env["KIT_TEST_SSH_HOST"], env["KIT_TEST_DOCKER_IMAGE"]
    base = ["run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--hosts", host, "--image", image, "--dry-run",
            "--results", str(tmp_path / "runs")]  # fmt: skip
    r = invoke(*base, "--ssh-option", f"-oUserKnownHostsFile={tmp_path / 'empty_known_hosts'}")
    print(r.output)
    assert r.exit_code == 3, r.output
    assert f"cannot reach the Docker engine at ssh://{host}: ssh: Host key verification failed." in text(r)
    assert f"fix: `kit check-host --hosts {host}`" in r.output
    opts = [f"--ssh-option={o}" for o in shlex.split(env["KIT_TEST_SSH_OPTIONS"])]
    r = invoke(*base, *opts)
    print(r.output)
    assert r.exit_code == 0, r.output
    assert f"node 0: {host} -> ssh://{host} (engine " in r.output and "(engine ?)" not in r.output
    assert r.output.splitlines()[-1] == "dry run: the checks pass; a launch would go (exit 0)"
    assert not (tmp_path / "runs").exists()
