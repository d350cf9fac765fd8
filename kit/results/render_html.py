"""`kit compare --format html`: one self-contained page (inline CSS and SVG bar charts; nothing external).

The results table and the systems table are the markdown's cells (kit/results/render_compare.py); the charts set
only entries that compare on one axis (kit/results/comparability.py `reasons`), each in the unit of its device.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

from kit import __version__, vendors
from kit.results import formats as f
from kit.results.comparability import reasons
from kit.results.entries import Comparison
from kit.results.model import Entry
from kit.results.render_compare import LEFT, SYSTEM_COLUMNS, columns, notes, rows, system_cells

NA = f.NA
_is_num = f.is_num
# One colour per entry in the html charts (the seed is grey).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
SEED_COLOR = "#7f7f7f"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;margin:24px;
max-width:1400px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.sub{color:#666;margin:0 0 16px}
.wrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:8px 0 4px;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:4px 6px;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#f4f5f7;font-weight:600;border-bottom:2px solid #ccc;white-space:normal;vertical-align:bottom}
td.l,th.l{text-align:left}
#systems td.w{white-space:normal;max-width:380px}
#results td.name{white-space:normal;min-width:170px;max-width:230px}
.nw{white-space:nowrap}
p.nochart{color:#a35200;margin:8px 0 20px}
.rng{color:#777;font-size:11px}
tr.stage-start td{border-top:2px solid #bbb}
tr.seed td{color:#555;background:#fafafa;font-style:italic}
tr.ratio td{color:#0b6b83;font-size:12px;padding-left:18px}
tr.ratio td.nc{color:#a35200;white-space:normal}
.mark{display:inline-block;font-size:11px;font-weight:600;border-radius:3px;padding:0 4px;margin-left:4px}
.m-syn{background:#fde7c8;color:#8a4b00}.m-thr{background:#dfe8fb;color:#1c3f91}.m-base{background:#e6f4ea;color:#1e6b34}
ol.notes{color:#444;font-size:13px;max-width:1200px}ol.notes li{margin:2px 0}
.chart{margin:8px 0 20px;overflow-x:auto}svg text{font-family:inherit}
"""


