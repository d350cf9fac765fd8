"""kit submit / kit verify on real tiny runs: a clean submission passes, every kind of damage is named.

Each damage is made the way a person would make it: edit or delete a file of a packed copy, and, where the
manifest would give it away at once, rebuild the manifest too (so the check behind the manifest is what fails).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from kit.submission import write_manifest
from kit.submission.verifier import verify

from ..tinyruns import SYSTEM_TOML, kit_cli

pytestmark = pytest.mark.slow
RUN_1 = "results/cpu_box/llava1_5_7b/run_1"


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def copy(tiny_submission, tmp_path) -> Path:
    dest = tmp_path / "sub" / tiny_submission.name
    shutil.copytree(tiny_submission, dest)
    return dest


def failures(root: Path, **kw) -> list[tuple[str, str, str]]:
    rep = verify(root, **kw)
    return [(f.check, f.where, f.detail) for f in rep.findings if f.status == "fail"]


def test_layout_manifest_and_system(tiny_submission, tiny_runs):
    sub = json.loads((tiny_submission / "submission.json").read_text())
    assert (sub["division"], sub["category"], sub["synthetic"]) == ("closed", "full", True)
    assert [r["run_id"] for r in sub["runs"]] == [p.name for p in tiny_runs]
    run1 = tiny_submission / RUN_1
    for rel in ("run.json", "environment.json", "inputs.json", "config.toml", "status.jsonl", "summary.json",
                "pretrain/events.log", "pretrain/logs/rank0.log", "pretrain/logs/rank1.log", "finetune/events.log",
                "eval/responses.json", "eval/mmmu/judgements.jsonl"):  # fmt: skip
        assert (run1 / rel).is_file(), rel
    assert not (run1 / "finetune" / "checkpoint").exists() and not (run1 / "synthetic").exists()
    assert "finetune/model/pytorch_model.bin" in sub["runs"][0]["outputs"]  # recorded by hash, not carried
    manifest = json.loads((tiny_submission / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    assert files[f"{RUN_1}/pretrain/events.log"]["sha256"] == hashlib.sha256(
        (run1 / "pretrain" / "events.log").read_bytes()).hexdigest()
    system = json.loads((tiny_submission / "systems" / "cpu_box.json").read_text())
    assert system["submitter"] == "Acme Compute" and system["number_of_nodes"] == 1
    assert system["accelerators_per_node"] == 2 and system["accelerator_interconnect"].startswith("none")
    assert system["framework"].startswith("PyTorch ") and system["host_processor_core_count"]
    tarball = tiny_submission.parent / "Acme_Compute.tar.gz"
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert (tiny_submission.parent / "Acme_Compute.tar.gz.sha256").read_text().split()[0] == digest
    with tarfile.open(tarball) as t:
        assert f"Acme_Compute/{RUN_1}/run.json" in t.getnames()


def test_clean_submission_verifies_and_is_left_unchanged(tiny_submission):
    before = tree_hash(tiny_submission)
    for target in (tiny_submission, tiny_submission.parent / "Acme_Compute.tar.gz"):
        r = kit_cli("verify", str(target))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "passes every check" in r.stdout and "SYNTHETIC" in r.stdout
    r = kit_cli("verify", str(tiny_submission), "--json")
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["failures"] == 0
    assert {f["check"] for f in rep["findings"] if f["status"] == "pass"} >= {"manifest", "rules", "runs", "figures"}
    assert tree_hash(tiny_submission) == before


def test_stated_results_are_olympic_means(tiny_submission):
    from kit.case.rules import olympic_mean
    from kit.results.summary import run_summary

    sub = json.loads((tiny_submission / "submission.json").read_text())
    runs = sorted((tiny_submission / "results/cpu_box/llava1_5_7b").iterdir())
    tps = [run_summary(r)["stages"]["pretrain"]["tokens_per_s_per_gpu"] for r in runs]
    stated = sub["results"]["pretrain"]["tokens_per_s_per_gpu"]
    assert stated["olympic_mean"] == pytest.approx(olympic_mean(tps)) == pytest.approx(sorted(tps)[1])
    assert (stated["min"], stated["max"], stated["n"]) == (min(tps), max(tps), 3)


def test_a_changed_byte_in_an_events_log(copy):
    log = copy / RUN_1 / "finetune" / "events.log"
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0x01
    log.write_bytes(bytes(data))
    before = tree_hash(copy)
    assert ("manifest", f"{RUN_1}/finetune/events.log",
            "sha256 differs from the manifest's: the file changed after packing") in failures(copy)  # fmt: skip
    r = kit_cli("verify", str(copy))
    assert r.returncode == 1 and "failed" in r.stdout
    assert tree_hash(copy) == before  # verify changes nothing


def test_a_deleted_rank_log(copy):
    (copy / RUN_1 / "pretrain" / "logs" / "rank1.log").unlink()
    fails = failures(copy)
    assert ("manifest", f"{RUN_1}/pretrain/logs/rank1.log", "listed in manifest.json but missing") in fails
    write_manifest(copy)  # even with a manifest made to match, the run is incomplete
    assert ("completeness", f"{RUN_1}/pretrain/logs/rank1.log", "rank 1's log is missing") in failures(copy)


def test_an_edited_summary(copy):
    path = copy / RUN_1 / "summary.json"
    summary = json.loads(path.read_text())
    summary["stages"]["pretrain"]["tokens_per_s_per_gpu"] *= 1.5
    path.write_text(json.dumps(summary))
    write_manifest(copy)
    fails = failures(copy)
    assert any(c == "figures" and w == f"{RUN_1}/summary.json" and "stages.pretrain.tokens_per_s_per_gpu" in d
               for c, w, d in fails), fails  # fmt: skip
    sub = json.loads((copy / "submission.json").read_text())
    sub["results"]["finetune"]["tokens_per_s_per_gpu"]["olympic_mean"] = 1e9
    (copy / "submission.json").write_text(json.dumps(sub))
    write_manifest(copy)
    assert any(c == "figures" and w == "submission.json" for c, w, _ in failures(copy))


def test_faster_step_times_than_the_clock(copy):
    """Shrunk step times with a rebuilt manifest and summary: the log's own clock gives them away."""
    log = copy / RUN_1 / "pretrain" / "events.log"
    lines = []
    for line in log.read_text().splitlines():
        if '"key": "kit_step"' in line:
            ev = json.loads(line.removeprefix(":::MLLOG "))
            ev["value"]["step_time_s"] *= 10
            line = ":::MLLOG " + json.dumps(ev)
        lines.append(line)
    log.write_text("\n".join(lines) + "\n")
    from kit.results.summary import run_summary

    s = run_summary(copy / RUN_1)
    s.pop("generated_at")
    (copy / RUN_1 / "summary.json").write_text(json.dumps(s))
    write_manifest(copy)
    fails = failures(copy)
    assert any(c == "clocks" and "is longer than the" in d and "between its stamp and the one before it" in d
               for c, _, d in fails), fails  # fmt: skip


