"""summary.json, plots and every render format, on runs in every state."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest

from kit.results import formats
from kit.results import render_report as report
from kit.results.reference import load_reference
from kit.results.summary import write_summary
from kit.run.guard import RunLock

from .rundir_factory import StageSpec, make_run


def _fresh(tmp_path: Path, **kw) -> dict:
    return write_summary(make_run(tmp_path, **kw))


def test_reference_rows_are_data() -> None:
    rows = load_reference("llava1_5_7b")
    primary = {r["stage"]: r for r in rows if r["primary"]}
    assert primary["pretrain"]["tokens_per_s_per_gpu"] == 4013 and primary["pretrain"]["mfu"] == 0.1801
    assert primary["finetune"]["mmmu_acc"] == 0.359 and primary["finetune"]["mem_used_gb"] == 78
    assert all(r["peak_flops"] == 312e12 and r["nodes"] == 1 and r["gpus_per_node"] == 8 for r in rows)
    assert len([r for r in rows if not r["primary"]]) == 4
    assert load_reference("../etc") == [] and load_reference(None) == []


def test_write_summary_atomic_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    rd = make_run(tmp_path)
    replaced: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append(Path(b).name), real_replace(a, b)))
    s = write_summary(rd)
    assert "summary.json" in replaced
    assert json.loads((rd / "summary.json").read_text()) == s
    assert not [p for p in rd.rglob("*.tmp*")]  # no temporary left behind
    for stage in ("pretrain", "finetune"):
        for kind in ("loss", "throughput"):
            p = rd / "plots" / f"{stage}-{kind}.png"
            assert p.is_file() and p.read_bytes()[:4] == b"\x89PNG"
    assert sorted(s["plots"]) == sorted(f"plots/{a}-{b}.png" for a in ("pretrain", "finetune")
                                        for b in ("loss", "throughput"))


def test_plots_skipped_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in [k for k in sys.modules if k == "matplotlib" or k.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rd = make_run(tmp_path)
    s = write_summary(rd)
    assert s["plots"] == [] and "matplotlib" in s["notes"][0]
    assert not (rd / "plots").exists()
    assert "matplotlib" in report.render(s, "table")


def test_render_all_formats_finished(tmp_path: Path) -> None:
    from .test_report_honest import make_reference_like

    s = write_summary(make_reference_like(make_run(tmp_path, mmmu=0.35)))
    assert s["comparable"]["comparable"] is True
    text = report.render(s, "table")
    for needle in ("H200x1x1 pretrain", "seed A800 1x8", "ratio run/seed", "4,013", "2.1025",
                   "74/81 GB", "18.01%", "39.57%", "35.9%", "35.0%", "finished", "20/20", "exact"):
        assert needle in text, needle
    assert json.loads(report.render(s, "json")) == s

    rows = list(csv.DictReader(io.StringIO(report.render(s, "csv"))))
    assert [r["kind"] for r in rows] == ["run", "reference", "ratio"] * 2
    assert float(rows[1]["tokens_per_s"]) == 4013 and float(rows[1]["mfu"]) == 0.1801
    run_tps = s["stages"]["pretrain"]["tokens_per_s_per_gpu"]
    ref_tps = s["stages"]["pretrain"]["reference_method_tokens_per_s_per_gpu"]
    assert float(rows[0]["tokens_per_s"]) == pytest.approx(run_tps)
    assert float(rows[2]["tokens_per_s"]) == pytest.approx(run_tps / 4013)
    assert float(rows[2]["ref_method_tokens_per_s"]) == pytest.approx(ref_tps / 4013)
    assert float(rows[5]["mmmu_acc"]) == pytest.approx(0.35 / 0.359)
    assert rows[0]["comparable"] == "true" and rows[2]["comparability"] == s["comparable"]["reason"]

    md = report.render(s, "markdown")
    lines = md.splitlines()
    assert lines[0].startswith("**run-1 (finished)**: comparable with the seed")
    header = next(ln for ln in lines if ln.startswith("| config"))
    assert header.startswith("| config | token/p/s (seed method) | MFU (seed method) | loss | mem used/total | MMMU acc |")
    assert sum(1 for ln in lines if ln.startswith("| ")) == 2 + 6
    with pytest.raises(ValueError, match="markdown"):
        report.render(s, "yaml")


def test_other_rows_on_request(tmp_path: Path) -> None:
    s = _fresh(tmp_path)
    assert "Atlas" not in report.render(s, "table")
    text = report.render(s, "table", show_other=True)
    assert "Ascend Atlas 800T A2" in text and "LLaVA-1.5-13B" in text


def test_table_renderable_is_rich(tmp_path: Path) -> None:
    from rich.console import Console, Group

    g = report.table_renderable(_fresh(tmp_path))
    assert isinstance(g, Group)
    Console(file=io.StringIO(), width=80).print(g)  # narrow terminals fold, never crash


def test_interrupted_and_zero_step_runs_render(tmp_path: Path) -> None:
    a = write_summary(make_run(tmp_path, [StageSpec("pretrain", steps=7, state="interrupted"),
                                                 StageSpec("finetune")], run_id="a"))
    run_b = make_run(tmp_path, [StageSpec("pretrain", steps=0, state="running")], run_id="b")
    with RunLock(run_b):  # a running run's kit process holds its lock
        b = write_summary(run_b)
    for s in (a, b):
        for fmt in report.FORMATS:
            assert report.render(s, fmt)
    ta = report.render(a, "table")
    assert "interrupted" in ta and "pending" in ta and "7/7" in ta
    tb = report.render(b, "table")
    assert "n/a" in tb and "running" in tb and "0/" in tb and "no steps logged yet" in tb
    assert b["plots"] == [] or all("pretrain" not in p for p in b["plots"])


def test_cpu_run_says_why_mfu_is_na(tmp_path: Path) -> None:
    s = _fresh(tmp_path, stages=[StageSpec("pretrain", device_name="cpu", device_type="cpu")], config="tiny",
               device="cpu")
    text = report.render(s, "table")
    assert "tiny pretrain" in text and "MFU n/a: CPU has no peak FLOP/s" in text
    row = next(csv.DictReader(io.StringIO(report.render(s, "csv"))))
    assert row["mfu"] == "" and row["mfu_exact"] == "" and float(row["tokens_per_s"]) > 0
    assert "n/a" in report.render(s, "markdown")


def test_running_resumed_run(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", steps=30, resume_at=12, state="running")])
    with RunLock(rd):  # a running run's kit process holds its lock
        s = write_summary(rd)
    assert s["state"] == "running" and s["stages"]["pretrain"]["attempts"] == 2
    assert "running" in report.render(s, "table")
    stopped = write_summary(rd)  # the same run once no kit process holds it: killed, resumable
    assert stopped["state"] == "stopped" and "kit resume" in report.render(stopped, "table")


def test_host_modules_import_no_heavy_packages() -> None:
    import subprocess

    code = ("import sys, kit.run.events, kit.results.summary, kit.results.render_report, kit.results.render_compare, "
            "kit.results.render_html, kit.commands.report, kit.commands.compare, kit.commands.ls; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'deepspeed', 'transformers', 'mlperf_logging', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_tiny_mfu_keeps_significant_digits() -> None:
    assert formats.pct(0.1801) == "18.01%" and formats.pct(7.8e-9) == "7.8e-07%" and formats.pct(None) == "n/a"


def test_one_number_format_everywhere() -> None:
    """The same figure prints the same way in report, compare and ls: thousands separated from 100 up."""
    assert formats.tps(4013) == "4,013" and formats.tps(99.94) == "99.9" and formats.tps(None) == "n/a"
    assert formats.acc(0.359) == "35.9%" and formats.ratio(1.234) == "1.23x" and formats.loss(2.1025) == "2.1025"
    assert formats.mem(60.94, 80.0) == "60.9/80.0 GiB" and formats.mem(74, 81, published=True) == "74/81 GB"
    assert formats.fmt(float("nan"), "tps") == "n/a" and formats.fmt(True, "pct") == "n/a"
