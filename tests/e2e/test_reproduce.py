"""`make reproduce` runs kit data verify, check-host, kit build, kit run and kit report in that order and stops at
the first failure.

An empty data directory fails the data verify: nothing after it may start, and its report says what to fix. On a
machine without GPUs (CI's), check-host fails on verified data the same way.
"""

from __future__ import annotations

import subprocess

from .helpers import ROOT


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=600)


def test_order_of_the_steps():
    out = make("-n", "reproduce", "DATA=/d", "MODELS=/m").stdout
    order = [out.index(s) for s in ("kit data verify", "kit check-host", "kit build", "kit run llava1_5_7b", "kit report")]
    assert order == sorted(order), out
    native = make("-n", "reproduce", "DATA=/d", "MODELS=/m", "NATIVE=1").stdout
    assert "kit build" not in native and "--native" in native


def test_needs_data_and_models():
    r = make("reproduce")
    assert r.returncode != 0 and "make reproduce needs DATA=<data root> MODELS=<checkpoint dir>" in r.stdout


def test_stops_at_the_first_failure_with_its_fix(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "models").mkdir()
    results = tmp_path / "runs"
    r = make("reproduce", f"DATA={tmp_path / 'data'}", f"MODELS={tmp_path / 'models'}", f"RESULTS={results}")
    assert r.returncode != 0
    assert "kit data verify" in r.stdout and "kit check-host" not in r.stdout
    assert "kit build" not in r.stdout and "kit run" not in r.stdout
    assert "fix" in r.stdout.lower()
    assert not (results / "builds").exists() and not any(p.name != "builds" for p in results.glob("*/run.json"))
