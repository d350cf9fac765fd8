"""Environment probe: what the case finds where it runs (printed as JSON for environment.json).

    python -m cases.llava1_5_7b.env

Exits 3 with the missing package named when the case cannot run here, before any stage starts.
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
    if "torch" not in missing:
        import torch

        cuda = torch.cuda.is_available()
        out["torch"] = {
            "cuda_available": cuda,
            "cuda_version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
            "devices": [
                {
                    "index": i,
                    "name": torch.cuda.get_device_name(i),
                    "memory_bytes": torch.cuda.get_device_properties(i).total_memory,
                    "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                }
                for i in range(torch.cuda.device_count())
            ]
            if cuda
            else [],
            "cpu_threads": torch.get_num_threads(),
        }
    out["pip_freeze"] = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
    return out


def main() -> int:
    facts = probe()
    print(json.dumps(facts))
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
