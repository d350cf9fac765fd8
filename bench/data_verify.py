"""`kit data verify` decoding speed on photo-like JPEGs: images per second, per core, and how busy the workers are.

    python bench/data_verify.py [--images 20000] [--dir /tmp/kit-bench-data-verify] [--jobs 1,N] [--out FILE]

Generates (once, in parallel, outside the repository; reused when present) JPEGs like COCO photos: 480-640 px
sides, smooth gradients plus noise and shapes, 40-150 KB each, under coco/train2017, and a finetune record file
naming them (a pretrain record file names the same images, so both stages are read; each image is decoded once).
Then runs `kit data verify --full --json` at each --jobs (default 1 and every core) and the fast second verify,
and writes bench/results/cpu/data-verify.json with the setup. Decoding is bound by the cores when images/s per
core stays flat as jobs grow and the workers' CPU time is close to wall time x jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FORMAT = 1
SET = ["--set", "data.pretrain_images=coco/train2017"]


def _photo(seed: int) -> tuple[Any, int, int]:
    """One photo-like JPEG: a two-axis colour gradient, Gaussian noise, a few filled shapes; quality 90."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(480, 641, size=2))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b, k = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(40, 200)
        img[..., c] = k + a * x + b * y + 30 * np.sin(x / rng.uniform(20, 90) + c) * np.cos(y / rng.uniform(20, 90))
    pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    pic = pic.filter(ImageFilter.GaussianBlur(1.2))
    arr = np.asarray(pic, np.int16) + rng.normal(0, 9, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), w, h


def _write(args: tuple[Path, int]) -> tuple[int, int]:
    path, seed = args
    pic, w, h = _photo(seed)
    tmp = path.with_name(path.name + ".tmp")
    pic.save(tmp, "JPEG", quality=90)
    os.replace(tmp, path)
    return path.stat().st_size, w * h


def generate(d: Path, n: int, jobs: int) -> dict:
    """The data directory (reused when a finished one with the same parameters is there)."""
    marker = d / ".bench-complete"
    params = {"images": n, "format": FORMAT}
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("params") == params:
            return {**done, "reused": True}
    folder = d / "coco/train2017"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:012d}.jpg" for i in range(n)]
    t0 = time.monotonic()
    with ProcessPoolExecutor(jobs) as pool:
        stats = list(pool.map(_write, [(folder / name, 1000 + i) for i, name in enumerate(names)], chunksize=64))
    conv = [{"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "Shapes."}]
    finetune = [{"id": name[:-4], "image": f"coco/train2017/{name}", "conversations": conv} for name in names]
    pretrain = [{"id": name[:-4], "image": name, "conversations": conv} for name in names]
    (d / "llava_v1_5_mix665k.json").write_text(json.dumps(finetune))
    (d / "LLaVA-Pretrain").mkdir(exist_ok=True)
    (d / "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json").write_text(json.dumps(pretrain))
    sizes = np.array([s for s, _ in stats])
    pixels = np.array([p for _, p in stats])
    done = {"params": params, "seconds": round(time.monotonic() - t0, 1), "mean_bytes": int(sizes.mean()),
            "min_bytes": int(sizes.min()), "max_bytes": int(sizes.max()), "mean_pixels": int(pixels.mean()),
            "total_bytes": int(sizes.sum())}  # fmt: skip
    marker.write_text(json.dumps(done))
    return {**done, "reused": False}


def kit(*args: str) -> tuple[dict, float, list[str]]:
    cmd = [sys.executable, "-c", "import sys; from kit.cli import app; sys.argv = ['kit', *sys.argv[1:]]; app()", *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise SystemExit(f"kit {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout), wall, ["kit", *args]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    cores = len(os.sched_getaffinity(0))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/kit-bench-data-verify"))
    ap.add_argument("--jobs", default=f"1,{cores}", help="comma-separated --jobs values to measure")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/cpu/data-verify.json")
    a = ap.parse_args(argv)
    if a.dir.resolve().is_relative_to(ROOT):
        raise SystemExit(f"--dir {a.dir}: generate outside the repository")
    gen = generate(a.dir, a.images, cores)
    print(f"data: {a.images:,} JPEGs under {a.dir} (mean {gen['mean_bytes'] / 1e3:.0f} KB, "
          + ("reused)" if gen["reused"] else f"generated in {gen['seconds']} s)"), flush=True)
    base = ["data", "verify", "--data", str(a.dir), "--json", *SET]
    kit(*base, "--full", "--jobs", str(cores))  # warm the page cache: every run then reads from memory
    runs = []
    for jobs in (int(j) for j in a.jobs.split(",")):
        r, wall, cmd = kit(*base, "--full", "--jobs", str(jobs))
        im = r["images"]
        row = {
            "jobs": jobs, "workers": im["jobs"], "command": " ".join(cmd), "decoded": im["decoded"],
            "command_wall_s": round(wall, 2), "decode_wall_s": im["decode_wall_s"],
            "images_per_s": round(im["decoded"] / im["decode_wall_s"], 1),
            "images_per_s_per_core": round(im["decoded"] / im["decode_wall_s"] / im["jobs"], 1),
            "workers_cpu_s": im["workers_cpu_s"],
            "worker_cpu_utilisation": round(im["workers_cpu_s"] / (im["decode_wall_s"] * im["jobs"]), 3),
            "ok": r["ok"],
        }  # fmt: skip
        runs.append(row)
        print(f"--jobs {jobs}: {row['images_per_s']:,.0f} images/s ({row['images_per_s_per_core']:,.0f} per core), "
              f"workers busy {row['worker_cpu_utilisation']:.0%}, whole command {wall:.1f} s", flush=True)
    r, wall, cmd = kit(*base)
    fast = {"command": " ".join(cmd), "command_wall_s": round(wall, 2), "decoded": r["images"]["decoded"],
            "cached": r["images"]["cached"], "verify_s": r["seconds"]}  # fmt: skip
    print(f"second verify (unchanged data): {wall:.2f} s, {fast['decoded']} decoded, {fast['cached']:,} from the cache")
    import PIL

    doc = {
        "bench": "data-verify",
        "setup": {
            "cpu": cpu_model(), "cores": cores, "python": platform.python_version(), "pillow": PIL.__version__,
            "platform": platform.platform(), "images": a.images, "mean_bytes": gen["mean_bytes"],
            "min_bytes": gen["min_bytes"], "max_bytes": gen["max_bytes"], "mean_pixels": gen["mean_pixels"],
            "data_dir": str(a.dir), "page_cache": "warm (one full verify before the measured ones)",
            "generator": "bench/data_verify.py: 480-640 px sides, gradients + shapes + Gaussian noise, JPEG quality 90",
            "records": "finetune and pretrain record files naming the same images (each image decoded once)",
            "command": f"python bench/data_verify.py --images {a.images} --jobs {a.jobs}",
        },
        "runs": runs,
        "fast_second_verify": fast,
        "scaling": (round(runs[-1]["images_per_s"] / runs[0]["images_per_s"], 2) if len(runs) > 1 else None),
    }  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
