"""A run's plots: loss and throughput per training stage, and what the devices (or the host) did during each stage.

matplotlib is optional (the extra "plots"): it is imported where a plot is drawn, and without it the plots are
skipped with a note while everything else works. Every PNG is written atomically (a temporary file, then a
rename), so a reader never sees half of one. The plots are derived files: `kit report` redraws them at will.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kit.results.samples import device_word, read_monitor, reading
from kit.results.samples import samples as monitor_samples
from kit.run.dir import RunDir
from kit.run.monitor import GIB

NO_MATPLOTLIB = "plots skipped: matplotlib is not installed (pip install 'kit[plots]')"


def write_png(fig: Any, target: Path, dpi: int) -> None:
    """A matplotlib figure (with its canvas) as a PNG, atomically: a temporary file, then os.replace."""
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _save(fig: Any, run: Path, rel: str, steady_from: int | None) -> str:
    """Mark where the steady state starts, then write the PNG; returns `rel`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional dependency (extra "plots")

    ax = fig.axes[0]
    if steady_from is not None:
        ax.axvline(steady_from, color="grey", linestyle=":", label="steady state from")
    ax.legend(loc="best", fontsize="small")
    FigureCanvasAgg(fig)  # a canvas of its own: no pyplot, no global backend
    write_png(fig, run / rel, dpi=110)
    return rel


def write_plots(run_dir: str | Path, summary: dict[str, Any], eval_stages: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """plots/<stage>-loss.png and plots/<stage>-throughput.png per training stage with steps, and
    plots/<stage>-monitor.png per stage (eval stages included) with samples: (paths, notes)."""
    try:
        from matplotlib.figure import Figure  # optional dependency (extra "plots")
    except ImportError:
        return [], [NO_MATPLOTLIB]
    rd = RunDir(run_dir)
    made: list[str] = []
    for name, st in summary.get("stages", {}).items():
        steps = rd.events(name).steps
        if not steps:
            continue
        (rd.path / "plots").mkdir(exist_ok=True)
        xs = [s["step"] for s in steps]
        world = st.get("world_size") or 1
        steady_from = st.get("steady_from_step")

        fig = Figure(figsize=(7, 4))
        ax = fig.add_subplot()
        loss = [(s["step"], s["loss"]) for s in steps if isinstance(s.get("loss"), (int, float))]
        ax.plot([a for a, _ in loss], [b for _, b in loss], lw=1, label="loss")
        ax.set(xlabel="step", ylabel="loss", title=f"{summary.get('run_id')} {name}: loss")
        made.append(_save(fig, rd.path, f"plots/{name}-loss.png", steady_from))

        fig = Figure(figsize=(7, 4))
        ax = fig.add_subplot()
        for key, label in (("real_tokens", "real"), ("padded_tokens", "padded")):
            ys = [
                (s.get(key) or 0) / s["step_time_s"] / world if (s.get("step_time_s") or 0) > 0 else None
                for s in steps
            ]
            ax.plot(xs, [y if y is not None else float("nan") for y in ys], lw=1, label=f"{label} token/p/s")
        if st.get("tokens_per_s_per_gpu"):
            ax.axhline(st["tokens_per_s_per_gpu"], color="black", lw=0.8, linestyle="--", label="steady real")
        ax.set(xlabel="step", ylabel="tokens / s / GPU", title=f"{summary.get('run_id')} {name}: throughput")
        made.append(_save(fig, rd.path, f"plots/{name}-throughput.png", steady_from))
    for name in [*summary.get("stages", {}), *eval_stages]:  # the devices (or the host) over each stage's time
        if rd.monitor_path(name).is_file():
            (rd.path / "plots").mkdir(exist_ok=True)
            if plot_monitor(rd.stage_dir(name), rd.path / "plots" / f"{name}-monitor.png"):
                made.append(f"plots/{name}-monitor.png")
    return made, []


def plot_monitor(stage_dir: Path, png: Path) -> bool:
    """Utilization, memory, power and clock of each device over the stage (a CPU host: CPU and memory), as a PNG written
    atomically; False without matplotlib or without samples. An unwritable `png` raises OSError."""
    try:  # optional dependency (extra "plots")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    samples = monitor_samples(stage_dir)
    if not samples:
        return False
    start = next((r for r in read_monitor(stage_dir)[0] if r.get("type") == "start"), {})
    word = device_word(start)
    t0 = samples[0]["t"]
    xs = [s["t"] - t0 for s in samples]
    nan = float("nan")

    def series(values: list[Any], scale: float = 1.0) -> list[float]:
        return [v / scale if isinstance(v, (int, float)) else nan for v in values]

    gpu = any("devices" in s for s in samples)
    title = Path(stage_dir).name
    if gpu:
        fig = Figure(figsize=(10, 7))
        axes = fig.subplots(2, 2, sharex=True)
        indices = sorted({d["index"] for s in samples for d in s.get("devices") or [] if "index" in d})
        panels = [
            (axes[0][0], "util_pct", 1.0, "utilization (%)"),
            (axes[0][1], "mem_used_bytes", GIB, "memory used (GiB)"),
            (axes[1][0], "power_w", 1.0, "power (W; dashed: limit)"),
            (axes[1][1], "clock_mhz", 1.0, "clock (MHz)"),
        ]
        for ax, key, scale, label in panels:
            for i in indices:
                vals = [next((reading(d, key) for d in s.get("devices") or [] if d.get("index") == i), None)
                        for s in samples]  # fmt: skip
                line = ax.plot(xs, series(vals, scale), lw=1, label=f"{word} {i}")[0]
                if key == "power_w":  # the limit it may reach, dashed in the same colour
                    limits = [next((d.get("power_limit_w") for d in s.get("devices") or [] if d.get("index") == i),
                                   None) for s in samples]  # fmt: skip
                    ax.plot(xs, series(limits), lw=0.8, linestyle="--", color=line.get_color())
            ax.set(ylabel=label)
            ax.grid(alpha=0.3)
        for ax in axes[1]:
            ax.set(xlabel="seconds since the first sample")
        axes[0][0].legend(loc="best", fontsize="small")
        fig.suptitle(f"{title}: devices")
    else:
        fig = Figure(figsize=(8, 6))
        ax1, ax2 = fig.subplots(2, 1, sharex=True)
        cores = max((s.get("cpu") or {}).get("cores") or 1 for s in samples)
        ax1.plot(xs, series([(s.get("cpu") or {}).get("busy_pct") for s in samples]), lw=1, label="host busy")
        ax1.plot(xs, series([(s.get("run") or {}).get("cpu_pct") for s in samples], cores), lw=1, label="the run")
        ax1.plot(xs, series([s.get("others_cpu_pct") for s in samples], cores), lw=1, label="other processes")
        ax1.set(ylabel=f"CPU (% of {cores} cores)")
        ax1.legend(loc="best", fontsize="small")
        ax1.grid(alpha=0.3)
        ax2.plot(xs, series([(s.get("run") or {}).get("rss_bytes") for s in samples], GIB), lw=1,
                 label="the run's RSS (summed)")  # fmt: skip
        ax2.plot(xs, series([(s.get("mem") or {}).get("used_bytes") for s in samples], GIB), lw=1, label="host used")
        ax2.set(xlabel="seconds since the first sample", ylabel="memory (GiB)")
        ax2.legend(loc="best", fontsize="small")
        ax2.grid(alpha=0.3)
        fig.suptitle(f"{title}: host")
    FigureCanvasAgg(fig)
    write_png(fig, Path(png), dpi=100)
    return True
