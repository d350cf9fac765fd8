"""Session fixtures shared across test folders: real tiny runs of the case, and a submission packed from them.

Each tiny run is the README's demo (`kit run llava1_5_7b --config tiny --synthetic --native`: two CPU ranks, real
DeepSpeed, about a minute); they are made once per session and only read by the tests that use them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .tinyruns import SYSTEM_TOML, kit_cli, make_tiny_run

# Fixtures whose value is a real training run (tiny, but DeepSpeed engines on several ranks): a test that asks for
# one starts training, so it is `slow` whatever its module says.
TRAINING_FIXTURES = {"tiny_run", "tiny_runs", "throughput_run", "tiny_submission", "pinned_run"}


def pytest_collection_modifyitems(config, items):
    """`slow` on every test that starts a training process: every end-to-end test (tests/e2e, tests/pins) and any
    test that uses a training fixture. `-m "not slow"` is then the host-only subset (docs/development.md)."""
    for item in items:
        parts = item.path.parts
        if "e2e" in parts or "pins" in parts or TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> list[Path]:
    """Three uninterrupted tiny runs (pretrain, finetune, eval), each under a results folder of its own."""
    return [make_tiny_run(tmp_path_factory.mktemp(f"runs{i}")) for i in range(3)]


@pytest.fixture(scope="session")
def tiny_run(tiny_runs) -> Path:
    return tiny_runs[0]


@pytest.fixture(scope="session")
def throughput_run(tmp_path_factory) -> Path:
    """A short tiny run (--max-steps 2, 4 MMMU questions: the throughput category) with a changed pretrain lr."""
    return make_tiny_run(tmp_path_factory.mktemp("throughput"), "--set", "pretrain.lr=0.02", "--max-steps", "2",
                         "--eval-limit", "4")  # fmt: skip


@pytest.fixture(scope="session")
def system_toml(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("system") / "system.toml"
    p.write_text(SYSTEM_TOML)
    return p


@pytest.fixture(scope="session")
def tiny_submission(tiny_runs, system_toml, tmp_path_factory) -> Path:
    """`kit submit` of the three tiny runs (closed, synthetic allowed): the folder <out>/<org>; <org>.tar.gz beside it."""
    out = tmp_path_factory.mktemp("submission")
    r = kit_cli("submit", *map(str, tiny_runs), "--system", str(system_toml), "--out", str(out), "--allow-synthetic")
    assert r.returncode == 0, r.stdout + r.stderr
    return out / "Acme_Compute"
