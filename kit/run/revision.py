"""Which source of the kit is running (run.json `kit_source`, `kit env`): a git checkout's commit and whether its
tree differs, or the installed distribution's version."""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from kit import __version__

GIT_TIMEOUT_S = 5


def _git(root: Path, *args: str) -> str | None:
    """One read-only git query in `root`, or None (no git, not a checkout, a tree git refuses, too slow)."""
    git = shutil.which("git")
    if git is None:
        return None
    # No optional locks: `git status` would otherwise refresh the index, a write in the user's checkout.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        r = subprocess.run([git, "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                           env=env, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def source_revision(root: Path | None = None) -> dict[str, Any]:
    """Which source of the kit is running: the git commit and whether the tree differs from it, when the kit runs
    from a checkout; else the installed distribution's version. Never raises: a run must start without git.

    {"kind": "git", "commit": sha, "dirty": bool, "changed": n, "path": root, "version": v} or
    {"kind": "installed", "version": v, "path": package dir, "reason": why not a checkout}. `dirty` counts
    modified, staged and untracked files (ignored ones aside), as they all change what runs."""
    package = Path(__file__).resolve().parent.parent
    root = Path(root) if root is not None else package.parent
    try:
        version = md.version("kit")
    except md.PackageNotFoundError:
        version = __version__
    base: dict[str, Any] = {"version": version}
    if not (root / ".git").exists():
        return {"kind": "installed", **base, "path": str(package), "reason": f"{root} is not a git checkout"}
    top = _git(root, "rev-parse", "--show-toplevel")
    commit = _git(root, "rev-parse", "--verify", "HEAD")
    if top is None or commit is None:
        why = "git is not installed" if shutil.which("git") is None else "git cannot read it (no commit yet, or an unsafe owner)"
        return {"kind": "installed", **base, "path": str(package), "reason": f"{root}: {why}"}
    status = _git(root, "status", "--porcelain", "--untracked-files=normal")
    changed = None if status is None else len([ln for ln in status.splitlines() if ln.strip()])
    return {"kind": "git", "commit": commit.strip(), "dirty": None if changed is None else changed > 0,
            "changed": changed, "path": top.strip(), **base}  # fmt: skip


def revision_text(rev: dict[str, Any]) -> str:
    """`git 769860c1a2b3 (dirty: 4 files changed)`, or `installed 0.1.0 (not a checkout)`, for a line of text."""
    if rev.get("kind") == "git":
        if rev.get("dirty") is None:
            state = "dirty: unknown"
        else:
            state = f"dirty: {rev['changed']} file(s) changed" if rev["dirty"] else "clean"
        return f"git {rev['commit'][:12]} ({state}) at {rev['path']}"
    return f"installed {rev.get('version')} ({rev.get('reason', 'not a checkout')})"