def _h(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _words(text: str) -> str:
    """Text that may wrap between its words only: "(min-max)" or "run-1" never breaks at its hyphen."""
    return " ".join(f'<span class="nw">{_h(w)}</span>' for w in str(text).split())


def _label_html(e: Entry, baseline: Entry) -> str:
    out = _h(e.label)
    if e.synthetic:
        out += '<span class="mark m-syn">synthetic</span>'
    if e.category == "throughput":
        out += '<span class="mark m-thr">throughput</span>'
    if e is baseline:
        out += '<span class="mark m-base">baseline</span>'
    return out


def _html_table(c: Comparison) -> str:
    cols = columns(c)
    head = "".join(f'<th class="{"l" if k in LEFT else ""}">{_words(h)}</th>'
                   for k, h in cols)  # fmt: skip
    body = []
    stage = None
    for r in rows(c):
        cls = [r["kind"] if r["kind"] in ("seed", "ratio") else "entry"]
        if stage is not None and r["stage"] != stage:
            cls.append("stage-start")
        stage = r["stage"]
        tds = []
        if r["kind"] == "ratio" and not r["ratio"]["comparable"]:  # one cell over the figures says why
            keys = [k for k, _ in cols]
            i0, i1 = keys.index("tokens_per_s"), keys.index("runs") - 1  # the figures' cells
            tds = [f'<td class="l">{_h(r["cells"]["label"].strip())}</td>', "<td></td>",
                   f'<td class="l nc" colspan="{i1 - i0 + 1}">not comparable: {_h(r["ratio"]["why"])}</td>']
            tds += ["<td></td>"] * (len(keys) - i1 - 1)
            body.append(f'<tr class="{" ".join(cls)}" data-stage="{_h(r["stage"])}" '
                        f'data-label="{_h(r["entry"].label)}">' + "".join(tds) + "</tr>")  # fmt: skip
            continue
        for k, _ in cols:
            v = r["cells"].get(k, "")
            left = k in LEFT
            if k == "label" and r["kind"] != "ratio":
                content = _label_html(r["entry"], c.baseline)
            elif k == "stage" and r["kind"] == "ratio":
                content = ""
            elif k == "tokens_per_s" and r["kind"] != "ratio" and " (" in str(v):  # the range under the mean
                mean, rng = str(v).split(" (", 1)
                content = f'{_h(mean)}<br><span class="rng">({_h(rng)}</span>'
            else:
                content = _h(v)
            nc = r["kind"] == "ratio" and str(v).startswith("not comparable")
            klass = " ".join(x for x in ("l" if left else "", "nc" if nc else "", "name" if k == "label" else "") if x)
            tds.append(f'<td class="{klass}">{content}</td>' if klass else f"<td>{content}</td>")
        body.append(f'<tr class="{" ".join(cls)}" data-stage="{_h(r["stage"])}" data-label="{_h(r["entry"].label)}">'
                    + "".join(tds) + "</tr>")  # fmt: skip
    return (f'<div class="wrap"><table id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table></div>")


def _html_systems(c: Comparison) -> str:
    head = "".join(f'<th class="l">{_words(h)}</th>' for _, h in SYSTEM_COLUMNS)

    def cell(e: Entry, k: str) -> str:
        v = system_cells(e)[k]
        if k == "run_ids" and v != "-":  # each id whole on its line
            return ", ".join(f'<span class="nw">{_h(i)}</span>' for i in v.split(", "))
        return _h(v)

    body = "".join(
        f'<tr class="{"seed" if e.kind == "seed" else "entry"}">'
        + "".join(f'<td class="l{" w" if k in ("label", "software", "inputs", "run_ids") else ""}">{cell(e, k)}</td>'
                  for k, _ in SYSTEM_COLUMNS) + "</tr>"
        for e in c.shown
    )
    return f'<div class="wrap"><table id="systems"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _nice_max(v: float) -> tuple[float, float]:
    """(axis maximum, tick step): a round number just above v, in 4-6 ticks."""
    if v <= 0:
        return 1.0, 0.25
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        step = m * exp / 5
        top = math.ceil(v / step) * step
        if top / step <= 6:
            return top, step
    return 10 * exp, 2 * exp


def _device_unit(e: Entry) -> str:
    """What one token/p/s figure of the entry is per: "GPU", "CPU rank" (a run on the CPU, device "cpu") or
    "device" (an accelerator the kit cannot tell is a GPU). The seed ran on A800s."""
    if e.kind == "seed":
        return "GPU"
    name = str(e.accelerator or "").strip().lower()
    if name == "cpu" or name.startswith("cpu"):
        return "CPU rank"
    vendor = vendors.for_device(name)
    return vendor.device_word if vendor is not None else "device"


def _chart_sets(c: Comparison) -> list[list[Entry]]:
    """The entries that share one axis: the same unit, and each comparable with every other on it (not_comparable).
    Greedy in the table's order (the baseline first), so the baseline's chart comes first."""
    sets: list[list[Entry]] = []
    for e in c.ordered:
        for s in sets:
            if _device_unit(s[0]) == _device_unit(e) and not any(reasons(e, o) for o in s):
                s.append(e)
                break
        else:
            sets.append([e])
    return sets


def _apart(s: list[Entry], sets: list[list[Entry]]) -> list[str]:
    """Why the entries of `s` are not on one axis with each other set: one line per other set."""
    out = []
    for other in sets:
        if other is s:
            continue
        a, b = s[0], other[0]
        why = [f"per {_device_unit(a)} vs per {_device_unit(b)}"] if _device_unit(a) != _device_unit(b) else []
        why += reasons(a, b)
        names = ", ".join(e.label for e in other)
        out.append(f"not on one axis with {names}: {'; '.join(why)}")
    return out


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most `width` characters, broken only after a space, '-' or '/': never inside a word or an id's
    part (a part longer than `width` stays whole on its own line)."""
    parts = re.findall(r"[^\s/-]*(?:[\s/-]+|$)", text)
    lines = [""]
    for part in (p for p in parts if p):
        if lines[-1] and len((lines[-1] + part).rstrip()) > width:
            lines.append("")
        lines[-1] += part
    return [ln.rstrip() for ln in lines if ln.strip()] or [""]


CHAR_W = 7.7  # px per character of 12px text, a little over the average, so that a line never overflows its column


def _svg_bars(title: str, under: list[str], axis: str, groups: list[tuple[str, list[dict[str, Any]]]], fmt,
              chart_id: str) -> str:
    """A horizontal bar chart: one block per stage, in it one block per system with a bar per measure; n/a where
    there is no value. The system's name is wrapped at word breaks (never cut), `under` the title says what the
    chart holds apart from the others.

    block: entry (label), lines (the name, then its marks), color, bars; bar: sub (the measure), value, min, max,
    pale, tip."""
    sub_w, right_pad, plot_w, bar_h, row_h, line_h, head_h = 78, 100, 650, 15, 21, 14, 24
    name_chars = 32
    blocks = [b for _, bl in groups for b in bl]
    longest = max([len(w) for b in blocks for ln in b["lines"] for w in _wrap(ln, name_chars)] + [name_chars])
    label_w = int(sub_w + 10 + CHAR_W * longest)
    width = label_w + plot_w + right_pad
    head = [title] + [ln for u in under for ln in _wrap(u, int(width / 6.6))]
    legend_y = 18 + 17 * (len(head) - 1) + 12
    top, bottom = legend_y + 28, 44
    seed_in = any(b.get("seed") for b in blocks)
    steady_in = any(not bar["pale"] for b in blocks for bar in b["bars"])

    def block_h(b: dict[str, Any]) -> int:
        return max(len(b["bars"]) * row_h, len(_name_lines(b, name_chars)) * line_h + 7)

    height = top + len(groups) * head_h + sum(block_h(b) for b in blocks) + bottom
    vmax = max([bar["value"] for b in blocks for bar in b["bars"] if _is_num(bar.get("value"))]
               + [bar["max"] for b in blocks for bar in b["bars"] if _is_num(bar.get("max"))] + [0.0])  # fmt: skip
    top_v, step = _nice_max(vmax * 1.02) if vmax > 0 else (1.0, 0.25)
    x = lambda v: label_w + plot_w * (v / top_v)  # noqa: E731
    out = [f'<svg id="{chart_id}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_h(title)}">', f"<title>{_h(title)}</title>",
           f'<text x="0" y="18" font-size="15" font-weight="600">{_h(title)}</text>']  # fmt: skip
    for i, ln in enumerate(head[1:], 1):  # what the chart holds apart: on the chart itself, for a screenshot
        out.append(f'<text class="apart" x="0" y="{18 + 17 * i}" font-size="12" fill="#a35200">{_h(ln)}</text>')
    lx = 0
    if steady_in:
        out.append(f'<rect x="{lx}" y="{legend_y}" width="12" height="12" fill="#555"/><text x="{lx + 17}" '
                   f'y="{legend_y + 10}" font-size="12">steady state (whisker: min-max over the runs)</text>')  # fmt: skip
        lx += 340
    ref_note = "the seed's counting" + ("; the seed's own figure is grey" if seed_in else "")
    out.append(f'<rect x="{lx}" y="{legend_y}" width="12" height="12" fill="#555" fill-opacity="0.35" stroke="#555"/>'
               f'<text x="{lx + 17}" y="{legend_y + 10}" font-size="12">seed method ({_h(ref_note)})</text>')  # fmt: skip
    y_plot0, y_plot1 = top - 6, height - bottom + 4
    t = 0.0
    while t <= top_v * 1.0001:  # grid and tick labels
        xx = x(t)
        out.append(f'<line x1="{xx:.1f}" y1="{y_plot0}" x2="{xx:.1f}" y2="{y_plot1}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{xx:.1f}" y="{y_plot1 + 15}" font-size="11" text-anchor="middle" fill="#555">'
                   f'{_h(fmt(t, axis=True))}</text>')  # fmt: skip
        t += step
    out.append(f'<line x1="{label_w}" y1="{y_plot0}" x2="{label_w}" y2="{y_plot1}" stroke="#888"/>')
    out.append(f'<text x="{label_w + plot_w / 2:.1f}" y="{height - 6}" font-size="12" text-anchor="middle" '
               f'fill="#333">{_h(axis)}</text>')  # fmt: skip
    y = top
    for stage, stage_blocks in groups:
        out.append(f'<text x="0" y="{y + 16}" font-size="13" font-weight="600">{_h(stage)}</text>')
        y += head_h
        for b in stage_blocks:
            lines = _name_lines(b, name_chars)
            mark = ' font-weight="400" fill="#8a4b00"'  # the marks' lines, under the name
            spans = "".join(
                f'<tspan x="{label_w - sub_w - 6}" dy="{0 if j == 0 else line_h}"'
                f'{"" if j < b["name_count"] else mark}>{_h(ln)}</tspan>'
                for j, ln in enumerate(lines)
            )  # fmt: skip
            out.append(f'<text class="name" x="{label_w - sub_w - 6}" y="{y + bar_h / 2 + 4:.1f}" font-size="12" '
                       f'text-anchor="end" font-weight="600" fill="#222">{spans}<title>{_h(b["label"])}</title>'
                       "</text>")  # fmt: skip
            for i, bar in enumerate(b["bars"]):
                _svg_bar(out, bar, b, stage, y + i * row_h, label_w, sub_w, bar_h, x, fmt)
            y += block_h(b)
    out.append("</svg>")
    return "\n".join(out)


def _name_lines(b: dict[str, Any], width: int) -> list[str]:
    """The block's name wrapped (b["name_count"] is set to how many lines the name itself takes), then its marks."""
    name = _wrap(b["lines"][0], width)
    b["name_count"] = len(name)
    return name + [w for ln in b["lines"][1:] for w in _wrap(ln, width)]


def _svg_bar(out: list[str], bar: dict[str, Any], b: dict[str, Any], stage: str, y: float, label_w: int, sub_w: int,
             bar_h: int, x, fmt) -> None:
    cy = y + bar_h / 2
    out.append(f'<text x="{label_w - 6}" y="{cy + 4:.1f}" font-size="11" text-anchor="end" fill="#777">'
               f'{_h(bar["sub"])}</text>')  # fmt: skip
    v = bar.get("value")
    if not _is_num(v):
        out.append(f'<text x="{label_w + 6}" y="{cy + 4:.1f}" font-size="12" fill="#888" font-style="italic">'
                   f'n/a<title>{_h(bar["tip"])}</title></text>')  # fmt: skip
        return
    w = max(1.0, x(v) - label_w)
    pale = ' fill-opacity="0.35" stroke-width="1" stroke="' + b["color"] + '"' if bar.get("pale") else ""
    out.append(f'<rect class="bar" data-label="{_h(b["entry"])}" data-stage="{_h(stage)}" x="{label_w}" '
               f'y="{y}" width="{w:.1f}" height="{bar_h}" fill="{b["color"]}"{pale}>'
               f'<title>{_h(bar["tip"])}</title></rect>')  # fmt: skip
    end = x(v)
    if _is_num(bar.get("min")) and _is_num(bar.get("max")) and bar["max"] > bar["min"]:
        x0, x1 = x(bar["min"]), x(bar["max"])
        out.append(f'<line x1="{x0:.1f}" y1="{cy:.1f}" x2="{x1:.1f}" y2="{cy:.1f}" stroke="#222"/>'
                   f'<line x1="{x0:.1f}" y1="{cy - 4:.1f}" x2="{x0:.1f}" y2="{cy + 4:.1f}" stroke="#222"/>'
                   f'<line x1="{x1:.1f}" y1="{cy - 4:.1f}" x2="{x1:.1f}" y2="{cy + 4:.1f}" stroke="#222"/>')  # fmt: skip
        end = max(end, x1)
    text = fmt(v)
    if w > 8 * len(text) + 12 and not bar.get("pale"):  # inside the bar, white, when it fits
        out.append(f'<text x="{label_w + 6}" y="{cy + 4:.1f}" font-size="11" fill="#fff" '
                   f'font-weight="600">{_h(text)}</text>')  # fmt: skip
    else:
        out.append(f'<text x="{end + 5:.1f}" y="{cy + 4:.1f}" font-size="11" fill="#222">{_h(text)}</text>')


def _chart_groups(c: Comparison, entries: list[Entry], steady: str, ref: str, unit: str,
                  fmt) -> list[tuple[str, list[dict[str, Any]]]]:
    """One chart's blocks, stage by stage: each of `entries` with its steady and seed-method bars (the seed: its
    published figure, filed as seed method)."""
    colors = {id(e): PALETTE[i % len(PALETTE)] for i, e in enumerate(c.entries)}
    groups = []
    for stage in c.stages:
        blocks = []
        for e in entries:
            if stage not in e.stages:
                continue
            measures = [(ref, "seed method", True)] if e.kind == "seed" else [
                (steady, "steady", False), (ref, "seed method", True)]
            marks = e.marked_label()[len(e.label):].strip()
            bars = []
            for key, sub, pale in measures:
                st = e.stats(stage, key).to_dict()
                v = st.get("olympic_mean")
                vals = ", ".join(fmt(x) if _is_num(x) else NA for x in st.get("values") or [])
                if not _is_num(v):
                    why = "no peak FLOP/s" if "mfu" in key and not e.peak_flops else "not measured"
                    tip = f"{e.marked_label()} {stage}, {sub} {unit}: n/a ({why})"
                elif e.kind == "seed":
                    tip = f"{e.label} {stage}, {unit} as published: {fmt(v)}"
                else:
                    tip = (f"{e.marked_label()} {stage}, {sub} {unit}: olympic mean {fmt(v)} over {st.get('n')} run(s)"
                           f" (min {fmt(st.get('min'))}, max {fmt(st.get('max'))}); per run: {vals}")  # fmt: skip
                bars.append({"sub": sub, "value": v, "min": None if pale else st.get("min"),
                             "max": None if pale else st.get("max"), "pale": pale, "tip": tip})  # fmt: skip
            blocks.append({"entry": e.label, "label": e.marked_label(), "lines": [e.label] + ([marks] if marks else []),
                           "color": SEED_COLOR if e.kind == "seed" else colors[id(e)], "seed": e.kind == "seed",
                           "bars": bars})  # fmt: skip
        if blocks:
            groups.append((stage, blocks))
    return groups


def _fmt_tps_axis(v: Any, axis: bool = False) -> str:
    return f"{v:,.0f}" if axis and _is_num(v) else f.tps(v)


def _fmt_pct_axis(v: Any, axis: bool = False) -> str:
    return f"{v * 100:g}%" if axis and _is_num(v) else f.pct(v)


def _charts(c: Comparison) -> str:
    """The token/p/s and MFU charts: one per set of entries that compare (_chart_sets), each on its own axis and
    saying on itself what it is kept apart from; a chart with no value to draw is one line saying why instead."""
    sets = _chart_sets(c)
    out = []
    for kind, steady, ref in (("token/p/s", "tokens_per_s_per_gpu", "reference_method_tokens_per_s_per_gpu"),
                              ("MFU", "mfu_reference", "mfu_reference_method")):  # fmt: skip
        fmt = _fmt_tps_axis if kind == "token/p/s" else _fmt_pct_axis
        charts = [(s, _chart_groups(c, s, steady, ref, f"{kind} per {_device_unit(s[0])}", fmt)) for s in sets]
        drawn = [s for s, groups in charts if any(_is_num(bar["value"]) for _, bl in groups for b in bl
                                                  for bar in b["bars"])]  # fmt: skip
        for s, groups in charts:
            unit = _device_unit(s[0])
            names = ", ".join(e.marked_label() for e in s)
            if s not in drawn:
                no_peak = kind == "MFU" and not any(e.peak_flops for e in s)
                why = ("no peak FLOP/s" + (" (a CPU has none)" if unit == "CPU rank" else " declared or known") +
                       ", so every MFU is n/a") if no_peak else "no figure was measured"  # fmt: skip
                out.append(f'<p class="nochart" data-chart="{_h(kind)}">{_h(kind)} chart of {_h(names)} not drawn: '
                           f"{_h(why)}.</p>")  # fmt: skip
                continue
            i = drawn.index(s) + 1
            many = f" (chart {i} of {len(drawn)})" if len(drawn) > 1 else ""
            if kind == "token/p/s":
                title = f"token/p/s per {unit}, per system and stage (olympic mean){many}"
                axis = f"tokens / s / {unit}"
            else:
                title = f"MFU per system and stage (the seed's formula at each system's peak; olympic mean){many}"
                axis = "MFU (fraction of the peak dense bf16 FLOP/s)"
            chart_id = f"chart-{'tokens' if kind == 'token/p/s' else 'mfu'}" + (f"-{i}" if i > 1 else "")
            svg = _svg_bars(title, _apart(s, sets), axis, groups, fmt, chart_id)
            out.append(f'<div class="chart">{svg}</div>')
    return "\n".join(out)


def render_html(c: Comparison) -> str:
    title = f"kit compare: {', '.join(e.marked_label() for e in c.entries)}"
    sub = (f"case {_h(c.entries[0].case)}; baseline {_h(c.baseline.label)}; olympic mean over each system's runs "
           f"(drop {c.olympic['drop']} best and worst at {c.olympic['min_runs']} or more runs); kit {_h(__version__)}")
    items = "".join(f"<li>{_h(n)}</li>" for n in notes(c))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_h(title)}</title>"
        f"<style>{CSS}</style></head><body>\n"
        f"<h1>{_h(title)}</h1><p class=\"sub\">{sub}</p>\n"
        f"<h2>Results</h2>\n{_html_table(c)}\n"
        f"<h2>Charts</h2>\n{_charts(c)}\n"
        f"<h2>Systems</h2>\n{_html_systems(c)}\n"
        f"<h2>Notes</h2>\n<ol class=\"notes\">{items}</ol>\n"
        "</body></html>\n"
    )

