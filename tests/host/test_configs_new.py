"""`kit configs new` and `kit run`'s choice of a config: a config for a device, derived from a shipped one, checked
as a run checks it, never written over another, and the shipped derived configs equal what the command derives
today (so they cannot drift from the fit). No training."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kit import case as cases
from kit.case import rules as case_rules
from kit.cli import app
from kit.commands import configs as cmd
from kit.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

runner = CliRunner()
CASE = cases.get("llava1_5_7b")
CONFIGS = CASE.root / "configs"
GIB = 2**30
RECORDING = Path(__file__).resolve().parents[1] / "fixtures" / "hosts" / "nvml-h200x2.json"


def invoke(*args: str, **env: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200", **env})


def test_it_prints_the_config_and_why_each_key_changed():
    r = invoke("configs", "new", "--from", "A800x1x8", "--device", "H100", "--gpus", "1", "--host-memory-gib", "128")
    print(r.output)
    assert r.exit_code == 0, r.output
    toml = r.stdout
    data = tomllib.loads(toml)  # stdout is the TOML alone: `> NAME.toml` keeps a loadable file
    assert data["name"] == "H100x1x1" and data["device"] == "H100" and data["gpus_per_node"] == 1
    assert toml.startswith("# Written by `kit configs new --from A800x1x8 --device H100 --host-memory-gib 128 --nodes 1 "
                           "--gpus 1` from A800x1x8")  # fmt: skip
    assert "79.6 GiB per device (env/accelerators.toml: NVIDIA H100 SXM5 (80 GB HBM3))" in " ".join(toml.split())
    table = r.stderr
    assert "H100x1x1: changed from A800x1x8" in table
    row = next(ln for ln in table.splitlines() if "finetune.offload_optimizer" in ln)
    assert "0.0" in row and "GiB per device" in row and "over the 74.0 usable" in row
    assert "finetune: device_gib" in table and "note: device memory is estimated" in table


def test_write_writes_a_config_the_case_loads_and_the_closed_rules_accept(tmp_path):
    r = invoke("configs", "new", "--from", "A800x1x8", "--device", "H100", "--host-memory-gib", "2048", "--out",
               str(tmp_path), "--write")  # fmt: skip
    assert r.exit_code == 0, r.output
    path = tmp_path / "H100x1x8.toml"
    assert f"wrote {path}" in " ".join(r.output.split()) and "kit run llava1_5_7b --config H100x1x8" in r.output
    cfg = CASE.config.load(str(path))
    rules = case_rules.load(CASE.name)
    assert case_rules.check_config(rules, cfg.to_dict(), synthetic=False) == []  # closed, as A800x1x8 is
    ref = CASE.config.load("A800x1x8")
    for stage in ("pretrain", "finetune"):
        assert cfg.stage(stage).global_batch == ref.stage(stage).global_batch


def test_write_never_overwrites(tmp_path):
    args = ("configs", "new", "--from", "H200x1x1", "--device", "H100", "--out", str(tmp_path), "--write")
    assert invoke(*args).exit_code == 0
    path = tmp_path / "H100x1x1.toml"
    path.write_text(before := path.read_text() + "# mine\n")
    r = invoke(*args)
    print(r.output)
    assert r.exit_code == 2
    assert f"{path} exists: kit configs new never overwrites a config; choose another --name or --out" in " ".join(
        r.output.split())
    assert path.read_text() == before
    r = invoke(*args, "--name", "H100-mine")  # another name is another file
    assert r.exit_code == 0 and (tmp_path / "H100-mine.toml").is_file()
    assert tomllib.loads((tmp_path / "H100-mine.toml").read_text())["name"] == "H100-mine"


def test_a_device_too_small_is_refused_with_what_would_fit():
    r = invoke("configs", "new", "--from", "A800x1x8", "--device", "Acme-16", "--memory-gib", "16", "--gpus", "1")
    print(r.output)
    assert r.exit_code == 2 and not r.stdout
    msg = " ".join(r.output.split())
    assert "finetune cannot fit on 1 x 1 Acme-16 of 16 GiB" in msg and "use a device with at least" in msg
    assert "(from A800x1x8, --memory-gib)" in msg


def test_a_device_without_a_memory_figure_asks_for_one():
    r = invoke("configs", "new", "--from", "A800x1x8", "--device", "Acme-X1")
    assert r.exit_code == 2
    assert "--device Acme-X1: has no row in env/accelerators.toml: pass --memory-gib N" in " ".join(r.output.split())
    r = invoke("configs", "new", "--from", "A800x1x8", "--device", "BI-V150")  # a row without memory_gib
    assert "matches the row 'Iluvatar CoreX BI-V150', which has no memory_gib" in " ".join(r.output.split())
    r = invoke("configs", "new", "--from", "A800x1x8", "--device", "Acme-X1", "--memory-gib", "-3")
    assert r.exit_code == 2 and "--memory-gib -3: expected one device's memory in GiB" in r.output
    r = invoke("configs", "new", "--from", "nope", "--device", "H100")
    assert r.exit_code == 2 and "--from nope: no config 'nope'" in " ".join(r.output.split())


def _command_of(path: Path) -> list[str]:
    first = " ".join(ln.lstrip("# ").strip() for ln in path.read_text().split("\n\n")[0].splitlines()[:3])
    return shlex.split(first.split("`")[1])


@pytest.mark.parametrize("name", ["H100x1x1", "H100x1x8"])
def test_the_shipped_derived_configs_are_what_the_command_derives_today(name):
    """Each shipped config that `kit configs new` wrote names its command in its first line; derived again now, it is
    the same file, byte for byte. A change to the fit, the reference or env/accelerators.toml that moves it fails
    here: write the config anew (delete it, run the command with --write) and look at what changed."""
    path = CONFIGS / f"{name}.toml"
    argv = _command_of(path)
    assert argv[:3] == ["kit", "configs", "new"] and "--write" not in argv
    opts = dict(zip(argv[3::2], argv[4::2], strict=True))
    d = cmd.derive(None, opts["--from"], opts["--device"], float(opts["--memory-gib"]) if "--memory-gib" in opts else None,
                   float(opts["--host-memory-gib"]) if "--host-memory-gib" in opts else None, int(opts["--nodes"]),
                   int(opts["--gpus"]), opts.get("--name"))  # fmt: skip
    assert d.name == name
    assert d.text == path.read_text(), f"{path} drifted from `{shlex.join(argv)}`: write it anew"


def test_the_shipped_h100_configs_change_only_what_the_memory_asks():
    one, eight = CASE.config.load("H100x1x1"), CASE.config.load("H100x1x8")
    assert (one.nodes, one.gpus_per_node, eight.nodes, eight.gpus_per_node) == (1, 1, 1, 8)
    assert one.finetune.offload_optimizer > 0 and one.pretrain.micro_batch < CASE.config.load("H200x1x1").pretrain.micro_batch
    assert eight.finetune == CASE.config.load("A800x1x8").finetune  # 8 x 80 GB hold the reference's finetune


def test_choose_config_picks_the_devices_own_and_names_the_command_otherwise():
    assert cmd.choose_config("llava1_5_7b", 1, 1, "NVIDIA H200", 143_771 * 2**20) == "H200x1x1"
    assert cmd.choose_config("llava1_5_7b", 1, 1, "NVIDIA H100 80GB HBM3", 81_559 * 2**20) == "H100x1x1"
    assert cmd.choose_config("llava1_5_7b", 1, 8, "NVIDIA H100 80GB HBM3", 81_559 * 2**20) == "H100x1x8"
    assert cmd.choose_config("llava1_5_7b", 1, 8, "NVIDIA A800-SXM4-80GB", 80 * GIB) == "A800x1x8"
    # a device no config names, with memory for them: the one made for the most memory it still has
    assert cmd.choose_config("llava1_5_7b", 1, 1, "Acme X1", 100 * GIB) == "A800x1x1"
    with pytest.raises(cmd.NoConfig) as e:  # too little memory for every config of that count
        cmd.choose_config("llava1_5_7b", 1, 1, "NVIDIA A100-SXM4-40GB", 40 * GIB)
    msg = str(e.value)
    print(msg)
    assert isinstance(e.value, UsageError)
    assert msg.startswith("no shipped llava1_5_7b config fits 1 x 1 NVIDIA A100-SXM4-40GB, 40 GiB: derive one with "
                          "`kit configs new --from A800x1x8 --device A100 --memory-gib 40 --nodes 1 --gpus 1 "
                          "--host-memory-gib N --write`")  # fmt: skip
    with pytest.raises(cmd.NoConfig, match="fits 1 x 4 NVIDIA H200, 140.4 GiB: derive one with `kit configs new "
                                           "--from A800x1x8 --device H200 --memory-gib 140.4 --nodes 1 --gpus 4"):
        cmd.choose_config("llava1_5_7b", 1, 4, "NVIDIA H200", 143_771 * 2**20)


@pytest.fixture
def fresh_detection():
    """The vendor registry detects once per process: detect again under this test's recording, and after it."""
    from kit import vendors

    vendors.reset()
    yield
    vendors.reset()


