"""The toy case's environment probe: what it finds where its ranks run, as JSON (environment.json's `case`)."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata


def main() -> int:
    import torch

    versions = {n: metadata.version(n) for n in ("torch",)}
    print(json.dumps({"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
                      "versions": versions, "missing": [],
                      "torch": {"cuda_available": False, "devices": [], "cpu_threads": torch.get_num_threads()},
                      "pip_freeze": sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()
                                           if d.metadata["Name"])}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
