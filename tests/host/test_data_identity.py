"""The data's identity after `kit data`: a filtered record file's provenance (its sidecar) and the data manifest,
as `kit run` records them in inputs.json, as the rules admit them, and as `kit check-host` reads the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cases.llava1_5_7b import config as case_config
from kit.case import rules
from kit.data import identity

FT = "llava_v1_5_mix665k.json"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def filtered_copy(data: Path, dropped: dict[str, int], name: str = "llava_v1_5_mix665k.filtered.json") -> Path:
    """A record file and its sidecar as `kit data fix --write-filtered` writes them (kit.data-filter/1)."""
    orig = data / FT
    out = data / name
    out.write_text(json.dumps([{"id": "kept"}]))
    side = out.with_name(out.name + identity.FILTER_SUFFIX)
    side.write_text(json.dumps({
        "schema": identity.FILTER_SCHEMA,
        "source": {"file": FT, "sha256": _sha(orig), "records": 1 + sum(dropped.values())},
        "output": {"file": out.name, "sha256": _sha(out), "records": 1},
        "dropped": [{"index": i, "id": f"d{i}", "reason": r, "detail": ""} for r, n in dropped.items() for i in range(n)],
        "counts": dropped, "written": "2026-12-01T00:00:00Z",
    }))  # fmt: skip
    return out


def _facts(tmp_path: Path, data: Path, finetune_json: str, records: int) -> dict:
    cfg = case_config.load("A800x1x8", [f"data.finetune_json={finetune_json}"]).to_dict()
    inputs = identity.collect(data=data, models=None, mmmu=None, synthetic_dir=None, stages=["finetune"],
                              config=cfg, cache_path=None)  # fmt: skip
    stage = {"records": records, "steps_planned": 1, "steps_total": 1, "global_batch": 128}
    return {"config": cfg, "synthetic": False, "stages": {"finetune": stage}, "inputs": inputs}


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / FT).write_text(json.dumps([{"id": "kept"}, {"id": "gone"}]))
    return data


def test_the_sidecar_is_recorded_only_for_the_file_it_describes(tmp_path):
    data = _data(tmp_path)
    out = filtered_copy(data, {"missing": 3})
    prov = identity.filter_provenance(out, _sha(out))
    assert prov["valid"] and prov["source_file"] == FT and prov["dropped"] == 3 and prov["records"] == 1
    out.write_text(json.dumps([{"id": "edited"}]))  # edited after it was written: the sidecar is no longer its own
    prov = identity.filter_provenance(out, _sha(out))
    assert not prov["valid"] and "is not this file's" in prov["problem"]
    assert identity.filter_provenance(data / FT, _sha(data / FT)) is None  # an original has no sidecar


def _keys(breaks) -> dict[str, str]:
    return {b.key: b.rule for b in breaks}


def test_a_filtered_file_stands_in_for_the_fixed_one_within_the_rules(tmp_path):
    r = rules.load("llava1_5_7b")
    data = _data(tmp_path)
    filtered_copy(data, {"missing": 355})
    got = _keys(rules.check_run(r, _facts(tmp_path, data, "llava_v1_5_mix665k.filtered.json", 665298 - 355), "full"))
    assert "data.finetune_json" not in got and "finetune.records" not in got
    # The records must be the reference's less exactly the dropped ones.
    got = _keys(rules.check_run(r, _facts(tmp_path, data, "llava_v1_5_mix665k.filtered.json", 665298 - 300), "full"))
    assert got["finetune.records"] == "the reference data set less the 355 records filtered out"


def test_a_filtered_file_outside_the_rules_is_a_break_that_says_why(tmp_path):
    r = rules.load("llava1_5_7b")
    data = _data(tmp_path)
    filtered_copy(data, {"missing": 1, "odd-turns": 2}, "a.json")
    filtered_copy(data, {"missing": 1001}, "b.json")
    why = {name: _keys(rules.check_run(r, _facts(tmp_path, data, name, 665298), "full"))["data.finetune_json"]
           for name in ("a.json", "b.json")}  # fmt: skip
    assert why["a.json"].endswith("it drops records for odd-turns; only missing, empty, unreadable may be dropped")
    assert why["b.json"].endswith("it drops 1,001 records, more than the 1,000 the rules admit")
    (data / "c.json").write_text("[]")  # no sidecar at all: the plain break, without a filter's reason
    assert _keys(rules.check_run(r, _facts(tmp_path, data, "c.json", 665298), "full"))["data.finetune_json"] == (
        "fixed by the rules (config A800x1x8)")


def test_real_data_must_have_been_verified(tmp_path):
    r = rules.load("llava1_5_7b")
    data = _data(tmp_path)
    got = _keys(rules.check_run(r, _facts(tmp_path, data, FT, 665298), "full"))
    assert got["data.manifest"] == "data verified by `kit data verify` before the run"


def test_a_verified_copy_is_recorded_by_the_run_and_read_by_check_host(tmp_path):
    """kit data verify -> kit-data-manifest.json -> inputs.json (kit run) and the check-host row; an edit since the
    verify makes both say the manifest no longer holds."""
    from typer.testing import CliRunner

    from kit.checks.data import manifest_check
    from kit.cli import app

    from . import datagen

    data = datagen.make(tmp_path / "data", faults=False, mmmu=False).root
    r = CliRunner().invoke(app, ["data", "verify", "--data", str(data)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    cfg = case_config.load("A800x1x8").to_dict()

    def inputs() -> dict:
        return identity.collect(data=data, models=None, mmmu=None, synthetic_dir=None, stages=["pretrain", "finetune"],
                                config=cfg, cache_path=None)["data"]  # fmt: skip

    m = inputs()["manifest"]
    assert m["valid"] and m["ok"] and len(m["digest"]) == 64
    assert m["stages"]["finetune"]["sha256"] == _sha(data / FT)
    assert ".kit-data" not in inputs()["stages"]["finetune"]["image_folders"]
    row = manifest_check(data)
    assert row.status == "ok" and row.detail.startswith("verified ") and m["digest"][:16] in row.detail
    facts = {"config": cfg, "synthetic": False, "inputs": {"data": inputs()},
             "stages": {"finetune": {"records": 665298, "steps_planned": 1, "steps_total": 1, "global_batch": 128}}}
    assert "data.manifest" not in _keys(rules.check_run(rules.load("llava1_5_7b"), facts, "full"))
    # The finetune records edited after the verify: recorded as stale, and check-host says to verify again.
    recs = json.loads((data / FT).read_text())
    (data / FT).write_text(json.dumps(recs[:-1]))
    m = inputs()["manifest"]
    assert not m["valid"] and m["stale"] == [FT] and m["problem"] == f"changed since `kit data verify`: {FT}"
    row = manifest_check(data)
    assert row.status == "warn" and row.detail.startswith(f"{FT} changed since `kit data verify`")
    assert row.fix == f"run `kit data verify --data {data}` again"
    facts["inputs"]["data"] = inputs()
    assert "data.manifest" in _keys(rules.check_run(rules.load("llava1_5_7b"), facts, "full"))


def test_check_host_names_what_the_verify_found(tmp_path):
    from typer.testing import CliRunner

    from kit.checks.data import manifest_check
    from kit.cli import app

    from . import datagen

    data = datagen.make(tmp_path / "data", mmmu=False).root  # one of each fault
    assert manifest_check(data).status == "warn" and "have not been verified" in manifest_check(data).detail
    r = CliRunner().invoke(app, ["data", "verify", "--data", str(data)], env={"COLUMNS": "200"})
    assert r.exit_code == 1, r.output
    row = manifest_check(data)
    assert row.status == "fail" and row.detail.endswith(
        "found 1 empty image, 2 missing images, 1 unreadable image, 5 unusable records, 1 wrong-format image")
    assert row.fix.startswith(f"run `kit data fix --data {data}`")
    (data / "kit-data-manifest.json").write_text("{torn")
    assert manifest_check(data).status == "warn" and "not valid JSON" in manifest_check(data).detail


def test_kit_run_reads_the_manifest_before_the_launch(tmp_path, monkeypatch):
    """Unusable images that `kit data verify` found among the records a run reads stop `kit run` before anything is
    created (beyond data.skip_bad_records); no manifest at all is a warning."""
    from typer.testing import CliRunner

    from kit.checks import system
    from kit.cli import app
    from kit.run import stages

    from . import datagen

    data = datagen.make(tmp_path / "data", faults=False, mmmu=False).root
    models = tmp_path / "models"
    datagen.write_models(models)
    monkeypatch.setattr(system, "free_bytes", lambda p: (Path(p), 10**15))
    started = []
    monkeypatch.setattr(stages, "execute", lambda run, console, **kw: started.append(run) or 0)  # the launch itself

    def run(*extra: str):
        r = CliRunner().invoke(app, ["run", "llava1_5_7b", "--config", "tiny", "--native", "--stage", "train",
                                     "--data", str(data), "--models", str(models), "--results", str(tmp_path / "runs"),
                                     *extra], env={"COLUMNS": "1000"})  # fmt: skip
        return r, " ".join(r.output.split())

    r, out = run()
    assert r.exit_code == 0 and len(started) == 1, r.output
    assert f"warning: {data} has no kit-data-manifest.json: its images have not been verified" in out
    made = sorted((tmp_path / "runs").iterdir()) if (tmp_path / "runs").is_dir() else []  # by the run let through
    gqa = data / "gqa/images/1.jpg"
    gqa.write_bytes(gqa.read_bytes()[:100])  # truncated: it no longer decodes
    assert CliRunner().invoke(app, ["data", "verify", "--data", str(data)]).exit_code == 1
    r, out = run()
    assert r.exit_code == 2 and len(started) == 1, r.output
    assert (f"error: {data}: `kit data verify` (" in out and "found 1 image(s) named by the finetune records "
            "llava_v1_5_mix665k.json that cannot be used (1 unreadable): the run would stop when it draws the first; "
            f"run `kit data fix --data {data} --write-filtered`" in out)  # fmt: skip
    assert (sorted((tmp_path / "runs").iterdir()) if (tmp_path / "runs").is_dir() else []) == made  # nothing created
    r, out = run("--set", "data.skip_bad_records=1")
    assert r.exit_code == 0 and len(started) == 2, r.output