def test_kit_run_without_config_takes_the_hosts_own(tmp_path, fresh_detection):
    """On a recorded host of two H200s: --gpus 1 picks H200x1x1; --gpus 2 has no config and names the command."""
    r = invoke("run", "llava1_5_7b", "--gpus", "1", "--synthetic", "--native", "--dry-run", "--results", str(tmp_path),
               KIT_NVML_RECORDING=str(RECORDING))  # fmt: skip
    assert "dry run: llava1_5_7b config H200x1x1" in r.output, r.output
    r = invoke("run", "llava1_5_7b", "--synthetic", "--native", "--dry-run", "--results", str(tmp_path),
               KIT_NVML_RECORDING=str(RECORDING))  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "no shipped llava1_5_7b config fits 1 x 2 NVIDIA H200" in " ".join(r.output.split())
    assert "kit configs new --from A800x1x8 --device H200" in " ".join(r.output.split())
    assert not any(tmp_path.iterdir())


def test_bare_kit_configs_still_lists_and_names_the_case():
    for args in (["configs"], ["configs", "llava1_5_7b"]):
        r = invoke(*args)
        assert r.exit_code == 0 and "llava1_5_7b configs" in r.output and "H100x1x1" in r.output, r.output
    r = invoke("configs", "nope")
    assert r.exit_code == 2 and "unknown case 'nope'" in r.output


