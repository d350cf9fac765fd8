"""The results: every figure a table shows, derived from a run's raw facts, and the renderers that show them.

One direction, no cycle (each module imports only those above it):

    formats.py        one number format: the same figure prints the same way everywhere
    formulas.py       the formulas of a stage's figures (steady state, throughput, spread, loss, memory)
    peak.py           an accelerator's peak FLOP/s (env/accelerators.toml)
    samples.py        a stage's monitor.jsonl read back into its summary and warnings
    plots.py          the PNGs of a run (loss, throughput, monitor); matplotlib optional
    reference.py      the case's published rows, reference config and olympic parameters
    model.py          the results model: Figure, Stats (headline: the olympic mean), Entry; stated_results
    comparability.py  one definition of the same model and of comparable; ratios
    summary.py        run_summary / write_summary: a run directory (through kit.run.dir.RunDir) -> summary.json
    entries.py        runs, runs of one config, a submission, the seed -> Entry; Comparison
    render_report.py  `kit report`: one run beside the seed, or the runs of one config
    render_compare.py `kit compare`: table, markdown, json, csv
    render_html.py    `kit compare --format html`

The case's part (its FLOPs, its reference's MFU formula, its shape, its data counts, its accuracy key) is asked
through kit/case/metrics.py, its eval accuracy through its scorer: kit/results names no case.
"""
