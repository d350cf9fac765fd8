"""`kit compare` on real tiny runs and a real submission packed from them: rows, olympic means, comparability,
every format, and the html page as a real headless Chromium renders it."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kit import case as cases
from kit.case import rules as rules_mod
from kit.cli import app
from kit.results import formats
from kit.results import render_compare as cmp
from kit.results import render_html as page_of
from kit.results.entries import build
from kit.results.summary import run_summary

runner = CliRunner()
CHROMIUM = "/usr/bin/chromium"


def kit(*args: str):
    return runner.invoke(app, ["compare", *map(str, args)], env={"COLUMNS": "250"})


def _submission(root: Path) -> dict:
    return json.loads((root / "submission.json").read_text())


def _label(root: Path) -> str:
    sub = _submission(root)
    return f"{sub['submitter']}/{sub['system_name']}"


def _packed_runs(root: Path) -> list[Path]:
    sub = _submission(root)
    return [root / "results" / sub["system"] / sub["case"] / r["dir"] for r in sub["runs"]]


def _olympic(runs: list[Path], stage: str, figure: str) -> tuple[float, float, float]:
    """(olympic mean, min, max) of one figure over the runs, each recomputed by run_summary."""
    o = rules_mod.load("llava1_5_7b").olympic
    vals = [run_summary(r)["stages"][stage][figure] for r in runs]
    return rules_mod.olympic_mean(vals, o["drop"], o["min_runs"]), min(vals), max(vals)


def _line(text: str, *parts: str) -> str:
    found = [ln for ln in text.splitlines() if all(p in ln for p in parts)]
    assert found, f"no line with {parts} in:\n{text}"
    return found[0]


@pytest.mark.slow
def test_a_submission_and_a_run_beside_the_seed(tiny_submission: Path, tiny_runs: list[Path]) -> None:
    run = tiny_runs[0]
    run_id = json.loads((run / "run.json").read_text())["run_id"]
    r = kit(tiny_submission, run, "--reference")
    assert r.exit_code == 0, r.output
    out = r.stdout
    label = _label(tiny_submission)
    for stage in ("pretrain", "finetune"):
        sub_line = _line(out, label, stage)
        _line(out, run_id, stage)
        _line(out, "seed A800", stage)
        mean, lo, hi = _olympic(_packed_runs(tiny_submission), stage, "tokens_per_s_per_gpu")
        assert f"{formats.tps(mean)} ({formats.tps(lo)}-{formats.tps(hi)})" in sub_line
        ref_mean, _, _ = _olympic(_packed_runs(tiny_submission), stage, "reference_method_tokens_per_s_per_gpu")
        assert formats.tps(ref_mean) in sub_line
        assert "closed" in sub_line and "full" in sub_line and "yes" in sub_line  # division, category, synthetic
    assert "4,013" in _line(out, "seed A800", "pretrain") and "35.9%" in _line(out, "seed A800", "finetune")
    assert "counts padded tokens over the whole wall time" in out  # the seed's counting, said in a note
    assert f"ratio vs {label}" in out  # the run against the default baseline, the first entry
    assert f"read the same inputs as {label}: data " in out  # inputs.json digests, side by side

    # The same numbers as raw json, per run and as the olympic mean.
    data = json.loads(kit(tiny_submission, run, "--reference", "--format", "json").stdout)
    entry = next(e for e in data["entries"] if e["label"] == label)
    for stage in ("pretrain", "finetune"):
        for fig in ("tokens_per_s_per_gpu", "reference_method_tokens_per_s_per_gpu", "loss_tail_mean"):
            st = entry["stages"][stage][fig]
            mean, lo, hi = _olympic(_packed_runs(tiny_submission), stage, fig)
            assert st["olympic_mean"] == pytest.approx(mean) and (st["min"], st["max"]) == pytest.approx((lo, hi))
            assert len(st["values"]) == 3
    assert entry["stages"]["finetune"]["mmmu_acc"]["olympic_mean"] == pytest.approx(
        _olympic(_packed_runs(tiny_submission), "finetune", "mmmu_acc")[0])
    plain = next(e for e in data["entries"] if e["label"] == run_id)
    assert plain["division"] == "-" and plain["kind"] == "run" and plain["synthetic"] is True
    assert plain["ratios"]["pretrain"]["comparable"] is True
    assert plain["ratios"]["pretrain"]["tokens_per_s"] == pytest.approx(
        plain["stages"]["pretrain"]["tokens_per_s_per_gpu"]["olympic_mean"]
        / entry["stages"]["pretrain"]["tokens_per_s_per_gpu"]["olympic_mean"])
    assert data["reference"]["label"].startswith("seed A800")


@pytest.mark.slow
def test_a_synthetic_entry_is_not_comparable_with_the_seed(tiny_submission: Path, tiny_runs: list[Path]) -> None:
    r = kit(tiny_submission, "--reference", "--baseline", "seed", "--format", "markdown")
    assert r.exit_code == 0, r.output
    ratio_rows = [ln for ln in r.stdout.splitlines() if "ratio vs seed A800" in ln]
    assert len(ratio_rows) == 2  # pretrain and finetune
    assert all("not comparable: synthetic vs real data" in ln for ln in ratio_rows)
    assert not any(re.search(r"\d\.\d\dx", ln) for ln in ratio_rows)  # no number where there is no comparison
    data = json.loads(kit(tiny_submission, "--reference", "--baseline", "seed", "-f", "json").stdout)
    ratios = data["entries"][0]["ratios"]
    assert ratios["finetune"]["comparable"] is False and ratios["finetune"]["ref_method_tokens_per_s"] is None
    assert "model shape" in ratios["finetune"]["why"]  # the tiny model is not the 7B

    # A plain run of the same kind beside the submission compares: its ratios are numbers.
    same = list(csv.DictReader(io.StringIO(kit(tiny_submission, tiny_runs[1], "--format", "csv").stdout)))
    assert all(row["comparable"] == "true" and float(row["ratio_tokens_per_s"]) > 0 for row in same
               if row["kind"] == "run")  # fmt: skip


@pytest.mark.slow
def test_a_throughput_run_is_marked_and_not_compared_with_a_full_one(tiny_submission: Path, throughput_run: Path) -> None:
    r = kit(tiny_submission, throughput_run, "--format", "markdown")
    assert r.exit_code == 0, r.output
    assert "(synthetic, throughput)" in r.stdout and "THROUGHPUT category" in r.stdout
    ratio_rows = [ln for ln in r.stdout.splitlines() if "ratio vs" in ln]
    assert len(ratio_rows) == 2 and all("not comparable: throughput vs full category" in ln for ln in ratio_rows)
    rows = list(csv.DictReader(io.StringIO(kit(tiny_submission, throughput_run, "-f", "csv").stdout)))
    run_rows = [row for row in rows if row["kind"] == "run"]
    assert [row["category"] for row in run_rows] == ["throughput", "throughput"]
    assert all(row["comparable"] == "false" and row["ratio_tokens_per_s"] == "" for row in run_rows)


@pytest.mark.slow
def test_every_format_parses(tiny_submission: Path, tiny_runs: list[Path], tmp_path: Path) -> None:
    tarball = tiny_submission.parent / f"{tiny_submission.name}.tar.gz"
    args = (tarball, tiny_runs[2], "--reference")
    data = json.loads(kit(*args, "-f", "json").stdout)
    assert data["schema"] == cmp.SCHEMA and [e["kind"] for e in data["entries"]] == ["submission", "run"]
    assert data["entries"][0]["runs"][0]["path"].startswith(str(tarball))  # unpacked from the tarball
    folder = json.loads(kit(tiny_submission, tiny_runs[2], "-f", "json").stdout)
    assert data["entries"][0]["stages"] == folder["entries"][0]["stages"]  # the tarball holds the same facts

    text = kit(*args, "-f", "csv").stdout
    reader = csv.reader(io.StringIO(text))
    assert next(reader) == cmp.csv_columns(cases.get("llava1_5_7b"))
    rows = list(csv.DictReader(io.StringIO(text)))
    pairs = {(r["kind"], r["stage"]) for r in rows}
    assert len(rows) == 2 * 2 + 2  # entries x stages, and the seed's two rows
    assert pairs == {(k, s) for k in ("submission", "run", "seed") for s in ("pretrain", "finetune")}
    assert float(next(r for r in rows if r["kind"] == "submission")["tokens_per_s"]) > 0

    md = kit(*args, "-f", "markdown").stdout
    lines = md.splitlines()
    assert lines[0].startswith("| system | stage |")
    assert re.fullmatch(r"\|( ---:? \|)+", lines[1])
    assert sum(ln.startswith("| ") for ln in lines) >= 1 + 1 + 2 * 2 + 2 + 2  # header, separator, rows, ratios
    assert re.search(r"^1\. ", md, re.M)  # the notes under the table

    out = tmp_path / "cmp.txt"
    r = kit(*args, "--out", out)
    assert r.exit_code == 0 and out.is_file() and "seed A800" in out.read_text()
    assert r.stdout == ""  # written to the file, not to stdout


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *args], capture_output=True,
                          text=True, timeout=180)  # fmt: skip


@pytest.mark.slow
def test_the_html_page_in_a_real_browser(tiny_submission: Path, tiny_runs: list[Path], tmp_path: Path) -> None:
    if not Path(CHROMIUM).is_file():
        if os.environ.get("KIT_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium) and KIT_REQUIRE_SERVICES=1")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    page = tmp_path / "compare.html"
    r = kit(tiny_submission, tiny_runs[0], "--reference", "--format", "html", "--out", page)
    assert r.exit_code == 0, r.output
    source = page.read_text()
    assert "<script" not in source and not re.search(r"""(src|href)\s*=|url\(|@import""", source)  # self-contained

    profile = tmp_path / "profile"
    dom = _chromium(f"--user-data-dir={profile}", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    html = dom.stdout
    run_id = json.loads((tiny_runs[0] / "run.json").read_text())["run_id"]
    for label in (_label(tiny_submission), run_id, "seed A800 1x8"):
        attr = label.replace("&", "&amp;")
        for stage in ("pretrain", "finetune"):
            assert re.search(rf'<tr class="[^"]*" data-stage="{stage}" data-label="{re.escape(attr)}"', html), (label, stage)
        assert len(re.findall(rf'<rect class="bar" data-label="{re.escape(attr)}"', html)) >= 1, label
    assert f"ratio vs {_label(tiny_submission)}" in html
    assert html.count("n/a") > 0  # MFU of a CPU: said, not drawn
    assert "MFU per system and stage" in html and "tokens / s / GPU" in html  # the seed's charts
    # The tiny CPU runs and the seed A800 never share an axis; the CPU runs' MFU chart would be empty: not drawn.
    charts = _svgs(html)
    cpu = next(svg for svg in charts.values() if f'data-label="{run_id}"' in svg)
    assert "tokens / s / CPU rank" in cpu and 'data-label="seed A800 1x8"' not in cpu
    assert "not on one axis with seed A800 1x8: per CPU rank vs per GPU; synthetic vs real data; model shape" in cpu
    assert f"MFU chart of {_label(tiny_submission)} (synthetic), {run_id} (synthetic) not drawn" in html

    shot = tmp_path / "compare.png"
    s = _chromium(f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    assert s.returncode == 0, s.stderr
    assert shot.is_file() and shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    keep = os.environ.get("KIT_COMPARE_SCREENSHOT")  # to look at it: KIT_COMPARE_SCREENSHOT=/tmp/compare.png
    if keep:
        shutil.copyfile(shot, keep)


@pytest.mark.slow
def test_a_bad_baseline_is_refused(tiny_runs: list[Path]) -> None:
    r = kit(tiny_runs[0], "--baseline", "no-such-system")
    assert r.exit_code == 2 and "matches no entry" in r.output
    r = kit(tiny_runs[0], "--baseline", "seed")
    assert r.exit_code == 2 and "--reference" in r.output


def test_what_is_neither_a_run_nor_a_submission_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tarball")
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "missing", tmp_path / "notes.txt", tmp_path / "bad.tar.gz", tmp_path / "empty"):
        r = kit(path)
        assert r.exit_code == 2, (path, r.output)
        assert r.stdout == "" and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = kit(tmp_path / "empty", "--format", "xml")
    assert r.exit_code == 2 and "--format" in r.stderr


# ---------------------------------------------------------------- the html charts: what shares an axis


CPU_ID = "20261101-090000-llava1_5_7b-tiny-abcd"


def _factory_runs(tmp_path: Path) -> dict[str, Path]:
    """Runs in the run directory's real format (tests/host/rundir_factory): two on a CPU, one on an H200."""
    from .rundir_factory import StageSpec, make_run

    cpu = [StageSpec(s, device_name="cpu", device_type="cpu") for s in ("pretrain", "finetune")]
    return {
        "cpu": make_run(tmp_path, cpu, config="tiny", device="cpu", run_id=CPU_ID),
        "cpu2": make_run(tmp_path, [StageSpec(s, device_name="cpu", device_type="cpu", step_time_s=2.5)
                                    for s in ("pretrain", "finetune")], config="tiny", device="cpu",
                         run_id="20261102-090000-llava1_5_7b-tiny-ef01"),  # fmt: skip
        "h200": make_run(tmp_path, run_id="20261103-090000-llava1_5_7b-H200x1x1-2345"),
    }


def _svgs(page: str) -> dict[str, str]:
    """The page's charts by id."""
    return {m.group(1): m.group(0) for m in re.finditer(r'<svg id="([^"]+)".*?</svg>', page, re.S)}


def test_entries_that_do_not_compare_never_share_an_axis(tmp_path: Path) -> None:
    """The issue: a CPU run's bars on one axis with the seed A800's (a manager reads "65% of an A800"), an MFU
    chart empty but for the seed, "GPU" on the axis of CPU ranks."""
    runs = _factory_runs(tmp_path)
    c = build([runs["cpu"], runs["cpu2"], runs["h200"]], reference=True, baseline="seed")
    page = page_of.render_html(c)
    charts = _svgs(page)
    print(sorted(charts))
    cpu, cpu2, h200 = (e for e in c.entries)
    groups = page_of._chart_sets(c)
    assert [e.label for e in groups[0]][0] == "seed A800 1x8" and [cpu, cpu2] in groups  # the baseline's chart first
    for name, svg in charts.items():  # every chart's bars: one set's entries, no other's
        labels = set(re.findall(r'<rect class="bar" data-label="([^"]+)"', svg))
        assert any(labels <= {e.label for e in g} for g in groups), (name, labels)
    token_charts = [svg for name, svg in charts.items() if name.startswith("chart-tokens")]
    assert len(token_charts) == len(groups)
    cpu_chart = next(svg for svg in token_charts if f'data-label="{CPU_ID}"' in svg)
    assert 'data-label="seed A800 1x8"' not in cpu_chart and "tokens / s / CPU rank" in cpu_chart
    assert "token/p/s per CPU rank, per system and stage" in cpu_chart
    assert re.search(r'class="apart"[^>]*>not on one axis with seed A800 1x8: per CPU rank vs per GPU', cpu_chart)
    seed_chart = next(svg for svg in token_charts if 'data-label="seed A800 1x8"' in svg)
    assert "tokens / s / GPU" in seed_chart and "CPU rank" not in seed_chart.split('class="apart"')[0]
    # MFU: the CPU runs have no peak, so their chart is one line, not an empty frame
    assert (f'<p class="nochart" data-chart="MFU">MFU chart of {CPU_ID}, 20261102-090000-llava1_5_7b-tiny-ef01 not '
            "drawn: no peak FLOP/s (a CPU has none), so every MFU is n/a.</p>") in page
    mfu_charts = [svg for name, svg in charts.items() if name.startswith("chart-mfu")]
    assert mfu_charts and all(f'data-label="{CPU_ID}"' not in svg for svg in mfu_charts)
    assert all(re.search(r'<rect class="bar"', svg) for svg in charts.values())  # no chart drawn without a bar
    assert "\u2026" not in page  # no label cut short
    # Two runs of one kind share one chart, and a lone comparable set says nothing is kept apart.
    alone = page_of.render_html(build([runs["cpu"], runs["cpu2"]]))
    assert list(_svgs(alone)) == ["chart-tokens"] and 'class="apart"' not in alone
    assert f'data-label="{CPU_ID}"' in alone and 'data-label="20261102-090000-llava1_5_7b-tiny-ef01"' in alone


def test_a_name_is_wrapped_between_its_words_never_cut(tmp_path: Path) -> None:
    for name in (CPU_ID, "Acme Computing/box-8xB200 (liquid cooled)", "x" * 50, "a-" * 30):
        lines = page_of._wrap(name, 32)
        parts = [p for p in re.split(r"(?<=[-/ ])", name) if p]  # what may not be cut: the text between breaks
        i = 0
        for ln in lines:  # each line is whole parts, in order, and every part is on a line
            chunk = ""
            while len(chunk.rstrip()) < len(ln):
                chunk, i = chunk + parts[i], i + 1
            assert chunk.rstrip() == ln, (name, lines)
            assert len(ln) <= 32 or len(parts[i - 1]) > 32  # only a part longer than the width runs over
        assert i == len(parts), (name, lines)
    assert page_of._wrap(CPU_ID, 32) == ["20261101-090000-llava1_5_7b-", "tiny-abcd"]
    runs = _factory_runs(tmp_path)
    svg = page_of.render_html(build([runs["cpu"]]))
    assert (f'<tspan x="{re.search(r"<tspan x=.([0-9]+)", svg).group(1)}" dy="0">20261101-090000-llava1_5_7b-</tspan>'
            in svg) and ">tiny-abcd</tspan>" in svg  # fmt: skip


def test_the_unit_follows_the_device(tmp_path: Path) -> None:
    from .rundir_factory import StageSpec, make_run

    npu = make_run(tmp_path, [StageSpec(s, device_name="Ascend 910B", device_type="npu") for s in ("pretrain",
                   "finetune")], run_id="npu-run")  # fmt: skip
    c = build([npu, _factory_runs(tmp_path / "f")["h200"]])
    units = {e.label: page_of._device_unit(e) for e in c.shown}
    # the vendor that owns the device name says what one is called (kit/vendors): Ascend's NPU, NVIDIA's GPU
    assert units == {"npu-run": "NPU", "20261103-090000-llava1_5_7b-H200x1x1-2345": "GPU"}
    page = page_of.render_html(c)
    assert "tokens / s / NPU" in page and "tokens / s / GPU" in page
    assert "not on one axis with 20261103-090000-llava1_5_7b-H200x1x1-2345: per NPU vs per GPU" in page


def test_the_page_breaks_no_header_or_name_mid_word_in_a_real_browser(tmp_path: Path) -> None:
    """Headless Chromium lays the page out in a narrow window; a script added to a copy of the page (the page
    itself has none) reports every no-break span that the layout split, and every chart name drawn off its edge."""
    if not Path(CHROMIUM).is_file():
        if os.environ.get("KIT_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium) and KIT_REQUIRE_SERVICES=1")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    runs = _factory_runs(tmp_path)
    page = page_of.render_html(build([runs["cpu"], runs["cpu2"], runs["h200"]], reference=True))
    assert "<script" not in page
    probe = """<script>
const bad = [];
for (const el of document.querySelectorAll('.nw')) if (el.getClientRects().length > 1) bad.push('split: ' + el.textContent);
for (const t of document.querySelectorAll('svg text.name')) if (t.getBBox().x < 0) bad.push('off the edge: ' + t.textContent);
document.body.setAttribute('data-layout', JSON.stringify({bad, spans: document.querySelectorAll('.nw').length}));
</script></body>"""
    copy = tmp_path / "probe.html"
    copy.write_text(page.replace("</body>", probe))
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile'}", "--window-size=520,900", "--dump-dom", copy.as_uri())
    assert dom.returncode == 0, dom.stderr
    found = json.loads(html_unescape(re.search(r'data-layout="([^"]*)"', dom.stdout).group(1)))
    assert found["bad"] == [] and found["spans"] > 20, found


def html_unescape(s: str) -> str:
    import html

    return html.unescape(s)


def test_the_rich_tables_keep_run_ids_whole(tmp_path: Path) -> None:
    """The systems table's names, run ids and accelerators are never folded mid-name where the table can keep them
    whole by wrapping its prose (tables.Whole); Rich alone folded them at this width."""
    from rich.console import Console

    runs = _factory_runs(tmp_path)
    c = build([runs["cpu"], runs["cpu2"]], reference=True)
    ids = (CPU_ID, "20261102-090000-llava1_5_7b-tiny-ef01")

    def shown(renderable, width: int = 160) -> list[str]:
        console = Console(file=io.StringIO(), width=width, record=True)
        console.print(renderable)
        return console.export_text().splitlines()

    group = cmp.table_renderable(c)
    lines = shown(group)
    print("\n".join(lines))
    for rid in ids:  # the systems table: its name and its run, on one line, each whole
        assert any(ln.count(rid) == 2 for ln in lines), rid
    assert any("NVIDIA A800-SXM4-80GB" in ln for ln in lines) and max(len(ln) for ln in lines) <= 160
    systems = group.renderables[1]
    systems._set(0)  # as before: Rich's own folding
    assert not any(CPU_ID in ln for ln in shown(systems.table))
    assert all(rid in " ".join(cmp.render_text(c).split()) for rid in ids)  # a pipe's 200 columns
