"""Synthetic data: the real layout and schema, loadable by the pipeline, deterministic, reusable."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from cases.llava1_5_7b import config as case_config
from cases.llava1_5_7b import synthetic
from cases.llava1_5_7b.data import LlavaDataset
from cases.llava1_5_7b.tokenizer import Tokenizer

CFG = dataclasses.replace(case_config.load("tiny").synthetic, text_only_fraction=0.1)
N_PRE, N_FT, MAX_LEN = 40, 60, 96


def _make(out: Path) -> dict:
    return synthetic.generate(out, CFG, pretrain_records=N_PRE, finetune_records=N_FT, max_length=MAX_LEN)


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    return out, _make(out)


def test_layout_and_counts(gen: tuple[Path, dict]) -> None:
    out, summary = gen
    pre = json.loads((out / "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json").read_text())
    ft = json.loads((out / "llava_v1_5_mix665k.json").read_text())
    assert len(pre) == N_PRE and len(ft) == N_FT
    text_only = [r for r in ft if "image" not in r]
    assert len(text_only) == summary["text_only_records"] == round(N_FT * 0.1)
    assert summary["images"] == N_PRE + N_FT - len(text_only)
    for r in pre:
        assert re.fullmatch(r"\d{9}", r["id"]) and r["image"] == f"{r['id'][:5]}/{r['id']}.jpg"
        assert (out / "LLaVA-Pretrain/images" / r["image"]).is_file()
    folders = {f for f, _, _ in synthetic.FINETUNE_FOLDERS}
    for r in ft:
        if "image" in r:
            assert str(Path(r["image"]).parent) in folders and (out / r["image"]).is_file()
    assert (out / ".complete").is_file() and not (out / ".generating").exists()
    assert (out / "tokenizer/tokenizer.model").is_file() and (out / "tokenizer/tokenizer_config.json").is_file()


def test_images_are_real_jpegs_in_the_size_range(gen: tuple[Path, dict]) -> None:
    out, _ = gen
    for p in sorted((out / "LLaVA-Pretrain/images").rglob("*.jpg"))[:10]:
        with Image.open(p) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert all(CFG.image_min_side <= s <= CFG.image_max_side for s in img.size)


def test_loads_through_the_pipeline_with_both_templates(gen: tuple[Path, dict]) -> None:
    out, _ = gen
    tok = Tokenizer.from_dir(out / "tokenizer")
    assert tok.vocab_size <= CFG.tokenizer_vocab and tok.model_max_length == MAX_LEN
    pre_json, pre_images = out / "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", out / "LLaVA-Pretrain/images"
    for template in ("plain", "v1"):
        ds = LlavaDataset(pre_json, pre_images, tok, template, "crop", 28)
        assert len(ds) == N_PRE and not ds.skipped
        assert all(ds[i]["image"].shape == (3, 28, 28) for i in range(len(ds)))
    ft = LlavaDataset(out / "llava_v1_5_mix665k.json", out, tok, "v1", "pad", 28)
    items = [ft[i] for i in range(len(ft))]
    assert sum(x["image"] is None for x in items) == round(N_FT * 0.1)
    assert all((x["labels"] != -100).any() for x in items)
    assert sum(len(x["input_ids"]) > MAX_LEN for x in items) > 0  # some run beyond max_length
    lengths = ft.modality_lengths()
    assert sum(v < 0 for v in lengths) == round(N_FT * 0.1)


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != ".complete":  # the marker holds the elapsed time
            h.update(str(p.relative_to(out)).encode() + p.read_bytes())
    return h.hexdigest()


def test_deterministic_from_seed(gen: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = gen
    _make(tmp_path / "again")
    assert _digest(tmp_path / "again") == _digest(out)
    other = synthetic.generate(tmp_path / "other", dataclasses.replace(CFG, seed=7), pretrain_records=N_PRE,
                               finetune_records=N_FT, max_length=MAX_LEN)
    assert _digest(Path(other["out_dir"])) != _digest(out)


def test_reuse_regeneration_and_interrupted_runs(tmp_path: Path) -> None:
    out = tmp_path / "s"
    small = dict(pretrain_records=4, finetune_records=6, max_length=MAX_LEN)
    assert synthetic.generate(out, CFG, **small)["reused"] is False
    assert synthetic.generate(out, CFG, **small)["reused"] is True
    changed = synthetic.generate(out, CFG, pretrain_records=5, finetune_records=6, max_length=MAX_LEN)
    assert changed["reused"] is False
    assert len(json.loads((out / "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json").read_text())) == 5
    # An interrupted generation (no .complete marker) is redone, never taken as finished.
    (out / ".complete").unlink()
    (out / ".generating").write_text("pid 1\n")
    assert synthetic.generate(out, CFG, **small)["reused"] is False
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no synthetic data"):
        synthetic.generate(foreign, CFG, **small)


def test_cli_prints_summary(tmp_path: Path, capsys) -> None:
    rc = synthetic.main(["--config", "tiny", "--out", str(tmp_path / "c"), "--pretrain-records", "3",
                         "--finetune-records", "5"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pretrain_records"] == 3 and summary["finetune_records"] == 5
    assert summary["params"]["max_length"] == case_config.load("tiny").model.max_length
