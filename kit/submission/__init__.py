"""Submissions: `kit submit` packs finished runs, `kit verify` checks what was handed in (docs/submissions.md).

bounds.py (what a submission may ask of the verifier), layout.py (its fixed shape; one run's facts), system.py (the
system description), findings.py, checks.py (the one set of checks submit refuses on and verify reports) with
clocks.py, devices.py and duplicates.py, submit.py (kit submit) and verify.py (kit verify).
"""

from kit.submission.layout import (
           SubmissionError,
           config_difference,
           data_of,
           read_run,
           sha256_file,
           unfinished,
)
from kit.submission.packer import pack, write_manifest
from kit.submission.system import peak_problem

__all__ = ["SubmissionError", "config_difference", "data_of", "pack", "peak_problem", "read_run", "sha256_file",
           "unfinished", "write_manifest"]
