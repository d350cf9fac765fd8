"""Environment probe: what the case finds where it runs (printed as JSON for environment.json).

    python -m cases.llava1_5_7b.env

Exits 3 with the missing package named when the case cannot run here, before any stage starts; also when the
device layer (device.py) cannot serve it: a vendor runtime (KIT_DEVICE_RUNTIME) that does not apply, or an
accelerator that finds no device. Its `torch` section is the device layer's `stack_facts()`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata

REQUIRED = ("torch", "deepspeed", "transformers", "sentencepiece", "mlperf-logging", "pillow", "numpy")
OPTIONAL = ("flash-attn", "liger-kernel", "protobuf", "datasets")


def probe() -> dict:
    versions = {}
    missing = []
    for name in REQUIRED + OPTIONAL:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
            if name in REQUIRED:
                missing.append(name)
    out: dict = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "versions": versions,
        "missing": missing,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "CUDA_", "DS_", "TORCH_", "OMP_"))},
    }
    if "torch" not in missing and "deepspeed" not in missing:
        from . import device

        try:  # the vendor's runtime applied and the accelerator chosen as every rank does it (device.py)
            out["torch"] = device.init().stack_facts()
        except device.DeviceError as e:
            out["device_error"] = str(e)
    out["pip_freeze"] = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
    return out


def main() -> int:
    # Only the JSON goes to stdout (the host parses it): what DeepSpeed, the device layer or a vendor's plug-in print
    # while the probe runs, from Python or from C, goes to stderr.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        facts = probe()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    print(json.dumps(facts), flush=True)
    if facts.get("device_error"):
        print(f"the case cannot use the device here: {facts['device_error']}", file=sys.stderr)
        return 3
    if facts["missing"]:
        print(
            f"the case's packages are missing here: {', '.join(facts['missing'])}; "
            "install them with `pip install -e '.[case]'` (or run in the kit's image)",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
