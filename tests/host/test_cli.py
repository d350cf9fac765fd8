"""The CLI's surface: version, help with examples, and the host side's promise not to import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kit import __version__
from kit.cli import app

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"kit {__version__}"


@pytest.mark.parametrize("command", ["run", "resume", "report", "configs", "mmmu score", "check-host", "env", "build", "submit",
                                     "verify", "compare", "ls", "data fetch", "data verify", "data fix"])
def test_every_command_has_help_with_examples(command):
    r = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert "Example" in r.output and f"kit {command}" in r.output


def test_shell_completion_shows_installs_and_completes_in_a_real_bash(tmp_path):
    """`kit --install-completion` used to answer "No such option"; now Typer's completion is on."""
    import os

    kit = Path(sys.executable).parent / "kit"  # the console script: completion is keyed to the program's name
    env = {**os.environ, "HOME": str(tmp_path), "SHELL": "/bin/bash", "PATH": f"{kit.parent}{os.pathsep}{os.environ['PATH']}"}
    shown = subprocess.run([str(kit), "--show-completion", "bash"], env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and "complete -o default -F _kit_completion kit" in shown.stdout, shown.stderr
    installed = subprocess.run([str(kit), "--install-completion", "bash"], env=env, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    script = tmp_path / ".bash_completions" / "kit.sh"
    assert script.read_text().strip() == shown.stdout.strip()
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()
    words = subprocess.run(
        ["bash", "--norc", "-c", f"source '{script}'; COMP_WORDS=(kit run llava1_5_7b --dry); COMP_CWORD=3; "
         "_kit_completion kit; echo \"${COMPREPLY[*]}\"; COMP_WORDS=(kit re); COMP_CWORD=1; _kit_completion kit; "
         "echo \"${COMPREPLY[*]}\""],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert words.stdout.splitlines() == ["--dry-run", "resume report"], words.stdout + words.stderr


@pytest.mark.parametrize("command", ["run", "resume", "report", "configs", "mmmu score", "check-host", "env", "build",
                                     "submit", "verify", "compare", "ls", "data fetch", "data verify", "data fix"])
def test_help_paragraphs_wrap_at_the_terminal_not_at_the_source_line(command):
    """`kit data fetch --help` came out hard-wrapped mid-sentence ("Exits 0 when" / "every source is there"):
    Typer's rich help keeps a docstring's line breaks. Every prose paragraph is one line on a wide terminal."""
    import inspect

    from kit import cli

    r = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "4000"})  # wider than any paragraph
    assert r.exit_code == 0
    lines = [ln.strip(" │") for ln in r.output.splitlines()]
    group, _, name = command.rpartition(" ")
    apps = {g.name: g.typer_instance for g in cli.app.registered_groups}
    infos = (apps[group] if group else cli.app).registered_commands
    info = next((i for i in infos if (i.name or i.callback.__name__.replace("_", "-")) == name), None)
    if info is None:  # a group whose bare invocation is the command (`kit configs`): its callback's help
        info = apps[name].registered_callback
    doc = inspect.cleandoc(info.help or info.callback.__doc__)
    prose = [p for p in doc.split("\n\n")[1:] if not p.startswith((" ", "Example"))]
    for paragraph in prose:
        assert " ".join(paragraph.split()) in lines, (command, paragraph)


def test_host_side_never_imports_the_training_stack():
    """Every module of kit/ and every case's host side (its plugin), imported: none pulls in the training stack."""
    code = (
        "import importlib, pkgutil, sys, kit\n"
        "for m in pkgutil.walk_packages(kit.__path__, 'kit.'):\n"
        "    importlib.import_module(m.name)\n"
        "from kit import case as cases\n"
        "cases.load_config(cases.get('llava1_5_7b'), 'A800x1x8')\n"
        "import cases.llava1_5_7b.plugin.scoring\n"
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


def plan(case, config, stage, **kw):
    """`kit run`'s checks alone (resolve() parses --hosts and reaches no engine)."""
    from kit.launchers import launcher_class
    from kit.run.request import RunRequest, resolve

    req = RunRequest(case=case, config=config, stage=stage, **kw)
    return resolve(req, launcher_class(req))


def planned(config, nodes=1, gpus=None, hosts=None, **kw):
    """The chosen config's request."""
    req, cfg = plan("llava1_5_7b", config, "all", nodes=nodes, gpus=gpus, native=False, synthetic=True, hosts=hosts,
                    **kw)  # fmt: skip
    assert req.config == cfg.name
    return req


@pytest.mark.parametrize(
    "nodes, gpus, hosts, name",
    [(2, 8, "local,local", "A800x2x8"), (2, None, "a,b", "A800x2x8"), (1, 1, None, "A800x1x1"),
     (1, None, None, "A800x1x8"), (1, 8, None, "A800x1x8")],
)  # fmt: skip
def test_the_scale_picks_the_config(nodes, gpus, hosts, name):
    req = planned(None, nodes, gpus, hosts)
    assert (req.config, req.nodes, req.gpus) == (name, nodes, gpus or 8)


def test_a_given_config_is_kept_and_an_unshipped_scale_falls_back_to_the_reference():
    assert planned("A800x1x8", 1, 1).config == "A800x1x8"  # 1 GPU, GAS 8: allowed, not replaced by A800x1x1
    assert planned("H200x1x1").config == "H200x1x1"
    req = planned(None, 1, 2)  # no A800x1x2: the reference's config at 1 x 2 (GAS 4)
    assert (req.config, req.gpus) == ("A800x1x8", 2)

    # No A800x4x8: the reference's config at 4 x 8, refused with the micro batches that keep the global batches.
    with pytest.raises(ValueError, match=r"32 x 32 ranks; .*: use --set pretrain\.micro_batch=8 --set finetune\.micro_batch=4$"):
        planned(None, 4, 8, "a,b,c,d")
    with pytest.raises(ValueError) as e:
        planned("A800x1x8", 1, 3)
    msg = str(e.value)
    assert "stage pretrain: global_batch 256 is not a multiple of micro_batch 32 x 3 ranks" in msg
    assert "cannot keep the global batches with any --set pretrain.micro_batch / --set finetune.micro_batch" in msg
    assert "choose nodes x gpus dividing 256 and 128" in msg
    # --stage pretrain: only pretrain's batch is checked and named.
    with pytest.raises(ValueError, match=r"stage pretrain:[^;]*: use --config A800x2x8 \(made for 2 x 8\), or "
                                         r"--set pretrain\.micro_batch=16$"):  # fmt: skip
        plan("llava1_5_7b", "A800x1x8", "pretrain", nodes=2, gpus=8, synthetic=True, hosts="a,b")


def test_the_refusal_reaches_the_user_as_one_line_with_exit_2(tmp_path, monkeypatch):
    r = runner.invoke(
        app,
        ["run", "llava1_5_7b", "--config", "A800x1x8", "--nodes", "2", "--gpus", "8", "--hosts", "a,b", "--synthetic",
         "--dry-run", "--results", str(tmp_path)],
        env={"COLUMNS": "1000"},  # wide enough that Rich does not wrap the line
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)  # typer.Exit(2), nothing raised
    (line,) = r.output.strip().splitlines()
    assert line.startswith("error: ") and line.endswith(
        "A800x1x8.toml: stage pretrain: global_batch 256 is not a multiple of micro_batch 32 x 16 ranks; stage finetune: "
        "global_batch 128 is not a multiple of micro_batch 16 x 16 ranks: use --config A800x2x8 (made for 2 x 8), "
        "or --set pretrain.micro_batch=16 --set finetune.micro_batch=8"
    )
    assert not any(tmp_path.iterdir())
    # Without --config the host's devices and the scale pick the config (the recorded H200 host: H200x1x1); --native's
    # dry run reaches no engine, so it runs through here (with room on disk: a dry run exits as the launch would, 0).
    from kit.checks import system

    monkeypatch.setattr(system, "free_bytes", lambda p: (Path(p), 10**15))
    recording = Path(__file__).resolve().parents[1] / "fixtures" / "hosts" / "nvml-h200x2.json"
    r = runner.invoke(app, ["run", "llava1_5_7b", "--nodes", "1", "--gpus", "1", "--synthetic", "--native", "--dry-run",
                            "--results", str(tmp_path)], env={"KIT_NVML_RECORDING": str(recording)})  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "config H200x1x1" in " ".join(r.output.split())