def test_a_changed_learning_rate_in_a_closed_submission(copy):
    """The run's config (config.toml, its one copy) edited after the fact: the rules and the logged lr say so."""
    run = copy / RUN_1
    (run / "config.toml").write_text((run / "config.toml").read_text().replace("lr = 0.01", "lr = 0.05", 1))
    write_manifest(copy)
    fails = failures(copy)
    assert ("rules", "results/cpu_box/llava1_5_7b/run_1",
            "closed division: run_1: pretrain.lr = 0.05, the rules fix 0.01 (fixed by the rules (config tiny))") in fails
    assert any(c == "consistency" and "logged lr" in d for c, _, d in fails), fails


def test_a_stage_missing(copy):
    shutil.rmtree(copy / RUN_1 / "eval")
    write_manifest(copy)
    fails = failures(copy)
    assert any(c == "completeness" and w == "results/cpu_box/llava1_5_7b/run_1" and "eval" in d for c, w, d in fails)


def test_two_runs_from_different_images(copy):
    env_path = copy / "results/cpu_box/llava1_5_7b/run_2/environment.json"
    env = json.loads(env_path.read_text())
    env["case"]["pip_freeze"].append("torch==9.9.9")
    env_path.write_text(json.dumps(env))
    write_manifest(copy)
    assert any(c == "same software" and w == "results/cpu_box/llava1_5_7b/run_2" for c, w, _ in failures(copy))


