"""cases/llava1_5_7b/ops.py without a compiler run (tests/e2e/test_shm_op.py compiles the op for real): whether
DeepSpeed was installed with the op built in, read from its install record; the estimate; a warm check's speed;
a stale lock of torch's removed, a live one waited for."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cases.llava1_5_7b import ops

ROOT = Path(__file__).resolve().parents[2]
# deepspeed/git_version_info_installed.py as DeepSpeed 0.19.8's setup.py writes it (this repository's .venv), and as
# DS_BUILD_SHM_COMM=1 makes it (the CPU test image: tests/image/deps.sh).
RECORD = """version='0.19.8'
git_hash='unknown'
git_branch='unknown'
installed_ops={{'deepspeed_not_implemented': False, 'async_io': False, 'deepspeed_ccl_comm': False, 'deepspeed_shm_comm': {built}, 'cpu_adagrad': False, 'cpu_adam': False, 'cpu_lion': False, 'fused_adam': False, 'pin_memory': False}}
accelerator_name='{accelerator}'
torch_info={{'version': '2.13', 'bf16_support': False, 'cuda_version': '0.0', 'nccl_version': '0.0', 'hip_version': '0.0'}}
"""


@pytest.mark.parametrize(("built", "accelerator", "want"), [(True, "cpu", True), (False, "cpu", False),
                                                            (True, "cuda", False)])  # fmt: skip
def test_prebuilt_reads_deepspeed_s_install_record(tmp_path, monkeypatch, built, accelerator, want):
    pkg = tmp_path / "deepspeed"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('the record is read as text, deepspeed never imported')\n")
    (pkg / "git_version_info_installed.py").write_text(RECORD.format(built=built, accelerator=accelerator))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "deepspeed", raising=False)
    importlib.invalidate_caches()
    assert ops.prebuilt() is want


def test_the_estimate_follows_the_cores_and_the_load():
    assert ops.estimate_s(cores=2, load=0.0) == pytest.approx(37.5)  # two compilers, one core each
    assert ops.estimate_s(cores=1, load=0.0) == pytest.approx(75.0)
    assert ops.estimate_s(cores=2, load=4.0) == pytest.approx(37.5 * 3)  # 2 cores shared by 6 runnable
    assert ops.estimate_s(cores=64, load=1.0) == pytest.approx(37.5)


def test_a_warm_check_is_quick_and_says_ready(tmp_path):
    """The venv's own op (make built it): the check every native run makes before its ranks start."""
    ext = Path(sys.executable).absolute().parent.parent / "torch_extensions"
    if not (ext / ops.OP / f"{ops.OP}.so").is_file():
        pytest.skip(f"{ext} holds no built op (a .venv made without make)")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "cases.llava1_5_7b.ops"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "TORCH_EXTENSIONS_DIR": str(ext)}, timeout=60)  # fmt: skip
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"op": ops.OP, "state": "ready", "where": str(ext / ops.OP)}
    assert r.stderr == f"{ops.OP}: built already in {ext / ops.OP}\n"
    assert took < 5, f"{took:.1f} s: the warm check must not import torch"


def test_a_stale_torch_lock_is_removed_and_a_live_one_waited_for(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "TORCH_LOCK_GRACE_S", 0.5)
    folder = tmp_path / ops.OP
    folder.mkdir()
    (folder / "lock").write_text("")
    t0 = time.monotonic()
    ops.clear_stale_torch_lock(folder)  # nobody builds there: a killed build's lock
    assert not (folder / "lock").exists() and time.monotonic() - t0 < 5
    (folder / "lock").write_text("")
    builder = subprocess.Popen(["sleep", "2"], cwd=folder)  # a process working in the folder: a live build
    try:
        t0 = time.monotonic()
        release = subprocess.Popen(["sh", "-c", f"sleep 1.5; rm -f {folder / 'lock'}"])
        ops.clear_stale_torch_lock(folder)
        assert time.monotonic() - t0 >= 1.0, "a live build's lock was not waited for"
        release.wait()
    finally:
        builder.wait()


def test_not_needed_is_remembered_per_deepspeed_and_host(tmp_path, monkeypatch, capsys):
    """Where DeepSpeed does not use the op (its CUDA accelerator; a DeepSpeed older than the op), the answer costs an
    import of DeepSpeed once; later checks read it back, unless the DeepSpeed, DS_ACCELERATOR or the host changed."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setattr(ops, "prebuilt", lambda: False)
    key = ops._not_needed_key()
    (tmp_path / ops.NOT_NEEDED).write_text(json.dumps({**key, "accelerator": "cuda"}))
    assert ops.ensure() == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["state"] == "not-needed"
    (tmp_path / ops.NOT_NEEDED).write_text(json.dumps({**key, "deepspeed": "0.0.1", "accelerator": "cuda"}))
    monkeypatch.setattr(ops, "_compile", lambda root: 7)  # an answer from another DeepSpeed: asked again
    assert ops.ensure() == 7
