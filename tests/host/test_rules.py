"""The submission rules as data (rules.toml against the config schema), olympic means, input identity, host facts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cases.llava1_5_7b import config as case_config
from kit.case import rules
from kit.data import identity
from kit.run.hostfacts import device_facts
from kit.vendors.nvidia import NvidiaVendor

RULES = Path(rules.cases.get("llava1_5_7b").root / "rules.toml")
RECORDING = Path(__file__).resolve().parents[1] / "fixtures" / "hosts" / "nvml-h200x2.json"


def test_shipped_rules_load_and_every_shipped_config_is_closed():
    r = rules.load("llava1_5_7b")
    assert r.records == {"pretrain": 558128, "finetune": 665298}
    assert (r.questions, r.decoding, r.runs_needed("full"), r.runs_needed("throughput")) == (900, "greedy", 3, 5)
    for name in case_config.available():
        cfg = case_config.load(name)
        assert rules.check_config(r, cfg.to_dict(), synthetic=name == "tiny") == [], name


def test_fixed_keys_are_caught():
    r = rules.load("llava1_5_7b")
    cfg = case_config.load("A800x1x8", ["finetune.lr=3e-5", "finetune.micro_batch=8", "model.llm.layers=40"])
    found = {b.key: (b.expected, b.found) for b in rules.check_config(r, cfg.to_dict(), synthetic=False)}
    assert found == {"finetune.lr": (2e-5, 3e-5), "model.llm.layers": (32, 40)}  # micro_batch is free


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rules.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace('"*.micro_batch", ', ""), "config key finetune.micro_batch is neither fixed nor free"),
        (lambda s: s.replace('"*.micro_batch", ', '"*.micro_batch", "*.lr", '), "is both fixed ('*.lr') and free"),
        (lambda s: s.replace('"*.sampler",', '"*.sampler", "train.momentum",'), "'train.momentum' names no key"),
        (lambda s: s.replace('config = "A800x1x8"', 'config = "B200x9"'), "reference config 'B200x9' does not exist"),
        # The record counts live in data-sources.toml alone (test_data_sources.py): a second copy here is refused.
        (lambda s: s + "\n[stages.finetune]\nrecords = 665298\n", "unknown table stages"),
        (lambda s: s.replace("runs = 3", "runs = 0"), "categories.full.runs must be at least 1"),
        (lambda s: s + "\n[extras]\nx = 1\n", "unknown table extras"),
    ],
)
def test_a_wrong_rules_file_is_named(tmp_path, edit, message):
    p = _write(tmp_path, edit(RULES.read_text()))
    with pytest.raises(rules.RulesError, match="rules.toml") as e:
        rules.load("llava1_5_7b", p)
    assert message in str(e.value)


def test_olympic_mean():
    assert rules.olympic_mean([5.0, 1.0, 3.0]) == 3.0  # 1 and 5 dropped
    assert rules.olympic_mean([10.0, 1.0, 2.0, 3.0, 4.0]) == 3.0  # (2 + 3 + 4) / 3
    assert rules.olympic_mean([1.0, 2.0]) == 1.5  # too few to drop anything
    assert rules.olympic_mean([]) is None


def test_inputs_identity_of_a_real_layout(tmp_path):
    data, models = tmp_path / "data", tmp_path / "models"
    (data / "LLaVA-Pretrain" / "images" / "00000").mkdir(parents=True)
    (data / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json").write_text('[{"id": "1"}]')
    (data / "LLaVA-Pretrain" / "images" / "00000" / "1.jpg").write_bytes(b"\xff\xd8jpeg")
    (data / "coco" / "train2017").mkdir(parents=True)
    (data / "coco" / "train2017" / "a.jpg").write_bytes(b"12345")
    (data / "llava_v1_5_mix665k.json").write_text("[]")
    for sub in ("vicuna-7b-v1.5", "clip-vit-large-patch14-336"):
        (models / sub).mkdir(parents=True)
        (models / sub / "config.json").write_text(json.dumps({"name": sub}))
        (models / sub / "model.safetensors").write_bytes(sub.encode() * 100)
        (models / sub / "README.md").write_text("not part of the weights")
    cfg = case_config.load("A800x1x8").to_dict()
    cache = tmp_path / "cache.json"
    out = identity.collect(data=data, models=models, mmmu=None, synthetic_dir=None,
                           stages=["pretrain", "finetune", "eval"], config=cfg, cache_path=cache)  # fmt: skip
    pre = out["data"]["stages"]["pretrain"]
    assert pre["sha256"] == identity.sha256_file(data / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json")
    assert pre["image_folders"] == {"LLaVA-Pretrain/images": {"files": 1, "bytes": 6}}
    assert out["data"]["stages"]["finetune"]["image_folders"] == {"coco/train2017": {"files": 1, "bytes": 5}}
    assert set(out["weights"]["llm"]["files"]) == {"config.json", "model.safetensors"}
    assert out["weights"]["random_init"] is False and out["eval_data"] is None
    # The same bytes give the same digest; the cache answers by path, size and mtime.
    weights = models / "vicuna-7b-v1.5" / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(b"X" * st.st_size)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = identity.collect(data=data, models=models, mmmu=None, synthetic_dir=None, stages=["pretrain"],
                             config=cfg, cache_path=cache)  # fmt: skip
    assert again["weights"]["digest"] == out["weights"]["digest"]  # cached: same size and mtime
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = identity.collect(data=data, models=models, mmmu=None, synthetic_dir=None, stages=["pretrain"],
                               config=cfg, cache_path=cache)  # fmt: skip
    assert changed["weights"]["digest"] != out["weights"]["digest"]


def test_device_facts_from_a_recorded_h200x2():
    facts = device_facts(NvidiaVendor(RECORDING))
    assert facts["available"] and facts["driver"] == "580.159.04" and facts["toolkit"] == "13.0"
    assert facts["vendor"] == "nvidia" and facts["link_kind"] == "NVLink" and facts["replayed_from"] == str(RECORDING)
    assert [(d["name"], d["links_up"]) for d in facts["devices"]] == [("NVIDIA H200", 18)] * 2
    assert facts["devices"][0]["memory_bytes"] == 150754820096


def test_an_unknown_accelerator_needs_a_declared_peak():
    from kit.submission import peak_problem

    unknown = {"model": "Vendor X1000", "type": "cuda"}
    why = peak_problem(unknown, {})
    assert "'Vendor X1000' has no peak in env/accelerators.toml" in why and "accelerator_peak_bf16_flops" in why
    assert peak_problem(unknown, {"accelerator_peak_bf16_flops": 5e14}) is None
    assert peak_problem({"model": "NVIDIA H200", "type": "cuda"}, {}) is None
    assert peak_problem({"model": "cpu", "type": "cpu"}, {}) is None  # MFU is n/a on a CPU by design


def test_a_resume_may_move_the_inputs_but_not_change_them(tmp_path):
    from rich.console import Console

    from kit.run.inputs import same_inputs
    from kit.run.request import RunRequest

    cfg_obj = case_config.load("A800x1x8")
    cfg = cfg_obj.to_dict()
    for name, text in (("a", "[]"), ("moved", "[]"), ("other", '[{"id": "x"}]')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "llava_v1_5_mix665k.json").write_text(text)
    run = tmp_path / "run"
    run.mkdir()
    first = identity.collect(data=tmp_path / "a", models=None, mmmu=None, synthetic_dir=None, stages=["finetune"],
                             config=cfg, cache_path=None)  # fmt: skip
    (run / "inputs.json").write_text(json.dumps(first))
    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    req = lambda d: RunRequest(case="llava1_5_7b", config="A800x1x8", stages=["finetune"], nodes=1, gpus=8,  # noqa: E731
                               results=tmp_path, data=tmp_path / d)  # fmt: skip
    assert same_inputs(run, req("moved"), cfg_obj, console) is None
    problem = same_inputs(run, req("other"), cfg_obj, console)
    assert problem and f"--data {tmp_path / 'other'} holds other data than the run started with" in problem
