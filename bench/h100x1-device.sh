#!/bin/bash
# One call of the lent GPU machine for the H100x1x1 figures, everything to $OUT:
#   run: bash bench/h100x1-device.sh [PLAN [PREFIX]]   (carry: .whl; kind: nvidia-h100-x1; about 9 minutes)
# PLAN (default bench/plans/h100-smoke.toml) holds the runs PREFIX-pretrain-H100x1x1 and PREFIX-finetune-H100x1x1
# (PREFIX default h100x1); bench/plans/h100-config-on-h200.toml with PREFIX h200x1 is the same config asked of the
# nvidia-h200 kind while no H100 could be had. DEADLINE (default 535 s) bounds the whole script under the call's limit.
# .whl/ holds ../shared/device/wheels.sh's wheels plus typer, rich, click, shellingham, markdown-it-py and mdurl (the
# kit's own command line), for Python 3.12. It writes: machine.txt (nvidia-smi, versions), PREFIX-check-host.txt,
# bench/run.py's PREFIX-pretrain-H100x1x1.json and PREFIX-finetune-H100x1x1.json, hostmem.txt (host memory in use
# every 2 s) and host-peaks.json (each stage's host peak from its monitor.jsonl).
set -u
plan=${1:-bench/plans/h100-smoke.toml} prefix=${2:-h100x1}
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >/dev/null 2>&1 || echo "pip failed"
# The kit's registries read the kit.cases and kit.vendors entry points: a dist-info for the source tree, written from
# pyproject.toml's own entry-point tables, without installing it.
mkdir -p /tmp/site/kit-0.1.0.dist-info
printf 'Metadata-Version: 2.1\nName: kit\nVersion: 0.1.0\n' > /tmp/site/kit-0.1.0.dist-info/METADATA
python3 - > /tmp/site/kit-0.1.0.dist-info/entry_points.txt <<'PY'
import tomllib
for group, eps in tomllib.load(open("pyproject.toml", "rb"))["project"]["entry-points"].items():
    print(f"[{group}]")
    for name, target in eps.items():
        print(f"{name} = {target}")
PY
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
( while true; do echo "$(date +%s) $(awk '/MemTotal/{t=$2}/MemAvailable/{a=$2}END{print t-a}' /proc/meminfo)"; sleep 2; done ) \
  > "$OUT/hostmem.txt" &
sampler=$!
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g
  python3 -c "import torch,deepspeed,transformers;print(torch.__version__,deepspeed.__version__,transformers.__version__)"
} > "$OUT/machine.txt" 2>&1
timeout 90 python3 -m kit.cli check-host --config H100x1x1 > "$OUT/$prefix-check-host.txt" 2>&1
echo "check-host rc=$?" >> "$OUT/$prefix-check-host.txt"
echo "== check-host at $(( $(date +%s) - t0 )) s"
timeout 230 python3 bench/run.py "$plan" --only "$prefix-pretrain-H100x1x1" --out "$OUT" \
  --results /tmp/runs; echo "pretrain rc=$?"
echo "== pretrain at $(( $(date +%s) - t0 )) s"
timeout $(( ${DEADLINE:-535} - ($(date +%s) - t0) )) python3 bench/run.py "$plan" \
  --only "$prefix-finetune-H100x1x1" --out "$OUT" --results /tmp/runs; echo "finetune rc=$?"
echo "== finetune at $(( $(date +%s) - t0 )) s"
kill $sampler
python3 - > "$OUT/host-peaks.json" <<'PY'
import glob, json
out = {}
for mon in sorted(glob.glob("/tmp/runs/*/*/monitor.jsonl")):
    used = rss = 0
    for line in open(mon):
        try:
            stack = [json.loads(line)]
        except ValueError:
            continue
        while stack:
            x = stack.pop()
            if isinstance(x, dict):
                m, r = x.get("mem"), x.get("run")
                if isinstance(m, dict) and isinstance(m.get("used_bytes"), int):
                    used = max(used, m["used_bytes"])
                if isinstance(r, dict) and isinstance(r.get("rss_bytes"), int):
                    rss = max(rss, r["rss_bytes"])
                stack += list(x.values())
            elif isinstance(x, list):
                stack += x
    out[mon] = {"host_used_peak_gib": used / 2**30, "run_rss_peak_gib": rss / 2**30}
print(json.dumps(out, indent=1))
PY
for f in /tmp/runs/*/finetune/logs/rank0.log; do tail -30 "$f"; done 2>/dev/null | tail -40