def test_a_duplicated_run(copy):
    base = copy / "results/cpu_box/llava1_5_7b"
    shutil.copytree(base / "run_1", base / "run_4")
    sub = json.loads((copy / "submission.json").read_text())
    sub["runs"].append({**sub["runs"][0], "dir": "run_4"})
    (copy / "submission.json").write_text(json.dumps(sub))
    write_manifest(copy)
    fails = failures(copy)
    assert any(c == "duplicate run" and w == "results/cpu_box/llava1_5_7b/run_4" and "run_1" in d for c, w, d in fails)


def test_an_unlisted_file(copy):
    (copy / "results/cpu_box/llava1_5_7b/run_2/extra.txt").write_text("x")
    assert ("manifest", "results/cpu_box/llava1_5_7b/run_2/extra.txt", "present but not listed in manifest.json") in failures(copy)


def _keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def test_signatures(tiny_runs, tmp_path):
    key = _keygen(tmp_path / "vendor", "vendor")
    other = _keygen(tmp_path / "other", "other")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"bench@acme.example {(tmp_path / 'vendor.pub').read_text()}")
    wrong = tmp_path / "wrong_signers"
    wrong.write_text(f"bench@acme.example {(tmp_path / 'other.pub').read_text()}")
    system = tmp_path / "system.toml"
    system.write_text(SYSTEM_TOML)
    r = kit_cli("submit", *map(str, tiny_runs), "--system", str(system), "--out", str(tmp_path / "out"),
                "--allow-synthetic", "--sign-key", str(key))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    root = tmp_path / "out" / "Acme_Compute"
    assert (root / "manifest.json.sig").is_file()
    good = verify(root, allowed_signers=allowed)
    assert good.ok, [f for f in good.findings if f.status == "fail"]
    assert any(f.check == "signature" and f.status == "pass" and "bench@acme.example" in f.detail for f in good.findings)
    assert any(c == "signature" for c, _, _ in failures(root, allowed_signers=wrong))
    # A manifest rebuilt after an edit no longer matches the signature.
    (root / RUN_1 / "status.jsonl").write_text((root / RUN_1 / "status.jsonl").read_text() + "\n")
    write_manifest(root)
    assert any(c == "signature" and "does not verify" in d for c, _, d in failures(root, allowed_signers=allowed))
    del other


