"""Phase times (KIT_PHASE_TIMES lines of bench/phase_timer) into a result file, one entry per optimizer step.

    python bench/phase_times.py bench/results/NAME.json RANK0_LOG

bench/run.py --phase-times does this itself from the run's rank-0 log; this script attaches a log fetched
separately. The steps are in log order: the first is warm-up (compare the result's steady_steps).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TAG = ("KIT_PHASE_TIMES ", "KITPROF ")  # the second: the same timer's lines in logs from before its rename
RENAME = {"opt": "optimizer"}


def parse(text: str) -> list[dict[str, float]]:
    steps = []
    for line in text.splitlines():
        for tag in TAG:
            if line.startswith(tag):
                entry = {}
                for item in line[len(tag) :].split():
                    key, _, value = item.partition("=")
                    phase, _, clock = key.rpartition("_")
                    entry[f"{RENAME.get(phase, phase)}_{clock}"] = float(value)
                steps.append(entry)
    return steps


def attach(result: Path, log_text: str, source: str) -> dict:
    r = json.loads(result.read_text())
    r["phase_times_s"] = parse(log_text)
    r["phase_times_source"] = source
    result.write_text(json.dumps(r, indent=1) + "\n")
    return r


if __name__ == "__main__":
    res, log = Path(sys.argv[1]), Path(sys.argv[2])
    r = attach(res, log.read_text(errors="replace"), f"bench/phase_timer on the device, rank-0 log {log.name}")
    print(f"{res}: {len(r['phase_times_s'])} step(s)")
