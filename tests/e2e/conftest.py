"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import kit, only_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One uninterrupted tiny run (pretrain then finetune), shared by the tests that only read it."""
    results = tmp_path_factory.mktemp("runs")
    r = kit("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--results", str(results))
    assert r.returncode == 0, r.stdout + r.stderr
    return only_run(results)
