"""A dishonest or careless vendor with a text editor and the kit's own `kit submit`: every forgery is refused by
`kit submit` (exit 2, the finding named) and, packed anyway through the library's unchecked writer, fails `kit verify`
by name; `kit compare` marks it and draws no ratio. The clean runs still pack and verify, and honest runs of one
config are never taken for one another.

The runs are the session's three real tiny runs (tests/conftest.py), copied and edited the way a person would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.case import rules as rules_mod
from kit.submission import read_run
from kit.submission.duplicates import same_run
from kit.submission.packer import prepare, write, write_manifest
from kit.submission.verifier import verify

from ..tinyruns import ROOT, SYSTEM_TOML, kit_cli

pytestmark = pytest.mark.slow
DAY_S = 86400.0


# ---- editing run directories the way a person would ----


def copy_runs(runs: list[Path], dest: Path) -> list[Path]:
    """Each run copied under dest, without checkpoints, generated data or weights."""
    out = []
    for r in runs:
        d = dest / r.name
        shutil.copytree(r, d, ignore=shutil.ignore_patterns("checkpoint", "synthetic", "model", "*.bin", "plots"))
        out.append(d)
    return out


def edit_events(run: Path, fn, stages=("pretrain", "finetune", "eval")) -> None:
    """Rewrite every :::MLLOG event of the stages' events.log through fn(event) (which edits it in place)."""
    for stage in stages:
        log = run / stage / "events.log"
        lines = []
        for line in log.read_text().splitlines():
            head, marker, body = line.partition(":::MLLOG ")
            if marker:
                ev = json.loads(body)
                fn(ev)
                line = head + marker + json.dumps(ev)
            lines.append(line)
        log.write_text("\n".join(lines) + "\n")


def rename(run: Path, new_id: str) -> Path:
    """A copy of a run under another id: the folder and every mention of the old id in every file."""
    old = run.name
    dest = run.with_name(new_id)
    shutil.copytree(run, dest)
    for p in dest.rglob("*"):
        if p.is_file():
            text = p.read_text(errors="surrogateescape")
            if old in text:
                p.write_text(text.replace(old, new_id), errors="surrogateescape")
    return dest


