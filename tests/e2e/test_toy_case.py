"""The case seam, proven: a second case (tests/toycase/kit_toy: a linear model on two CPU ranks and a yes/no quiz)
registers the way a third party's would, by entry point, and goes through `kit run`, `report`, `submit`, `verify`
and `compare` with no change to kit/.

The entry point is real: a distribution's metadata (`kit_toy-0.dist-info/entry_points.txt`) on the path of every
kit process, which importlib.metadata reads as it reads an installed package's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..tinyruns import ROOT, SYSTEM_TOML

TOY = ROOT / "tests" / "toycase"


@pytest.fixture(scope="module")
def toy_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a host where the toy case is installed: its package and its entry point on the path."""
    site = tmp_path_factory.mktemp("toy-site")
    dist = site / "kit_toy-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kit-toy\nVersion: 0\n")
    (dist / "entry_points.txt").write_text('[kit.cases]\nkit_toy = kit_toy.plugin:CASE\n')
    path = os.pathsep.join([str(site), str(TOY), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}


def kit(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def toy_runs(toy_env, tmp_path_factory) -> list[Path]:
    runs = []
    for i in range(2):
        results = tmp_path_factory.mktemp(f"toy-runs{i}")
        r = kit(toy_env, "run", "kit_toy", "--config", "tiny", "--synthetic", "--native", "--results", str(results))
        assert r.returncode == 0, r.stdout + r.stderr
        runs += [p for p in results.iterdir() if (p / "run.json").is_file()]
    return runs


def test_the_toy_case_is_registered_beside_the_first(toy_env):
    r = kit(toy_env, "configs", "kit_toy")
    assert r.returncode == 0 and "tiny" in r.stdout and "fit ZeRO" in " ".join(r.stdout.split()), r.stdout
    r = kit(toy_env, "run", "kit_toy", "--config", "tiny", "--native", "--dry-run")
    assert r.returncode == 2 and "the toy case runs on its own points only: pass --synthetic" in r.stderr, r.stderr


def test_run_and_report(toy_env, toy_runs):
    run = toy_runs[0]
    meta = json.loads((run / "run.json").read_text())
    assert meta["case"] == "kit_toy" and meta["stages"] == ["fit", "quiz"]
    assert (run / "fit" / "events.log").is_file() and (run / "quiz" / "scores" / "summary.json").is_file()
    r = kit(toy_env, "report", str(run), "--format", "json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    fit = summary["stages"]["fit"]
    assert fit["state"] == "finished" and fit["tokens_per_s_per_gpu"] > 0 and fit["steps_logged"] == 12
    assert 0 <= summary["quiz_acc"] <= 1
    r = kit(toy_env, "report", str(run))
    assert r.returncode == 0 and "toy quiz" in r.stdout, r.stdout


def test_submit_verify_compare(toy_env, toy_runs, tmp_path):
    system = tmp_path / "system.toml"
    system.write_text(SYSTEM_TOML)
    out = tmp_path / "subs"
    r = kit(toy_env, "submit", *map(str, toy_runs), "--system", str(system), "--out", str(out), "--allow-synthetic")
    assert r.returncode == 0, r.stdout + r.stderr
    tarball = out / "Acme_Compute.tar.gz"
    r = kit(toy_env, "verify", str(tarball), "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["ok"], [f for f in rep["findings"] if f["status"] == "fail"]
    r = kit(toy_env, "compare", str(tarball), "--reference", "--format", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["case"] == "kit_toy" and data["reference"]["label"]
    assert any(e["kind"] == "submission" and not e.get("unverified") for e in data["entries"])
