"""DeepSpeed's shared-memory op on a CPU: compiled once per environment, under a lock, before any rank starts.

Who builds it, and when (DeepSpeed 0.19.8): every rank's `deepspeed.init_distributed()` creates the comm backend,
`deepspeed.comm.torch.TorchBackend`, whose constructor calls `build_shm_op()`. With the CPU accelerator that is
`ShareMemCommBuilder().load()` (deepspeed/ops/op_builder/cpu/comm.py): unless DeepSpeed was installed with the op
compiled in (`DS_BUILD_SHM_COMM=1`, as the CPU test image is), `OpBuilder.jit_load()` has torch's
`cpp_extension.load()` compile csrc/cpu/comm/shm.cpp and shm_interface.cpp with ninja into
`$TORCH_EXTENSIONS_DIR/deepspeed_shm_comm`: about 75 CPU-seconds and 1.5 GB of memory per compiler, before the rank
writes its first event, so the progress line could only say "starting". torch keeps a second builder of the same
folder out with a `lock` file it waits on without a word, forever if a killed build left it behind.

`kit run --native` runs this module before the first training stage (and `make` when it creates .venv), so the op
is compiled once, with a line saying so, and the ranks only load it. An flock on `<dir>/deepspeed_shm_comm.kit-lock`
covers the check and the build: a second kit that starts meanwhile waits, then finds the op built. The kernel
releases an flock however its holder dies.

    python -m cases.llava1_5_7b.ops

Prints one JSON line per state on stdout (`{"op", "state": "ready" | "not-needed" | "checking" | "waiting" |
"building" | "built", ...}`) and the same in words on stderr. Exit 0 when the op is there (or not needed), 1 when it
could not be built (stderr says why).
"""

from __future__ import annotations

import ast
import fcntl
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OP = "deepspeed_shm_comm"
LOCK_NAME = f"{OP}.kit-lock"
NOT_NEEDED = f"{OP}.kit-not-needed.json"  # DeepSpeed said it does not use the op here (which DeepSpeed, which ask)
STAGES = ("pretrain", "finetune")  # the stages whose ranks call deepspeed.init_distributed()
# The cold build as measured on the project's 2-core machine: two translation units compiled side by side, 73-77
# CPU-seconds in all (151 s and 213 s of wall time with other work running, load 3-7; 40 s in the ninja log of a
# build when the machine was quieter).
CPU_SECONDS = 75.0
UNITS = 2  # translation units ninja compiles in parallel
TORCH_LOCK_GRACE_S = 3.0


_facts: Any = None  # main() keeps stdout for the JSON lines alone; whatever else prints goes to stderr


def _say(state: str, text: str, **facts: Any) -> None:
    print(json.dumps({"op": OP, "state": state, **facts}), file=_facts or sys.stdout, flush=True)
    print(f"{OP}: {text}", file=sys.stderr, flush=True)


def estimate_s(cores: int | None = None, load: float | None = None) -> float:
    """Wall seconds of a cold build here: the compilers share the cores with whatever else runs (the load average)."""
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    jobs = min(UNITS, cores)
    share = min(1.0, cores / max(1.0, load + jobs))  # of one core, per compiler
    return CPU_SECONDS / jobs / share


def _install_record() -> str:
    """deepspeed/git_version_info_installed.py as text ('' when absent): importing deepspeed imports torch, seconds
    spent on every run."""
    spec = importlib.util.find_spec("deepspeed")
    if spec is None or not spec.submodule_search_locations:
        return ""
    try:
        return (Path(next(iter(spec.submodule_search_locations))) / "git_version_info_installed.py").read_text()
    except OSError:
        return ""


def _installed_version() -> str:
    m = re.search(r"^version\s*=\s*['\"]([^'\"]+)['\"]", _install_record(), re.M)
    return m.group(1) if m else ""


def _not_needed_key() -> dict[str, str]:
    """What a "not needed" answer depends on: the DeepSpeed installed, the accelerator asked for, and the host (one
    venv on a shared file system may serve GPU and CPU nodes)."""
    return {"deepspeed": _installed_version(), "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", ""),
            "host": socket.gethostname()}  # fmt: skip


def prebuilt() -> bool:
    """Whether DeepSpeed was installed with the op compiled in for the CPU (DS_BUILD_SHM_COMM=1), from its install
    record."""
    text = _install_record()
    if not text:
        return False
    ops = re.search(r"^installed_ops\s*=\s*(\{.*\})\s*$", text, re.M)
    accelerator = re.search(r"^accelerator_name\s*=\s*['\"](\w+)['\"]", text, re.M)
    try:
        installed = ast.literal_eval(ops.group(1)) if ops else {}
    except (ValueError, SyntaxError):
        return False
    return bool(isinstance(installed, dict) and installed.get(OP)) and bool(accelerator and accelerator.group(1) == "cpu")