def restamp(run: Path, shift_s: float) -> None:
    """Every time in the run moved by shift_s: event stamps, status lines, monitor samples, rank logs."""
    def ev_shift(ev):
        if isinstance(ev.get("time_ms"), (int, float)):
            ev["time_ms"] += shift_s * 1000

    edit_events(run, ev_shift)
    rows = [json.loads(x) for x in (run / "status.jsonl").read_text().splitlines()]
    for row in rows:
        row["t"] += shift_s
        row["time"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(row["t"]))
    (run / "status.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for mon in run.glob("*/monitor.jsonl"):
        recs = [json.loads(x) for x in mon.read_text().splitlines()]
        for rec in recs:
            rec["t"] = round(rec["t"] + shift_s, 3)
        mon.write_text("".join(json.dumps(r) + "\n" for r in recs))
    for log in run.glob("*/logs/rank*.log"):
        log.write_text(re.sub(r"\((started|ended) at (\d+\.\d+)\)",
                              lambda m: f"({m.group(1)} at {float(m.group(2)) + shift_s:.3f})", log.read_text()))


def submit_cli(runs: list[Path], out: Path, system: Path) -> subprocess.CompletedProcess:
    return kit_cli("submit", *map(str, runs), "--system", str(system), "--out", str(out), "--allow-synthetic")


def packed_anyway(runs: list[Path], out: Path, system: Path) -> Path:
    """What a forger gets by calling the library's writer directly, past kit submit's refusal."""
    plan = prepare(runs, system, rules_mod.load("llava1_5_7b"), allow_synthetic=True)
    return write(plan, out).root


def failures(root: Path, **kw) -> list[tuple[str, str, str]]:
    return [(f.check, f.where, f.detail) for f in verify(root, **kw).findings if f.status == "fail"]


def refused(r: subprocess.CompletedProcess, check: str, *words: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    text = " ".join(r.stderr.split())
    assert "nothing was written" in text and f"[{check}]" in text, text
    for w in words:
        assert w in text, (w, text)


@pytest.fixture
def copies(tiny_runs, tmp_path) -> list[Path]:
    return copy_runs(tiny_runs, tmp_path / "runs")


# ---- honest runs ----


def test_honest_runs_are_never_one_another(tiny_runs, throughput_run):
    facts = [read_run(r) for r in [*tiny_runs, throughput_run]]
    for i, a in enumerate(facts):
        for b in facts[i + 1:]:
            assert same_run(a, b) is None, (a.run_id, b.run_id, same_run(a, b))


def test_every_check_is_listed_and_strict_fails_what_a_reviewer_must_not_accept(tiny_submission):
    from kit.submission.checks import REGISTRY

    rep = verify(tiny_submission)
    assert rep.ok, [f for f in rep.findings if f.status == "fail"]
    passed = {f.check for f in rep.findings if f.status == "pass"}
    assert passed >= ({name for name, _, _ in REGISTRY} - {"synthetic"}) | {"manifest", "layout", "figures"}
    assert {f.check for f in rep.findings if f.status == "warn"} >= {"synthetic", "signature"}
    strict = verify(tiny_submission, strict=True)
    assert not strict.ok
    fails = {f.check: f.detail for f in strict.findings if f.status == "fail"}
    assert fails["synthetic"].startswith("strict: synthetic runs") and fails["signature"].startswith("strict: not signed")
    r = kit_cli("verify", str(tiny_submission), "--strict")
    assert r.returncode == 1 and "strict" in r.stdout
    r = kit_cli("verify", str(tiny_submission))
    assert r.returncode == 0 and "checks passed" in r.stdout


# ---- forgeries ----


def test_a_duplicated_run_renamed(copies, tmp_path, system_toml):
    twin = rename(copies[0], copies[0].name[:-4] + "beef")
    r = submit_cli([copies[0], twin, copies[1]], tmp_path / "out", system_toml)
    refused(r, "duplicate run", "the same run as", "the same to the last digit")
    root = packed_anyway([copies[0], twin, copies[1]], tmp_path / "anyway", system_toml)
    assert any(c == "duplicate run" and w.endswith("run_2") and "run_1" in d for c, w, d in failures(root))


def test_a_duplicated_run_restamped_and_padded(copies, tmp_path, system_toml):
    twin = rename(copies[0], copies[0].name[:-4] + "f00d")
    restamp(twin, 3 * DAY_S)
    log = twin / "pretrain" / "events.log"
    log.write_text("".join(f"# padding {i}\n{line}\n" for i, line in enumerate(log.read_text().splitlines())))
    r = submit_cli([copies[0], copies[1], twin], tmp_path / "out", system_toml)
    refused(r, "duplicate run", "the same run as")
    assert "[clocks]" not in r.stderr  # a consistent re-stamp passes the clocks: the duplicate check catches it


def test_a_duplicated_run_rescaled(copies, tmp_path, system_toml):
    """Every step and batch time of the copy times 0.97, and every stamp after run_start moved to match: the
    clocks agree with each other, the shape of the timings gives it away."""
    twin = rename(copies[0], copies[0].name[:-4] + "cafe")
    k = 0.97

    def scale(ev, start={}):  # noqa: B006 - the stage's run_start stamp
        if ev["key"] == "init_start":
            start.clear()
        if ev["key"] == "run_start":
            start["t"] = ev["time_ms"]
        elif "t" in start:
            ev["time_ms"] = start["t"] + k * (ev["time_ms"] - start["t"])
            for key in ("step_time_s", "seconds"):
                if isinstance(ev["value"], dict) and isinstance(ev["value"].get(key), float):
                    ev["value"][key] *= k

    edit_events(twin, scale)
    r = submit_cli([copies[0], copies[1], twin], tmp_path / "out", system_toml)
    refused(r, "duplicate run", "the other's times 0.97")
    assert "[clocks]" not in r.stderr, r.stderr


def test_halved_step_times(copies, tmp_path, system_toml):
    def halve(ev):
        if ev["key"] == "kit_step":
            ev["value"]["step_time_s"] /= 2

    for run in copies:
        edit_events(run, halve, stages=("pretrain", "finetune"))
    r = submit_cli(copies, tmp_path / "out", system_toml)
    refused(r, "clocks", "is shorter than the", "between its stamp and the one before it")
    root = packed_anyway(copies, tmp_path / "anyway", system_toml)
    assert any(c == "clocks" and "shorter than" in d for c, _, d in failures(root))
    # compare marks it and gives it no ratio against the honest submission
    r = kit_cli("compare", str(root), str(tmp_path / "anyway" / "Acme_Compute.tar.gz"), "--format", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert all(e.get("unverified") for e in data["entries"] if e.get("kind") == "submission"), data["entries"]


def test_a_gpu_that_was_never_there(copies, tmp_path, system_toml):
    def h100(ev):
        if ev["key"] == "kit_facts" and ev["value"].get("stage") in ("pretrain", "finetune"):
            ev["value"].update(device_type="cuda", device_name="NVIDIA H100 80GB HBM3", device_mem_total_bytes=85_520_809_984)
        if ev["key"] == "kit_step":
            ev["value"]["device_mem_total_bytes"] = 85_520_809_984

    for run in copies:
        edit_events(run, h100, stages=("pretrain", "finetune"))
    r = submit_cli(copies, tmp_path / "out", system_toml)
    refused(r, "devices", "'NVIDIA H100 80GB HBM3'", "device probe found none", "the monitor sampled no device")
    root = packed_anyway(copies, tmp_path / "anyway", system_toml)
    assert any(c == "devices" and "found none" in d for c, _, d in failures(root))


def test_an_interconnect_edited_into_the_system_file(tiny_submission, tmp_path):
    root = tmp_path / "sub" / tiny_submission.name
    shutil.copytree(tiny_submission, root)
    path = root / "systems" / "cpu_box.json"
    desc = json.loads(path.read_text())
    desc["accelerator_interconnect"] = "NVLink, 18 links up"
    desc["accelerator_model_name"] = "NVIDIA H100 80GB HBM3"
    path.write_text(json.dumps(desc))
    write_manifest(root)
    fails = failures(root)
    assert ("system", "systems/cpu_box.json", "accelerator_interconnect is 'NVLink, 18 links up', but "
            "results/cpu_box/llava1_5_7b/run_1's facts give 'none (CPU ranks, gloo)'") in fails  # fmt: skip
    assert any(c == "system" and "accelerator_model_name" in d for c, _, d in fails)


def test_manifest_entries_twice(tiny_submission, tmp_path):
    root = tmp_path / "sub" / tiny_submission.name
    shutil.copytree(tiny_submission, root)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["files"][0]
    manifest["files"] += [dict(entry), {**entry, "path": "./" + entry["path"]}]
    (root / "manifest.json").write_text(json.dumps(manifest))
    fails = failures(root)
    assert ("manifest", entry["path"], "listed twice in manifest.json: a file counts once") in fails
    assert any(c == "manifest" and "is not a canonical path" in d and "./" in d for c, _, d in fails)


# ---- inputs that crashed ----


def test_an_infinite_step_time(copies, tmp_path, system_toml):
    def inf(ev):
        if ev["key"] == "kit_step" and ev["value"]["step"] == 5:
            ev["value"]["step_time_s"] = float("inf")

    edit_events(copies[0], inf, stages=("pretrain",))
    log = copies[0] / "pretrain" / "events.log"
    assert '"step_time_s": Infinity' in log.read_text()
    r = kit_cli("report", str(copies[0]))
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert "pretrain/events.log: damaged input: step 5 step_time_s = inf" in " ".join(r.stdout.split())
    r = submit_cli(copies, tmp_path / "out", system_toml)
    refused(r, "clocks", "step 5: step_time_s = inf is not a positive finite number")
    root = packed_anyway(copies, tmp_path / "anyway", system_toml)
    r = kit_cli("verify", str(root))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not a positive finite" in r.stdout
    r = kit_cli("compare", str(root))
    assert r.returncode == 0 and "Traceback" not in r.stderr and "FAILS kit verify" in " ".join(r.stdout.split())


@pytest.mark.parametrize(("line", "message"), [
    ("submitter = 42", "submitter = 42: expected text"),
    ('system_name = ["a", "b"]', "system_name = list: expected text"),
    ("cooling = true", "cooling = True: expected text"),
    ("contact = 5", "contact = 5: expected text"),
    ("hw_notes = { a = 1 }", "hw_notes = dict: expected text"),
    ("accelerator_peak_bf16_flops = nan", "must be a positive, finite number"),
])  # fmt: skip
def test_system_files_of_the_wrong_types(tiny_runs, tmp_path, line, message):
    key = line.split()[0]
    text = "\n".join(ln for ln in SYSTEM_TOML.splitlines() if not ln.startswith(key + " ")) + f"\n{line}\n"
    system = tmp_path / "system.toml"
    system.write_text(text)
    r = submit_cli(list(tiny_runs), tmp_path / "out", system)
    assert r.returncode == 2 and message in " ".join(r.stderr.split()) and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_full_disk(tiny_runs, tmp_path, system_toml):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True)
    try:
        r = submit_cli(list(tiny_runs), small / "out", system_toml)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        text = " ".join(r.stderr.split())
        assert re.search(r"needs about [\d.,]+ MiB, and [\d.,]+ MiB is free there", text), text
        assert not any(small.rglob("*")), list(small.rglob("*"))  # nothing half-made, under any name
        # Filled up while writing (the space taken by another writer after the check): cleaned up too.
        filler = small / "filler"
        with open(filler, "wb") as f:
            f.write(b"\0" * (shutil.disk_usage(small).free - 64 * 1024))
        plan = prepare(list(tiny_runs), system_toml, rules_mod.load("llava1_5_7b"), allow_synthetic=True)
        import kit.submission.packer as submit_mod

        real_need = submit_mod._need_bytes
        submit_mod._need_bytes = lambda plan: 0  # the check passes; the disk is too small all the same
        try:
            with pytest.raises(submit_mod.SubmissionError, match="the disk filled up while writing"):
                write(plan, small / "out")
        finally:
            submit_mod._need_bytes = real_need
        assert list(small.iterdir()) == [filler]
    finally:
        subprocess.run(["umount", str(small)], check=True)
    r = submit_cli(list(tiny_runs), tmp_path / "roomy", system_toml)  # the retry, where there is room
    assert r.returncode == 0, r.stderr


def test_an_interrupted_submit_leaves_nothing_and_a_retry_works(tiny_runs, tmp_path, system_toml, monkeypatch):
    import kit.submission.packer as submit_mod

    plan = prepare(list(tiny_runs), system_toml, rules_mod.load("llava1_5_7b"), allow_synthetic=True)
    out = tmp_path / "out"

    def stopped(*a, **k):
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(submit_mod, "write_tarball", stopped)  # stopped while the tarball is written
    with pytest.raises(KeyboardInterrupt):
        write(plan, out)
    assert not out.exists()  # the --out folder this call made is gone too
    monkeypatch.undo()
    real_replace = os.replace
    calls = []

    def replace_then_stop(src, dst):  # stopped between the final renames: the first one is undone
        calls.append(dst)
        real_replace(src, dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(submit_mod.os, "replace", replace_then_stop)
    with pytest.raises(KeyboardInterrupt):
        write(plan, out)
    monkeypatch.undo()
    assert not out.exists(), list(out.iterdir())
    assert write(plan, out).root.is_dir()  # the retry


def test_sigterm_to_kit_submit(tiny_runs, tmp_path, system_toml):
    """A real SIGTERM while kit submit checks the runs: exit 143, one line, nothing under --out."""
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "kit.cli", "submit", *map(str, tiny_runs), "--system",
                          str(system_toml), "--out", str(out), "--allow-synthetic"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:  # until kit's SIGTERM handler is in place
        caught = [ln for ln in Path(f"/proc/{p.pid}/status").read_text().splitlines() if ln.startswith("SigCgt:")]
        if caught and int(caught[0].split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            break
        time.sleep(0.005)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("kit submit finished before the signal arrived")
    assert p.returncode == 143, (p.returncode, stderr)
    assert "kit submit: interrupted (SIGTERM)" in stderr and "Traceback" not in stderr
    assert not out.exists() or list(out.iterdir()) == []
