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

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kit import nvml, rundir
from kit.checks import system
from kit.cli import app
from kit.commands import run as run_cmd

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
        "Library Not Found (no NVIDIA driver loaded on this host?) — run on a GPU host, or use --config tiny on a CPU"
    )
    assert empty(tmp_path / "runs")
    # The default config (A800x1x8) on the container path with this host's engine is counted the same way.
    r = invoke("run", "llava1_5_7b", "--synthetic", "--results", str(tmp_path / "runs"))
    assert r.exit_code == 3 and "config A800x1x8 needs 8 GPUs per node (A800); this host has none" in text(r)
    assert empty(tmp_path / "runs")


def test_a_dry_run_says_the_gpu_check_would_stop_the_launch(tmp_path, no_nvml, roomy):
    r = invoke("run", "llava1_5_7b", "--config", "H200x1x1", "--synthetic", "--native", "--dry-run",
               "--results", str(tmp_path))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "dry run: a launch would stop here (exit 3): config H200x1x1 needs 1 GPU per node (H200)" in text(r)
    assert empty(tmp_path)


def test_a_recorded_h200x2_host_passes_the_gpu_check(tmp_path, monkeypatch, roomy):
    monkeypatch.setenv("KIT_NVML_RECORDING", str(RECORDING))
    req, cfg = run_cmd.plan("llava1_5_7b", "H200x1x1", "all", synthetic=True, native=True, results=tmp_path)
    assert run_cmd.gpu_problem(req, cfg) is None
    r = invoke("run", "llava1_5_7b", "--config", "H200x1x1", "--synthetic", "--native", "--dry-run",
               "--results", str(tmp_path), KIT_NVML_RECORDING=str(RECORDING))  # fmt: skip
    assert r.exit_code == 0 and "would stop" not in r.output, r.output
    req, cfg = run_cmd.plan("llava1_5_7b", "H200x1x1", "pretrain", gpus=4, synthetic=True, native=True,
                            results=tmp_path, overrides=["pretrain.micro_batch=8"])  # fmt: skip
    assert run_cmd.gpu_problem(req, cfg) == (
        "config H200x1x1 at --gpus 4 needs 4 GPUs per node (H200); this host has 2 (NVIDIA H200) — run on a host "
        "with 4, or pass --gpus 2 (or a config for 2: kit configs)"
    )


def test_the_gpu_check_counts_only_this_hosts_gpus(no_nvml, monkeypatch):
    tiny, _ = run_cmd.plan("llava1_5_7b", "tiny", "all", synthetic=True, native=True)
    assert run_cmd.gpu_problem(tiny, _) is None  # a CPU config
    local, cfg = run_cmd.plan("llava1_5_7b", "H200x1x1", "all", synthetic=True)  # containers on the local engine
    assert "needs 1 GPU per node" in run_cmd.gpu_problem(local, cfg)
    remote, cfg = run_cmd.plan("llava1_5_7b", "H200x1x1", "all", synthetic=True, hosts="gpu1")
    assert run_cmd.gpu_problem(remote, cfg) is None  # another host's GPUs: kit check-host --hosts counts them
    monkeypatch.setenv("DOCKER_HOST", "ssh://gpu1")
    assert run_cmd.gpu_problem(local, cfg) is None


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


def test_bad_records_within_skip_bad_records_go_on_to_the_launch(tmp_path, real_layout, roomy, monkeypatch):
    data, models = real_layout
    f = pretrain_json(data)
    f.write_text(json.dumps([GOOD, {"id": "b"}, GOOD]))
    started = []
    monkeypatch.setattr(run_cmd, "start", lambda req, cfg, console: started.append(req) or (tmp_path, 0))
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
    real_write = rundir.write_json

    def full_disk(path, obj, **kw):
        real_write(path, obj, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir, "write_json", full_disk)
    with pytest.raises(OSError):
        run_cmd.start(req, cfg, Console(file=io.StringIO()))
    assert empty(tmp_path)
    monkeypatch.setattr(rundir, "write_json", real_write)

    def refused(run, console, **kw):
        raise RuntimeError("the launcher could not start")

    monkeypatch.setattr(run_cmd, "execute", refused)
    with pytest.raises(RuntimeError):
        run_cmd.start(req, cfg, Console(file=io.StringIO()))
    assert empty(tmp_path)


def test_a_run_that_got_further_is_marked_failed_not_removed(tmp_path, monkeypatch):
    req, cfg = tiny_req(tmp_path)

    def probe_then_crash(run, console, **kw):
        (run / "logs").mkdir()
        (run / "logs" / "probe.log").write_text("...")
        raise RuntimeError("boom")

    monkeypatch.setattr(run_cmd, "execute", probe_then_crash)
    with pytest.raises(RuntimeError):
        run_cmd.start(req, cfg, Console(file=io.StringIO()))
    (run,) = tmp_path.iterdir()
    assert rundir.stage_states(run) == {None: "failed"}


# ---------------------------------------------------------------- kit resume --python/--data/--models


@pytest.fixture
def stopped_run(tmp_path, monkeypatch):
    """A real run directory (start() with execute stubbed): tiny, native, synthetic, stopped after `created`."""
    req, cfg = tiny_req(tmp_path / "runs")
    monkeypatch.setattr(run_cmd, "execute", lambda run, console, **kw: 1)
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
    monkeypatch.setattr(run_cmd, "execute", lambda run, console, **kw: seen.append(kw) or 0)
    r = invoke("resume", str(stopped_run), "--python", sys.executable)
    assert r.exit_code == 0, r.output
    assert seen == [{"resumed": True, "overrides": {"python": sys.executable}, "follow": True}]
    # What execute() writes: the "resumed" line carries them; the request is run.json overlaid, in order.
    first = json.loads((stopped_run / "run.json").read_text())["python"]
    rundir.append_status(stopped_run, "resumed", detail={"python": "/opt/a/python", "models": str(tmp_path)})
    rundir.append_status(stopped_run, "failed", detail="stage pretrain")
    rundir.append_status(stopped_run, "resumed")  # a resume without corrections keeps the earlier ones
    rundir.append_status(stopped_run, "resumed", detail={"python": "/opt/b/python"})
    meta = rundir.effective_request(stopped_run)
    assert (meta["python"], meta["models"]) == ("/opt/b/python", str(tmp_path))
    assert json.loads((stopped_run / "run.json").read_text())["python"] == first  # never rewritten
