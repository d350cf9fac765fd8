"""Findings: what a check says (pass, warn or fail), collected with a cap, and what --strict makes of them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

PER_CHECK_CAP = 20  # failures and warnings listed per check; the rest are counted in one line


@dataclass
class Finding:
    check: str
    status: str  # pass | warn | fail
    detail: str
    where: str = ""
    reviewer: bool = False  # a warning a reviewer must not accept: `kit verify --strict` fails it

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "where": self.where}


@dataclass
class Findings:
    """Every finding of one submission (or of runs about to be packed), in the order the checks ran."""

    items: list[Finding] = field(default_factory=list)
    strict: bool = False
    _listed: Counter = field(default_factory=Counter)
    _more: Counter = field(default_factory=Counter)

    def add(self, check: str, status: str, detail: str, where: str = "", reviewer: bool = False) -> None:
        if status == "warn" and reviewer and self.strict:
            status, detail = "fail", f"strict: {detail}"
        if status != "pass":
            self._listed[check] += 1
            if self._listed[check] > PER_CHECK_CAP:
                self._more[(check, status)] += 1
                return
        self.items.append(Finding(check, status, detail, where, reviewer))

    def fail(self, check: str, detail: str, where: str = "") -> None:
        self.add(check, "fail", detail, where)

    def warn(self, check: str, detail: str, where: str = "", reviewer: bool = False) -> None:
        self.add(check, "warn", detail, where, reviewer)

    def passed(self, check: str, detail: str, where: str = "") -> None:
        self.add(check, "pass", detail, where)

    def close(self) -> None:
        """Count what the cap left out, once, after the last check."""
        for (check, status), n in sorted(self._more.items()):
            word = "failure(s)" if status == "fail" else "warning(s)"
            self.items.append(Finding(check, status, f"and {n:,} more {word} of this check, not listed"))
        self._more.clear()

    def has(self, check: str) -> bool:
        return any(f.check == check and f.status != "pass" for f in self.items)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.items if f.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failures
