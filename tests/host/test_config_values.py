"""A non-finite number in the config (`--set pretrain.lr=nan`) is refused up front, as `lr=-1` is: exit 2, the key
and the value named, nothing created. It used to pass the check and the dry run, and a real run failed 21 s later
in AdamW."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cases.llava1_5_7b import config as case_config
from kit.cli import app

runner = CliRunner()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_non_finite_lr_is_refused_before_anything_is_created(tmp_path: Path, value: str, dry_run: bool):
    results = tmp_path / "runs"
    argv = ["run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--results", str(results),
            "--set", f"pretrain.lr={value}", *(["--dry-run"] if dry_run else [])]  # fmt: skip
    r = runner.invoke(app, argv, env={"COLUMNS": "1000"})
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    shown = repr(float(value))
    assert f"error: {case_config.CONFIG_DIR / 'tiny.toml'} with --set pretrain.lr={value}: " \
           f"pretrain.lr must be a finite number, got {shown} (nan and inf are refused)" in text, text
    assert not results.exists() or not any(results.iterdir())


def test_a_negative_lr_is_refused_the_same_way(tmp_path: Path):
    r = runner.invoke(app, ["run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--dry-run",
                            "--results", str(tmp_path / "runs"), "--set", "pretrain.lr=-1"])  # fmt: skip
    assert r.exit_code == 2 and "pretrain.lr must be positive, got -1.0" in " ".join(r.output.split())
