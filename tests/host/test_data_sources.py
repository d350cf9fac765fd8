"""The data side of the case seam: the counts of a complete copy in one file (data-sources.toml, read generically per
training stage), the case chosen when none is named, and inputs.json read whichever kit wrote it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kit import case as cases
from kit.case import data as case_data
from kit.cli import app
from kit.data import identity, sources

CASE = cases.get("llava1_5_7b")
STAGES = cases.training(CASE)
SHIPPED = Path(CASE.data.SOURCES).read_text()


def _load(tmp_path: Path, text: str) -> sources.Sources:
    p = tmp_path / "data-sources.toml"
    p.write_text(text)
    return sources.load(p, STAGES)


def test_the_shipped_counts_are_read_per_training_stage():
    ref = case_data.reference(CASE)
    assert ref.records == {"pretrain": 558_128, "finetune": 665_298}
    assert sum(ref.by_source["finetune"].values()) == ref.records["finetune"] and "pretrain" not in ref.by_source
    assert ref.folders["vg/VG_100K_2"] == 43_903
    # The finetune image folders the case declares are the ones the counts name (one list, in the sources file).
    assert case_data.stage(CASE, None, "finetune").folders == tuple(ref.folders)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("finetune_records = 665298", 'finetune_records = "many"'),
         "[reference].finetune_records: must be an integer"),
        (lambda s: s.replace("pretrain_records = 558128", ""), "[reference].pretrain_records: must be an integer"),
        (lambda s: s.replace("pretrain_records = 558128", "pretrain_records = 558128\nvideo_records = 3"),
         "[reference]: 'video' is not a training stage of the case (pretrain, finetune)"),
        (lambda s: s.replace("coco = 364100", "coco = 364101"),
         "[reference.finetune_by_source]: sums to 665,299, not finetune_records = 665,298"),
        (lambda s: s.replace("[reference.folders]", "[reference.shelves]"), "[reference]: unknown key shelves"),
    ],
)
def test_a_wrong_count_is_named_with_its_file_and_key(tmp_path, edit, message):
    with pytest.raises(sources.SourcesError) as e:
        _load(tmp_path, edit(SHIPPED))
    assert str(e.value).startswith(f"{tmp_path / 'data-sources.toml'}: ") and message in str(e.value)


def test_without_the_case_stages_any_stage_counts(tmp_path):
    """`kit data fetch --sources FILE` reads a site's own file; its counts need no stage list to parse."""
    p = tmp_path / "s.toml"
    p.write_text('schema = "kit.data-sources/1"\n[reference]\na_records = 1\n[[source]]\nname = "x"\nwhat = "x"\n'
                 'kind = "covers"\nroot = "data"\nindex = "the x index"\nhome = "https://x.example/"\n')  # fmt: skip
    s = sources.load(p)
    assert s.reference.records == {"a": 1} and s.get("x").index == "the x index" and s.get("x").home


class _Other:
    """A second registered case, as a plug-in would register it: only its name is needed to be listed."""

    name = "toy"


def test_with_several_cases_a_data_command_asks_for_case(monkeypatch, tmp_path):
    monkeypatch.setattr(cases, "_CACHE", {CASE.name: CASE, "toy": _Other()})
    assert case_data.choose(CASE.name) is CASE
    with pytest.raises(cases.UnknownCase) as e:
        case_data.choose(None)
    assert "known cases: llava1_5_7b, toy" in str(e.value)
    for argv in (["data", "verify", "--data", str(tmp_path)], ["data", "fetch", "--data", str(tmp_path), "--dry-run"]):
        r = CliRunner().invoke(app, argv, env={"COLUMNS": "300"})
        assert r.exit_code == 2, r.output
        assert "known cases: llava1_5_7b, toy" in " ".join(r.output.split()), r.output


def test_the_only_case_is_taken_when_none_is_named(monkeypatch):
    monkeypatch.setattr(cases, "_CACHE", {CASE.name: CASE})
    assert case_data.choose(None) is CASE
    cfg = cases.load_config(CASE, "tiny")
    assert case_data.of_config(cfg) is CASE  # a typed config names its case through its schema


def test_inputs_json_parts_whichever_kit_wrote_them():
    """kit.inputs/1 named the eval set's part after the eval set; /2 calls it eval_data. Readers ask `part`."""
    old = {"schema": "kit.inputs/1", "synthetic": False, "data": {"digest": "d"}, "weights": {"digest": "w"},
           CASE.data.eval_set().name.lower(): {"digest": "e"}}  # fmt: skip
    new = {"schema": identity.INPUTS_SCHEMA, "synthetic": True, "data": {"digest": "d"},
           "weights": {"random_init": True, "seed": 42, "digest": None}, "eval_data": {"generated": True, "digest": None}}
    assert identity.digests(old) == {"data": "d", "weights": "w", "eval_data": "e"}
    assert identity.digests(new) == {"data": "d", "weights": "random init (seed 42)", "eval_data": "generated"}
    assert identity.part({"schema": "kit.inputs/1", "data": None, "weights": None}, "eval_data") is None
    assert json.loads(json.dumps(identity.digests(None))) == {"data": None, "weights": None, "eval_data": None}


def test_inputs_of_a_synthetic_run_and_of_an_eval_set(tmp_path):
    """What a run read comes from the case's declarations: its generated set (records, tokenizer) with --synthetic;
    the eval set's parquet files with --eval-data."""
    from . import datagen

    synth = datagen.make(tmp_path / "synthetic", faults=False, mmmu=False).root
    (synth / "tokenizer").mkdir()
    (synth / "tokenizer" / "tokenizer.json").write_text('{"model": "bpe"}')
    cfg = cases.load_config(CASE, "tiny").to_dict()
    out = identity.collect(data=None, models=None, synthetic_dir=synth, stages=["pretrain", "finetune", "eval"],
                           config=cfg, cache_path=None)  # fmt: skip
    assert out["schema"] == identity.INPUTS_SCHEMA and out["synthetic"] is True
    assert set(out["data"]["stages"]) == {"pretrain", "finetune"} and out["data"]["digest"]
    w = out["weights"]
    assert w["random_init"] is True and w["seed"] == cfg["train"]["seed"] and w["digest"] is None
    assert set(w["tokenizer"]["files"]) == {"tokenizer.json"}
    assert out["eval_data"] == {"generated": True, "digest": None}
    # A real eval set: its parquet files hashed (nothing else in its folder), whatever name the caller used.
    ev = tmp_path / "eval"
    assert datagen.write_parquet_mmmu(ev)
    (ev / "README.md").write_text("not the data")
    real = identity.collect(case=CASE, data=None, models=None, synthetic_dir=None, stages=["eval"], config=cfg,
                            cache_path=None, eval_data=ev)  # fmt: skip
    old_name = identity.collect(data=None, models=None, synthetic_dir=None, stages=["eval"], config=cfg,
                                cache_path=None, mmmu=ev)  # fmt: skip
    assert real["data"] is None and real["weights"] is None
    assert len(real["eval_data"]["files"]) == len(CASE.data.eval_set().groups) and real["eval_data"]["digest"]
    assert old_name["eval_data"] == real["eval_data"]
