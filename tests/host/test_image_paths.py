"""Records whose image path leaves the data root (absolute, or climbing out with `..`) are schema errors named by
record wherever the validator runs: `kit data verify`, `kit data fix`, `kit check-host --deep` and `kit run`'s
check of the record files. Nothing outside the data root is opened: every file this process opens is audited
(Python's "open" audit event), and the images decode in this process (--jobs 1)."""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cases.llava1_5_7b import config as case_config
from kit.checks import data as data_checks
from kit.cli import app

from . import datagen

runner = CliRunner()
# The three, and one that escapes to a real JPEG beside the data root (the loader would train on it).
ESCAPING = ["../../../../etc/passwd", "/etc/hostname", "coco/../../../../../../proc/self/environ", "../outside.jpg"]
WHY = {
    "../../../../etc/passwd": "climbs out of the stage's image folder with '..'",
    "/etc/hostname": "is absolute; an image is a path relative to the stage's image folder",
    "coco/../../../../../../proc/self/environ": "climbs out of the stage's image folder with '..'",
    "../outside.jpg": "climbs out of the stage's image folder with '..'",
}
_opens: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opens is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _opens.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # for good (hooks cannot be removed): it records only inside audited()


@contextmanager
def audited() -> Iterator[list[str]]:
    global _opens
    _opens = []
    try:
        yield _opens
    finally:
        _opens = None


def outside(opened: list[str], root: Path) -> list[str]:
    """The opened files that are one of the escaping records' targets."""
    targets = {os.path.realpath(os.path.join(root, image)) for image in ESCAPING}
    targets |= {os.path.realpath(os.path.join(root, "LLaVA-Pretrain/images", image)) for image in ESCAPING}
    return [p for p in opened if os.path.realpath(p) in targets]


@pytest.fixture
def escaping(tmp_path: Path) -> datagen.Planted:
    """Clean data in the real layout, plus one finetune record per escaping path and one pretrain record."""
    p = datagen.make(tmp_path / "data", faults=False, mmmu=False)
    datagen.jpeg(tmp_path / "outside.jpg", random.Random(3))
    datagen.jpeg(tmp_path / "data" / "outside.jpg", random.Random(4))  # pretrain's '..' lands here
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A file."}]
    for k, image in enumerate(ESCAPING):
        p.faults[image] = {"stage": "finetune", "index": len(p.finetune), "id": f"esc-{k}"}
        p.finetune.append({"id": f"esc-{k}", "image": image, "conversations": conv})
    p.faults["pretrain"] = {"stage": "pretrain", "index": len(p.pretrain), "id": "esc-pre"}
    p.pretrain.append({"id": "esc-pre", "image": "../../outside.jpg", "conversations": conv})
    (p.root / datagen.FINETUNE_JSON).write_text(json.dumps(p.finetune))
    (p.root / datagen.PRETRAIN_JSON).write_text(json.dumps(p.pretrain))
    return p


def flat(text: str) -> str:
    return " ".join(text.split())


def test_verify_names_every_escaping_record_and_opens_none(escaping):
    root, f = escaping.root, escaping.faults
    with audited() as opened:
        r = runner.invoke(app, ["data", "verify", "--data", str(root), "--jobs", "1"], env={"COLUMNS": "1000"})
    assert r.exit_code == 1, r.output
    t = flat(r.stdout)
    assert "FAIL finetune records: schema: 4 record(s) in llava_v1_5_mix665k.json" in t
    for image in ESCAPING:
        assert (f"finetune record #{f[image]['index']} (id '{f[image]['id']}'): image path escapes the data root: "
                f"{image!r} {WHY[image]}") in t, image
    assert (f"pretrain record #{f['pretrain']['index']} (id 'esc-pre'): image path escapes the data root: "
            "'../../outside.jpg' climbs out of the stage's image folder with '..'") in t
    assert "unreadable" not in t and "download these" not in t  # what the escaping paths were reported as before
    assert opened and outside(opened, root) == []
    j = json.loads(runner.invoke(app, ["data", "verify", "--data", str(root), "--json", "--jobs", "1"]).stdout)
    assert j["stages"]["finetune"]["bad_records"] == {"schema": 4}
    assert j["images"]["problems"] == {} and j["images"]["unique"] == len(escaping.images)


def test_fix_drops_them_from_the_filtered_file(escaping):
    root, f = escaping.root, escaping.faults
    with audited() as opened:
        r = runner.invoke(app, ["data", "fix", "--data", str(root), "--write-filtered", "--jobs", "1"],
                          env={"COLUMNS": "1000"})  # fmt: skip
    assert r.exit_code == 0, r.output
    assert outside(opened, root) == []
    side = json.loads((root / "llava_v1_5_mix665k.filtered.json.kit-filter.json").read_text())
    assert [(d["id"], d["reason"]) for d in side["dropped"]] == [(f[i]["id"], "schema") for i in ESCAPING]
    kept = json.loads((root / "llava_v1_5_mix665k.filtered.json").read_text())
    assert not [rec for rec in kept if rec.get("image") in ESCAPING]


def test_check_host_deep_names_them(escaping):
    cfg = case_config.load("A800x1x8")
    with audited() as opened:
        rows = {c.name: c for c in data_checks.data_checks(cfg, escaping.root, deep=True)}
    schema = rows["verify: finetune records: schema"]
    assert schema.status == "fail" and schema.detail.startswith("4 record(s) in llava_v1_5_mix665k.json")
    assert "finetune record #" in schema.detail and "image path escapes the data root: '/etc/hostname' is absolute" \
        in schema.detail
    assert rows["verify: pretrain records: schema"].status == "fail"
    assert outside(opened, escaping.root) == []


def test_kit_run_refuses_them_before_anything_is_created(escaping, tmp_path):
    models = tmp_path / "models"
    datagen.write_models(models)
    results = tmp_path / "runs"
    argv = ["run", "llava1_5_7b", "--config", "tiny", "--native", "--stage", "train", "--data", str(escaping.root),
            "--models", str(models), "--results", str(results)]  # fmt: skip
    with audited() as opened:
        r = runner.invoke(app, argv, env={"COLUMNS": "1000"})
    assert r.exit_code == 2, r.output
    pre = escaping.faults["pretrain"]
    assert (f"{escaping.root / datagen.PRETRAIN_JSON}: 1 of {len(escaping.pretrain)} records cannot be used (plain "
            f"template): record #{pre['index']} (id 'esc-pre'): image path escapes the data root: '../../outside.jpg'"
            in flat(r.output)), r.output  # fmt: skip
    # Without it, the finetune file's four are named (the first three, then a count).
    (escaping.root / datagen.PRETRAIN_JSON).write_text(json.dumps(escaping.pretrain[:-1]))
    with audited() as more:
        r = runner.invoke(app, argv, env={"COLUMNS": "1000"})
    assert r.exit_code == 2, r.output
    t = flat(r.output)
    first = escaping.faults[ESCAPING[0]]
    assert f"{escaping.root / datagen.FINETUNE_JSON}: 4 of {len(escaping.finetune)} records cannot be used" in t, t
    assert (f"record #{first['index']} (id '{first['id']}'): image path escapes the data root: "
            "'../../../../etc/passwd' climbs out of the stage's image folder with '..'") in t
    assert "and 1 more" in t
    assert not results.exists() or not any(results.iterdir())  # nothing created
    assert outside(opened + more, escaping.root) == []
