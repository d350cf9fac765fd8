"""The data's identity after `kit data`: a filtered record file's provenance (its sidecar) and the data manifest,
as `kit run` records them in inputs.json, as the rules admit them, and as `kit check-host` reads the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cases.llava1_5_7b import config as case_config
from kit import identity, rules

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
