"""The vendor seam, proven: a third party's vendor package (tests/vendorpkg/kit_acme) registers by entry point and
drives the CPU under its own name, with readings its stand-in tool replays from a recording
(tests/fixtures/vendors/acme/acme-a1-x2.json). Through real `kit` processes: check-host, run (three times), the
monitor, report, submit, verify and compare, each in Acme's words and none speaking of another vendor.

The entry points are real: distributions' metadata (`kit_acme-0.dist-info/entry_points.txt`, and the toy case's, as
tests/e2e/test_toy_case.py does) on the path of every kit process, which importlib.metadata reads as it reads an
installed package's. The case is the toy (tests/toycase/kit_toy): it trains in seconds and applies the vendor's
runtime (KIT_DEVICE_RUNTIME) before torch is imported, recording it in kit_facts like the LLaVA case's device layer.

"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..tinyruns import ROOT

pytestmark = pytest.mark.slow

TOY = ROOT / "tests" / "toycase"
VENDORPKG = ROOT / "tests" / "vendorpkg"
RECORDING = ROOT / "tests" / "fixtures" / "vendors" / "acme" / "acme-a1-x2.json"
H200 = ROOT / "tests" / "fixtures" / "hosts" / "nvml-h200x2.json"
MI300X = ROOT / "tests" / "fixtures" / "vendors" / "amd" / "amdsmi-mi300x-x8.json"
# What no output may say when the host's vendor is Acme: another vendor's name or its libraries'.
OTHER_VENDOR = re.compile(r"nvidia|nvml|cuda|nccl|nvlink", re.IGNORECASE)
RUNTIME = {"vendor": "acme", "imports": [], "environment": {"ACME_DEVICE_MODE": "host"}}
FOREIGN_PID = 207590  # the recording's process on device 0
SYSTEM = """\
submitter = "Initech"
system_name = "toy box"
division = "closed"
status = "available on-premise"
cooling = "air"
hw_notes = "two Acme A1 as a recording describes them; the ranks compute on the CPU"
"""


def _acme() -> Any:
    """The vendor module itself (for its table of reasons), loaded from its file: the test process has no entry
    point for it, and loading it does not register it."""
    spec = importlib.util.spec_from_file_location("kit_acme_for_tests", VENDORPKG / "kit_acme" / "__init__.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def said(r: subprocess.CompletedProcess) -> str:
    """What a command printed, as one line of words (a table's rules and borders gone)."""
    return " ".join(re.sub(r"[│┃]", " ", r.stdout + "\n" + r.stderr).split())


def speaks_only_acme(r: subprocess.CompletedProcess, what: str) -> None:
    text = r.stdout + "\n" + r.stderr
    hits = [text[max(0, m.start() - 60):m.end() + 60].replace("\n", " ") for m in OTHER_VENDOR.finditer(text)]
    assert not hits, f"{what} speaks of another vendor: {hits}"


def kit(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def dist_info(site: Path, name: str, entry_points: str) -> None:
    d = site / f"{name}-0.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0\n")
    (d / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="module")
def envs(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Three hosts' environments: "plain", the toy case installed; "acme", the Acme package installed too and chosen
    (KIT_VENDOR=acme); "acme-detected", installed but not chosen (the registry finds it by its devices)."""
    toy_site, acme_site = tmp_path_factory.mktemp("toy-site"), tmp_path_factory.mktemp("acme-site")
    dist_info(toy_site, "kit_toy", "[kit.cases]\nkit_toy = kit_toy.plugin:CASE\n")
    dist_info(acme_site, "kit_acme", "[kit.vendors]\nacme = kit_acme:AcmeVendor\n")
    base = {k: v for k, v in os.environ.items() if k not in ("KIT_VENDOR", "PYTHONPATH") and not k.startswith("ACME_")}
    base.update(COLUMNS="200", KIT_MONITOR_INTERVAL="1")
    rest = os.environ.get("PYTHONPATH", "")
    plain = {**base, "PYTHONPATH": os.pathsep.join([str(toy_site), str(TOY), str(ROOT), rest])}
    detected = {**base, "PYTHONPATH": os.pathsep.join([str(toy_site), str(acme_site), str(TOY), str(VENDORPKG), str(ROOT), rest])}
    return {"plain": plain, "acme-detected": detected, "acme": {**detected, "KIT_VENDOR": "acme"}}


@pytest.fixture(scope="module")
def acme_config(tmp_path_factory) -> Path:
    """The toy's tiny config for Acme's device: the same fixed keys, the device named (a free key)."""
    text = (TOY / "kit_toy" / "configs" / "tiny.toml").read_text()
    for old, new in (('name = "tiny"', 'name = "acme-a1x2"'), ('device = "cpu"', 'device = "Acme A1"')):
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path_factory.mktemp("configs") / "acme-a1x2.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def acme_runs(envs, acme_config, tmp_path_factory) -> list[tuple[Path, subprocess.CompletedProcess]]:
    results = tmp_path_factory.mktemp("acme-runs")
    out = []
    for _ in range(3):
        before = {p.name for p in results.iterdir()}
        r = kit(envs["acme"], "run", "kit_toy", "--config", str(acme_config), "--synthetic", "--native",
                "--results", str(results))  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        (new,) = [p for p in results.iterdir() if p.name not in before and (p / "run.json").is_file()]
        out.append((new, r))
    return out


@pytest.fixture(scope="module")
def plain_run(envs, tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("plain-run")
    r = kit(envs["plain"], "run", "kit_toy", "--config", "tiny", "--synthetic", "--native", "--results", str(results))
    assert r.returncode == 0, r.stdout + r.stderr
    (run,) = [p for p in results.iterdir() if (p / "run.json").is_file()]
    return run


@pytest.fixture(scope="module")
def system_toml(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("system") / "system.toml"
    p.write_text(SYSTEM)
    return p


@pytest.fixture(scope="module")
def submitted(envs, acme_runs, system_toml, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("subs")
    r = kit(envs["acme"], "submit", *(str(p) for p, _ in acme_runs), "--system", str(system_toml), "--out", str(out),
            "--allow-synthetic")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return out / "Initech.tar.gz", r


@pytest.fixture(scope="module")
def check_host(envs, acme_config) -> subprocess.CompletedProcess:
    r = kit(envs["acme"], "check-host", "--case", "kit_toy", "--config", str(acme_config), "--native")
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _kit_facts(stage_dir: Path) -> dict[str, Any]:
    for line in (stage_dir / "events.log").read_text().splitlines():
        _, marker, body = line.partition(":::MLLOG ")
        if marker and json.loads(body)["key"] == "kit_facts":
            return json.loads(body)["value"]
    raise AssertionError(f"no kit_facts in {stage_dir}/events.log")


# ---- the recording ----


def test_the_recording_holds_the_numbers_it_names():
    """Every number the Acme stand-in replays is the one its `source` names in the repository's recordings."""
    acme = json.loads(RECORDING.read_text())
    calls = json.loads(H200.read_text())["calls"]

    def call(name: str, *args: Any) -> Any:
        return calls[json.dumps([name, [{"device": a} if i == 0 else a for i, a in enumerate(args)]])]["result"]

    assert acme["driver"] == calls['["nvmlSystemGetDriverVersion", []]']["result"]
    v = calls['["nvmlSystemGetCudaDriverVersion_v2", []]']["result"]
    assert acme["runtime_version"] == f"{v // 1000}.{v % 1000 // 10}"
    assert len(acme["devices"]) == len(acme["readings"]) == 2
    for d, r in zip(acme["devices"], acme["readings"], strict=True):
        i = d["index"]
        mem = call("nvmlDeviceGetMemoryInfo", i)["__struct__"]
        util = call("nvmlDeviceGetUtilizationRates", i)["__struct__"]
        assert d["memory_bytes"] == r["mem_total_bytes"] == mem["total"] and r["mem_used_bytes"] == mem["used"]
        assert d["bus_id"] == call("nvmlDeviceGetPciInfo", i)["__struct__"]["busId"]
        assert call("nvmlDeviceGetUUID", i) == "GPU-" + d["uuid"]  # the prefix dropped
        assert d["firmware"] == call("nvmlDeviceGetVbiosVersion", i)
        assert (r["util_pct"], r["mem_util_pct"]) == (util["gpu"], util["memory"])
        assert r["power_w"] == call("nvmlDeviceGetPowerUsage", i) / 1000
        assert r["power_limit_w"] == call("nvmlDeviceGetEnforcedPowerLimit", i) / 1000
        assert r["clock_mhz"] == call("nvmlDeviceGetClockInfo", i, 1)
        assert r["clock_max_mhz"] == call("nvmlDeviceGetMaxClockInfo", i, 1)
        assert r["temp_c"] == call("nvmlDeviceGetTemperature", i, 0)
        assert call("nvmlDeviceGetCurrentClocksEventReasons", i) == 1 and r["throttle"] == ["idle"]  # bit 0x1: idle
    amd = json.loads(MI300X.read_text())["calls"]
    (proc,) = amd[json.dumps(["amdsmi_get_gpu_process_list", [{"gpu": 0}]])]["result"]
    assert acme["readings"][0]["processes"] == [{"pid": proc["pid"], "name": proc["name"],
                                                 "used_bytes": proc["memory_usage"]["vram_mem"]}]  # fmt: skip
    assert acme["readings"][1]["processes"] == []
    assert any("replayed under the made-up vendor name" in s for s in acme["source"])


# ---- check-host ----


def test_check_host_in_acme_words(envs, acme_config, check_host, tmp_path):
    speaks_only_acme(check_host, "kit check-host")
    text = said(check_host)
    for row in ("ACU count ✓ 2 ACUs, the config needs 2", "ACU model ✓ Acme A1 x2", "ACU memory ✓ 140.4 GiB per ACU",
                "Acme driver ✓ Acme driver 580.159.04, Acme runtime 13.0"):  # fmt: skip
        assert row in text, (row, text)
    # The entry point alone is enough: without KIT_VENDOR the registry finds Acme by its devices and its device name.
    r = kit(envs["acme-detected"], "check-host", "--case", "kit_toy", "--config", str(acme_config), "--native", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {c["name"]: c for c in json.loads(r.stdout)["hosts"][next(iter(json.loads(r.stdout)["hosts"]))]}
    assert rows["ACU count"]["group"] == "acme" and rows["ACU count"]["data"] == {"found": 2, "expected": 2}
    assert rows["Acme driver"]["status"] == "ok"
    speaks_only_acme(r, "kit check-host --json")
    # A config for more ACUs than the host has: refused, and the fix in Acme's words.
    four = tmp_path / "acme-a1x4.toml"
    four.write_text(acme_config.read_text().replace("gpus_per_node = 2", "gpus_per_node = 4"))
    r = kit(envs["acme"], "check-host", "--case", "kit_toy", "--config", str(four), "--native")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 ACUs, the config needs 4" in said(r) and "run on a host with 4 ACUs, or pass --gpus 2" in said(r)


def test_check_host_cpu_row_uses_the_device_word(check_host):
    row = next(line for line in check_host.stdout.splitlines() if "│ CPU" in line)
    assert "2 ACU ranks" in row and "GPU" not in row, row


# ---- plans: containers and Slurm ----


def test_a_container_plan_in_acme_words(envs, acme_config, tmp_path):
    """A dry run of the container launcher (no container starts): Acme's device word and its forwarded settings."""
    env = {**envs["acme"], "ACME_SMI_RECORDING": str(RECORDING)}
    r = kit(env, "run", "kit_toy", "--config", str(acme_config), "--synthetic", "--dry-run", "--results", str(tmp_path))
    assert r.returncode == 3, r.stdout + r.stderr  # no kit image here: the plan stops at that check
    assert "1 node(s) x 2 ACU(s)" in said(r) and f"ACME_SMI_RECORDING={RECORDING}" in said(r), said(r)
    speaks_only_acme(r, "kit run --dry-run")


def test_a_container_plan_says_how_the_devices_get_in(envs, acme_config, tmp_path):
    r = kit(envs["acme"], "run", "kit_toy", "--config", str(acme_config), "--synthetic", "--dry-run", "--results", str(tmp_path))
    assert "/dev/acme0" in said(r), said(r)


def test_a_slurm_job_asks_for_the_vendors_gres(envs, acme_config, tmp_path):
    r = kit(envs["acme"], "run", "kit_toy", "--config", str(acme_config), "--synthetic", "--native", "--launcher", "slurm",
            "--dry-run", "--results", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "#SBATCH --gres=acme:2" in r.stdout and "--gpus-per-node" not in r.stdout, r.stdout


# ---- run and the monitor ----


def test_runs_record_acme(acme_runs):
    acme = json.loads(RECORDING.read_text())
    reasons = _acme().REASONS
    for run, r in acme_runs:
        speaks_only_acme(r, f"kit run ({run.name})")
        host = json.loads((run / "environment.json").read_text())["host"]["accelerators"]
        assert host["vendor"] == "acme" and host["available"] and host["driver"] == "580.159.04"
        assert [d["name"] for d in host["devices"]] == ["Acme A1", "Acme A1"] and not host.get("replayed_from")
        for stage in ("fit", "quiz"):
            assert _kit_facts(run / stage)["runtime"] == RUNTIME, stage
            for rank in (0, 1):
                log = (run / stage / "logs" / f"rank{rank}.log").read_text()
                assert "KIT_DEVICE_RUNTIME (acme) applied: environment ['ACME_DEVICE_MODE']" in log, log
            records = _records(run / stage / "monitor.jsonl")
            start = records[0]
            assert start["type"] == "start" and start["source"] == "acme" and start["device_word"] == "ACU", start
            assert start["throttle_reasons"] == reasons
            assert [d["name"] for d in start["devices"]] == ["Acme A1", "Acme A1"]
            samples = [x for x in records if x["type"] == "sample"]
            assert samples and records[-1]["type"] == "stop"
            for s in samples:
                for got, want in zip(s["devices"], acme["readings"], strict=True):
                    assert {k: got[k] for k in want if k != "processes"} == {k: v for k, v in want.items() if k != "processes"}
                    assert got["throttle_status"] == "ok"  # Acme's status of "idle"
                    assert [(p["pid"], p["name"], p["used_bytes"]) for p in got["processes"]] == \
                        [(p["pid"], p["name"], p["used_bytes"]) for p in want["processes"]]  # fmt: skip
                    assert all(p["ours"] is not True for p in got["processes"])
        text = said(r)
        assert f"other processes used ACU 0 during the stage: pt_main_thread (pid {FOREIGN_PID}" in text, text


def test_a_plain_run_has_no_vendor_but_the_cpu(plain_run):
    host = json.loads((plain_run / "environment.json").read_text())["host"]["accelerators"]
    assert host["vendor"] == "cpu" and host["devices"] == []
    assert _kit_facts(plain_run / "fit")["runtime"] == {"vendor": "cpu", "imports": [], "environment": {}}
    start = _records(plain_run / "fit" / "monitor.jsonl")[0]
    assert start["source"] == "host" and start["devices"] == []


# ---- report ----


def test_report_in_acme_words(envs, acme_runs):
    run = acme_runs[0][0]
    r = kit(envs["acme"], "report", str(run))
    assert r.returncode == 0, r.stdout + r.stderr
    speaks_only_acme(r, "kit report")
    text = said(r)
    assert f"[fit] other processes used ACU 0 during the stage: pt_main_thread (pid {FOREIGN_PID}" in text, text
    assert "[fit] vendor runtime (a free change under the rules): acme: ACME_DEVICE_MODE=host" in text, text
    r = kit(envs["acme"], "report", str(run), "--format", "json")
    assert r.returncode == 0, r.stderr
    fit = json.loads(r.stdout)["stages"]["fit"]
    assert fit["runtime"] == RUNTIME
    mon = fit["monitor"]
    assert mon["source"] == "acme" and sorted(mon["devices"]) == ["0", "1"]
    # "idle" is an ok reason in Acme's table (the start line's): not counted. A reason the table left out would be.
    assert all(d["throttle"] == {} and d["power_w_max"] > 0 for d in mon["devices"].values())
    assert [(f["device"], f["pid"], f["name"]) for f in mon["foreign_processes"]] == [(0, FOREIGN_PID, "pt_main_thread")]


# ---- submit and verify ----


def test_submit_and_verify(envs, submitted, tmp_path):
    tarball, r = submitted
    speaks_only_acme(r, "kit submit")
    (system,) = (tarball.parent / "Initech" / "systems").glob("*.json")
    desc = json.loads(system.read_text())
    assert (desc["accelerator_vendor"], desc["driver"], desc["accelerator_toolkit"]) == ("acme", "580.159.04", "13.0")
    assert (desc["accelerators_per_node"], desc["accelerator_model_name"]) == (2, "cpu")  # the ranks ran on the CPU
    r = kit(envs["acme"], "verify", str(tarball))
    assert r.returncode == 0, r.stdout + r.stderr
    speaks_only_acme(r, "kit verify")
    r = kit(envs["acme"], "verify", str(tarball), "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["ok"], [f for f in rep["findings"] if f["status"] == "fail"]
    assert {f["check"]: f["status"] for f in rep["findings"]}["devices"] == "pass"


def test_the_system_description_shows_the_vendor_runtime(submitted):
    tarball, _ = submitted
    (system,) = (tarball.parent / "Initech" / "systems").glob("*.json")
    assert "ACME_DEVICE_MODE" in system.read_text()


def test_a_runtime_vendor_edited_fails_the_devices_check(envs, acme_runs, system_toml, tmp_path):
    copies = []
    for run, _ in acme_runs:
        dest = tmp_path / "runs" / run.name
        shutil.copytree(run, dest)
        log = dest / "fit" / "events.log"
        text = log.read_text()
        assert text.count('"runtime": {"vendor": "acme"') == 1
        log.write_text(text.replace('"runtime": {"vendor": "acme"', '"runtime": {"vendor": "ascend"'))
        copies.append(dest)
    r = kit(envs["acme"], "submit", *map(str, copies), "--system", str(system_toml), "--out", str(tmp_path / "out"),
            "--allow-synthetic")  # fmt: skip
    assert r.returncode == 2 and "[devices]" in r.stderr and "'ascend'" in r.stderr, r.stdout + r.stderr
    # Packed anyway, through the library's writer past kit submit's refusal: kit verify fails it by name.
    pack = ("import sys; from pathlib import Path; from kit.case import rules; "
            "from kit.submission.packer import prepare, write; "
            "plan = prepare([Path(p) for p in sys.argv[3:]], Path(sys.argv[1]), rules.load('kit_toy'), allow_synthetic=True); "
            "print(write(plan, Path(sys.argv[2])).root)")  # fmt: skip
    p = subprocess.run([sys.executable, "-c", pack, str(system_toml), str(tmp_path / "anyway"), *map(str, copies)],
                       cwd=ROOT, capture_output=True, text=True, env=envs["acme"], timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = kit(envs["acme"], "verify", p.stdout.strip(), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    fails = [f for f in json.loads(r.stdout)["findings"] if f["status"] == "fail" and f["check"] == "devices"]
    assert any("'ascend'" in f["detail"] and "'acme'" in f["detail"] for f in fails), fails


# ---- compare ----


def test_compare_beside_a_plain_run(envs, submitted, plain_run):
    tarball, _ = submitted
    r = kit(envs["acme"], "compare", str(tarball), str(plain_run))
    assert r.returncode == 0, r.stdout + r.stderr
    speaks_only_acme(r, "kit compare")
    r = kit(envs["acme"], "compare", str(tarball), str(plain_run), "--format", "json")
    assert r.returncode == 0, r.stderr
    entries = {e["kind"]: e for e in json.loads(r.stdout)["entries"]}
    assert entries["submission"]["unverified"] is None and entries["submission"]["runtime"] == RUNTIME
    assert entries["run"]["runtime"]["vendor"] == "cpu"
    assert entries["run"]["ratios"]["fit"]["comparable"], entries["run"]["ratios"]