def test_submit_refusals(tiny_runs, tmp_path, system_toml):
    out = str(tmp_path / "out")
    r = kit_cli("submit", str(tiny_runs[0]), "--system", str(system_toml), "--out", out)
    assert r.returncode == 2 and "is synthetic" in r.stderr and "--allow-synthetic" in r.stderr
    r = kit_cli("submit", str(tiny_runs[0]), str(tiny_runs[0]), "--system", str(system_toml), "--out", out,
                "--allow-synthetic")  # fmt: skip
    assert r.returncode == 2 and "more than once" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('submitter = "x"\nsystem_name = "y"\n')
    r = kit_cli("submit", str(tiny_runs[0]), "--system", str(bad), "--out", out, "--allow-synthetic")
    assert r.returncode == 2 and "missing required key(s) division, status, cooling" in r.stderr
    # A run from different software (its environment says so) cannot join.
    other = tmp_path / "other-run"
    shutil.copytree(tiny_runs[1], other, ignore=shutil.ignore_patterns("checkpoint", "synthetic"))
    env = json.loads((other / "environment.json").read_text())
    env["case"]["pip_freeze"].append("deepspeed==0.0.1")
    (other / "environment.json").write_text(json.dumps(env))
    r = kit_cli("submit", str(tiny_runs[0]), str(other), "--system", str(system_toml), "--out", out,
                "--allow-synthetic")  # fmt: skip
    assert r.returncode == 2 and "[same software]" in r.stderr and "one image per submission" in r.stderr
    # Nor a run from another host.
    env = json.loads((tiny_runs[1] / "environment.json").read_text())
    env["host"]["hostname"] = "elsewhere"
    (other / "environment.json").write_text(json.dumps(env))
    r = kit_cli("submit", str(tiny_runs[0]), str(other), "--system", str(system_toml), "--out", out,
                "--allow-synthetic")  # fmt: skip
    assert r.returncode == 2 and "[same system]" in r.stderr and "one submission per system" in r.stderr
    # Nor one whose device facts were replayed from a recording instead of read from its host.
    env = json.loads((tiny_runs[1] / "environment.json").read_text())
    env["host"]["accelerators"] = {"vendor": "nvidia", "available": True, "replayed_from": "nvml-h200x2.json",
                                   "devices": []}  # fmt: skip
    (other / "environment.json").write_text(json.dumps(env))
    r = kit_cli("submit", str(other), "--system", str(system_toml), "--out", out, "--allow-synthetic")
    assert r.returncode == 2 and "replayed from the recording nvml-h200x2.json" in r.stderr
    # A run whose last state is not finished.
    with open(other / "status.jsonl", "a") as f:
        f.write(json.dumps({"t": 0, "stage": None, "state": "interrupted", "detail": None}) + "\n")
    r = kit_cli("submit", str(other), "--system", str(system_toml), "--out", out, "--allow-synthetic")
    assert r.returncode == 2 and "the run is interrupted, not finished" in r.stderr and "kit resume" in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_run_with_a_changed_learning_rate(throughput_run, tmp_path, system_toml):
    """A real run with --set pretrain.lr: refused in the closed division; in the open one the break is allowed and
    listed, and kit submit still refuses one run where the throughput category needs five (as verify would fail it).
    Packed anyway (the library's writer, past the refusal), verify passes the listed break, fails the run count,
    and catches a break taken out of the list."""
    run = throughput_run
    r = kit_cli("submit", str(run), "--system", str(system_toml), "--out", str(tmp_path / "closed"), "--allow-synthetic")
    assert r.returncode == 2, r.stdout
    assert "closed division allows no change" in r.stderr and "pretrain.lr = 0.02" in r.stderr
    open_toml = tmp_path / "open.toml"
    open_toml.write_text(SYSTEM_TOML.replace('division = "closed"', 'division = "open"'))
    r = kit_cli("submit", str(run), "--system", str(open_toml), "--out", str(tmp_path / "open"), "--allow-synthetic")
    assert r.returncode == 2, r.stdout + r.stderr
    text = " ".join(r.stderr.split())
    assert "[runs] results: 1 run(s); the throughput category needs 5" in text and "[rules]" not in text, text
    from kit.case import rules as rules_mod
    from kit.submission.packer import prepare, write

    packed = write(prepare([run], open_toml, rules_mod.load("llava1_5_7b"), allow_synthetic=True), tmp_path / "open")
    assert [b.key for b in packed.breaks] == ["pretrain.lr"] and packed.category == "throughput"
    root = packed.root
    rep = verify(root)
    assert any(f.check == "rules" and f.status == "pass" and "1 break" in f.detail for f in rep.findings)
    assert ("runs", "results", "1 run(s); the throughput category needs 5 for an honest spread") in [
        (c, w, d) for c, w, d in failures(root)]
    sub = json.loads((root / "submission.json").read_text())
    sub["breaks"] = []
    (root / "submission.json").write_text(json.dumps(sub))
    write_manifest(root)
    assert any(c == "rules" and "unlisted" in d and "pretrain.lr" in d for c, _, d in failures(root))


def test_the_data_identity_is_stated_and_checked(copy):
    """submission.json states the data's identity from the runs' inputs.json; a claim that differs, or runs that
    read different verified copies, fail by name."""
    sub = json.loads((copy / "submission.json").read_text())
    inputs = json.loads((copy / RUN_1 / "inputs.json").read_text())
    stages = inputs["data"]["stages"]
    assert sub["data"] == {
        "manifest": None,  # synthetic: generated data has no `kit data verify` manifest
        "record_files": {s: {"file": e["records_file"], "sha256": e["sha256"]} for s, e in stages.items()},
        "filtered": {},
    }
    sub["data"]["filtered"] = {"finetune": {"dropped": 0}}
    (copy / "submission.json").write_text(json.dumps(sub))
    write_manifest(copy)
    assert ("same inputs", "submission.json",
            "submission.json's data (manifest, record files, filtered records) is not what "
            "results/cpu_box/llava1_5_7b/run_1/inputs.json recorded") in failures(copy)  # fmt: skip
    run2 = copy / "results/cpu_box/llava1_5_7b/run_2/inputs.json"
    other = json.loads(run2.read_text())
    other["data"]["manifest"] = {"digest": "f" * 64, "valid": True, "ok": True}
    run2.write_text(json.dumps(other))
    write_manifest(copy)
    assert any(c == "same inputs" and d.startswith(f"data manifest digest {'f' * 64} vs")
               for c, _, d in failures(copy))  # fmt: skip
