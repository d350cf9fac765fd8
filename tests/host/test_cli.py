"""The CLI's surface: version, help with examples, and the host side's promise not to import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kit import __version__
from kit.cli import app

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"kit {__version__}"


@pytest.mark.parametrize("command", ["run", "resume", "report", "configs", "mmmu score", "check-host", "env", "build"])
def test_every_command_has_help_with_examples(command):
    r = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert "Example" in r.output and f"kit {command}" in r.output


def test_host_side_never_imports_the_training_stack():
    code = (
        "import sys, kit.cli, kit.commands.run, kit.commands.report, kit.launch, kit.progress, kit.report, "
        "kit.metrics, kit.rundir, kit.cases, kit.mmmu, kit.commands.mmmu, kit.nvml, "
        "kit.commands.check_host, kit.commands.env, kit.checks.docker, kit.checks.remote, kit.build, "
        "kit.commands.build\n"
        "from kit import cases\n"
        "cases.load_config(cases.get('llava1_5_7b'), 'A800x1x8')\n"
        "bad = sorted(m for m in ('torch', 'deepspeed', 'transformers', 'mlperf_logging') if m in sys.modules)\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_case_side_never_imports_the_host_stack():
    code = (
        "import sys, cases.llava1_5_7b.config, cases.llava1_5_7b.data, cases.llava1_5_7b.model, "
        "cases.llava1_5_7b.train, cases.llava1_5_7b.synthetic, cases.llava1_5_7b.events\n"
        "bad = sorted(m for m in ('kit', 'typer', 'rich', 'docker') if m in sys.modules)\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_set_override_is_refused(tmp_path):
    r = runner.invoke(
        app,
        ["run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--results", str(tmp_path),
         "--set", "pretrain.micro_bach=2"],
    )  # fmt: skip
    assert r.exit_code == 2
    assert "unknown key pretrain.micro_bach" in r.output and "tiny.toml with --set" in r.output
    assert not any(tmp_path.iterdir())


def test_container_path_without_an_engine(tmp_path, monkeypatch):
    """The default (container) path reaches the engine before anything is created: exit 3 with the fix."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    r = runner.invoke(app, ["run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--results", str(tmp_path / "runs")])
    assert r.exit_code == 3, r.output
    out = "".join(r.output.split())  # Rich wraps long paths anywhere
    assert f"node0(local):cannotreachtheDockerengineatunix://{tmp_path}/absent.sock" in out and "fix:" in out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
