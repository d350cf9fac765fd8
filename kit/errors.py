"""One error base for everything a user can meet: each says what is wrong, where, and what to do.

A command catches KitError once (kit/cli.py's error printer) and exits with the error's `exit_code`: 2 for bad
usage or input (nothing was created or launched), 3 when this environment cannot do what was asked, 1 for a
check or a stage that failed. Subclasses live beside the code that raises them.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class KitError(Exception):
    """An error with a message meant for the user (what, where, what to do) and the exit code it ends with."""

    exit_code = EXIT_USAGE


class UsageError(KitError, ValueError):
    """A bad request, caught before anything is created or launched (exit 2)."""


class EnvironmentProblem(KitError, RuntimeError):
    """This host cannot do what was asked (too few devices, too little disk, no engine): exit 3."""

    exit_code = EXIT_ENVIRONMENT
