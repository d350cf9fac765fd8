"""kit: a containerized reproducibility kit for training benchmarks (host side).

The host side never imports torch, deepspeed or transformers: it installs in seconds on a bare GPU host.
"""

__version__ = "0.1.0"