def built(folder: Path) -> bool:
    """The op's library is in its build folder and ninja has nothing to redo (a changed source or header: it has)."""
    if not (folder / f"{OP}.so").is_file():
        return False
    if not (folder / "build.ninja").is_file():
        return True  # left by another builder: the ranks' own load decides
    try:
        r = subprocess.run(["ninja", "-C", str(folder), "-n"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return True  # no ninja on PATH: torch's load fails the same way in the ranks and says so
    return r.returncode == 0 and "no work to do" in r.stdout


def _builders(folder: Path) -> list[int]:
    """Processes working in the build folder (ninja and the compilers run there): a live build, as opposed to a
    `lock` file a killed one left behind."""
    want = str(folder.resolve())
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if os.readlink(p / "cwd") == want:
                    out.append(int(p.name))
            except OSError:
                continue
    return out


def clear_stale_torch_lock(folder: Path) -> None:
    """torch's own lock (`folder/lock`) waits forever once a build that held it was killed: removed when no process
    has built there for TORCH_LOCK_GRACE_S. Called under kit's flock, so no kit build is running."""
    lock = folder / "lock"
    deadline = time.monotonic() + TORCH_LOCK_GRACE_S
    while lock.exists():
        if _builders(folder):
            deadline = time.monotonic() + TORCH_LOCK_GRACE_S  # a live build: wait for it, however long
        elif time.monotonic() > deadline:
            lock.unlink(missing_ok=True)
            _say("checking", f"removed {lock}, left by a build that was stopped (no process builds there)")
            return
        time.sleep(0.5)


def _holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _compile(root: Path) -> int:
    """Under kit's flock: the op as the ranks would build it, unless DeepSpeed does not use it here."""
    try:  # as deepspeed.comm.torch.build_shm_op() asks, without building
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        name = getattr(accelerator, "_name", "?")
        builder = accelerator.create_op_builder("ShareMemCommBuilder") if name == "cpu" else None
        usable = builder is not None and bool(getattr(deepspeed.ops, "__compatible_ops__", {}).get(builder.NAME))
    except Exception as e:  # noqa: BLE001 - a DeepSpeed that does not answer here (an older one): the ranks decide
        _say("not-needed", f"DeepSpeed did not say whether it uses the op ({type(e).__name__}: {e}); the ranks load "
             "what they need", accelerator="?")  # fmt: skip
        return 0
    if not usable:
        _say("not-needed", f"not used with DeepSpeed's {name} accelerator here: nothing to build", accelerator=name)
        try:  # remembered, so later runs need not import DeepSpeed to hear it again
            (root / NOT_NEEDED).write_text(json.dumps({**_not_needed_key(), "accelerator": name}))
        except OSError:
            pass
        return 0
    folder = root / OP
    clear_stale_torch_lock(folder)
    if built(folder):
        _say("ready", f"built already in {folder}", where=str(folder))
        return 0
    est = estimate_s()
    _say("building", f"compiling into {folder}, once for this environment (about {est:.0f} s here; "
         f"{CPU_SECONDS:.0f} CPU-seconds on {min(UNITS, os.cpu_count() or 1)} core(s))",
         where=str(folder), estimate_s=round(est), cpu_seconds=CPU_SECONDS)  # fmt: skip
    global _building
    t0 = time.monotonic()
    _building = folder
    try:
        builder.load(verbose=False)
    except Exception as e:  # noqa: BLE001 - whatever the compiler or torch raise: the message names it
        why = f"{type(e).__name__}: {str(e).strip().rstrip('.')}"
        _say("failed", f"the build failed: {why}; a C++ compiler (g++) and ninja must be on PATH", error=why)
        return 1
    finally:
        _building = None
    seconds = time.monotonic() - t0
    _say("built", f"compiled in {seconds:.0f} s into {folder}", where=str(folder), seconds=round(seconds, 1))
    return 0


def ensure() -> int:
    """The op ready for the ranks: already there (prebuilt, or built in $TORCH_EXTENSIONS_DIR), or built now, once."""
    if prebuilt():
        _say("ready", "compiled into the installed DeepSpeed (DS_BUILD_SHM_COMM=1)", where="deepspeed")
        return 0
    root_env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root_env and built(Path(root_env) / OP):
        _say("ready", f"built already in {Path(root_env) / OP}", where=str(Path(root_env) / OP))
        return 0
    if root_env and (seen := _holder(Path(root_env) / NOT_NEEDED)) and all(
            seen.get(k) == v for k, v in _not_needed_key().items()):  # fmt: skip
        _say("not-needed", f"not used with DeepSpeed's {seen.get('accelerator')} accelerator here (DeepSpeed "
             f"{seen.get('deepspeed')}): nothing to build", accelerator=seen.get("accelerator", "?"))  # fmt: skip
        return 0
    _say("checking", "not built yet: asking DeepSpeed whether this host uses it")
    if not root_env:
        from torch.utils.cpp_extension import _get_build_directory

        root_env = str(Path(_get_build_directory(OP, verbose=False)).parent)
        os.environ["TORCH_EXTENSIONS_DIR"] = root_env  # the same folder for the check and the build
    root = Path(root_env)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = _holder(root / LOCK_NAME)
            _say("waiting", f"another process (pid {h.get('pid', '?')}, since {h.get('since', '?')}) is compiling it "
                 f"into {root / OP}; waiting for it", holder=h)  # fmt: skip
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())  # fmt: skip
        return _compile(root)
    finally:
        os.close(fd)  # releases the flock


_building: Path | None = None  # the build folder while this process compiles there


def _stop(signum: int, _frame: Any) -> None:
    """SIGTERM or SIGHUP (kit stopping the build): the compilers first (ninja starts each in a process group of its own,
    out of reach of a signal to ours), then unwind, so torch's `finally` removes its lock file instead of leaving it."""
    if _building is not None:
        pids = _builders(_building)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
            time.sleep(0.1)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    raise SystemExit(128 + signum)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def main() -> int:
    global _facts
    _facts = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # DeepSpeed's and torch's prints (and their children's) go to the log, not into the JSON
    sys.stdout = sys.stderr
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    return ensure()


if __name__ == "__main__":
    sys.exit(main())
