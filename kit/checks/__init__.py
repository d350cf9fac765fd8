"""Host checks for `kit check-host`: each answers ok, warn or fail, with the reason and the exact fix.

Every check module exposes functions that return lists of `Check`; `kit/commands/check_host.py` runs them
for a host (locally, or on a remote host over ssh) and renders one table with a column per host.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "warn", "fail", "skip"]
ORDER = {"fail": 0, "warn": 1, "ok": 2, "skip": 3}


@dataclass
class Check:
    """One verdict. `fix` is the exact action for warn/fail ("" for ok); `data` holds the raw readings."""

    group: str  # gpu, driver, docker, system, network, data
    name: str
    status: Status
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst(checks: list[Check]) -> Status:
    """The host's verdict: fail if any check fails, else warn if any warns, else ok."""
    statuses = [c.status for c in checks if c.status != "skip"]
    return min(statuses, key=ORDER.__getitem__) if statuses else "ok"