def test_the_host_side_imports_no_training_stack():
    code = ("import sys; from kit.commands import configs; configs.derive(None, 'A800x1x8', 'H100'); "
            "print(sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules))")  # fmt: skip
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_case_without_a_fit_says_so(monkeypatch):
    """Case.fit is optional: the toy case (tests/toycase) has none, and `kit configs new` says what to do instead."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "toycase"))
    from kit_toy.plugin import CASE as TOY

    monkeypatch.setattr(cases, "registered", lambda: {"kit_toy": TOY})
    r = invoke("configs", "new", "--case", "kit_toy", "--from", "tiny", "--device", "H100")
    assert r.exit_code == 2
    assert ("the case kit_toy cannot derive configs: its plug-in has no fit (kit/case/__init__.py Case.fit); copy tiny "
            "and change its free keys by hand") in " ".join(r.output.split())


@pytest.mark.parametrize("spoil,message", [
    (lambda c: c["finetune"].__setitem__("lr", 1e-4),
     "the derived config breaks rules its reference keeps: finetune.lr = 0.0001, the rules fix 2e-05"),
    (lambda c: c["finetune"].__setitem__("micro_batches", 4),
     "the derived config does not load with the case's loader:"),
])  # fmt: skip
def test_a_fit_that_breaks_the_rules_or_the_schema_writes_nothing(tmp_path, monkeypatch, spoil, message):
    """The host checks what the case's fit returns as a run will; a fit that moved a fixed key or wrote a key the
    schema does not know is refused, naming it, and no file is written."""
    real = type(CASE).fit

    def spoiled(self, reference, target):
        out = real(self, reference, target)
        spoil(out["config"])
        return out

    monkeypatch.setattr(type(CASE), "fit", spoiled)
    r = invoke("configs", "new", "--from", "A800x1x8", "--device", "H100", "--out", str(tmp_path), "--write")
    print(r.output)
    assert r.exit_code == 2 and message in " ".join(r.output.split()) and "nothing was written" in r.output
    assert not any(tmp_path.iterdir())
