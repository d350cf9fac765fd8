"""Raw facts of a stage as `:::MLLOG` lines (docs/run-directory.md), written by rank 0 through mlperf-logging."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mlperf_logging.mllog.mllog import MLLogger


class EventLog:
    """Appends events to `<stage>/events.log`; on ranks other than 0 every call is a no-op."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        # A logger of our own (not mllog's shared default) so nothing else writes into the file.
        logger = logging.getLogger(f"kit.run.events.{path}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        # Stack offset 2: the call site recorded is the caller of these wrappers.
        self._log = MLLogger(logger=logger, default_stack_offset=2)

    def point(self, key: str, value: Any = None, time_ms: float | None = None, **metadata: Any) -> None:
        if self.enabled:
            self._log.event(key=key, value=value, metadata=metadata or None, time_ms=time_ms)

    def start(self, key: str, value: Any = None, time_ms: float | None = None, **metadata: Any) -> None:
        if self.enabled:
            self._log.start(key=key, value=value, metadata=metadata or None, time_ms=time_ms)

    def end(self, key: str, value: Any = None, **metadata: Any) -> None:
        if self.enabled:
            self._log.end(key=key, value=value, metadata=metadata or None)
