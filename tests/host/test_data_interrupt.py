"""Signals to `kit data verify`, `kit data fix` and `kit data fetch` as real processes: each ends with one
"interrupted" line and 128 + the signal, and no process of its tree outlives it (its decoding workers were left
reparented to init, asleep forever). The data: real JPEGs large enough to keep two workers decoding for seconds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from kit.data import manifest

from . import datagen

ROOT = Path(__file__).resolve().parents[2]
KIT = [sys.executable, "-m", "kit.cli"]
BIG = 240  # images of 1600 x 1200 noise: about 40 ms each to decode here, so some seconds on two workers


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a terminal's foreground job has it (not ignored as in `cmd &`)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*KIT, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"}, start_new_session=True,
                            preexec_fn=_default_sigint)  # fmt: skip


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid`."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(p.name))
    return out


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except (OSError, IndexError):
        return False


def wait_for(what: str, check, proc: subprocess.Popen, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ended early ({proc.returncode}) waiting for {what}: {proc.communicate()}"
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


@pytest.fixture(scope="module")
def big_data(tmp_path_factory) -> Path:
    """Real data in the layout, plus BIG records naming hard links of one large JPEG (each path decoded anew)."""
    root = tmp_path_factory.mktemp("big") / "data"
    p = datagen.make(root, faults=False, mmmu=False)
    src = root / "coco/train2017/big.jpg"
    Image.effect_noise((1600, 1200), 60).convert("RGB").save(src, "JPEG", quality=90)
    recs = list(p.finetune)
    for i in range(BIG):
        os.link(src, root / f"coco/train2017/big-{i:04d}.jpg")
        recs.append({"id": f"big-{i}", "image": f"coco/train2017/big-{i:04d}.jpg",
                     "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Noise."}]})
    (root / datagen.FINETUNE_JSON).write_text(json.dumps(recs))
    return root


NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


COMMANDS = {
    "verify": ("data", "verify", "--jobs", "2", "--full"),
    "fix": ("data", "fix", "--jobs", "2", "--dry-run"),
    "check-host --deep": ("check-host", "--config", "tiny", "--native", "--deep"),
}
WHAT = {
    "verify": "verify stopped, and every worker with it; no manifest was written",
    "fix": "fix stopped, and every worker with it. No file is half-written",
    "check-host --deep": "check-host stopped, and every worker with it",
}


# verify with each signal; fix and check-host --deep decode through verify: SIGTERM shows their own handling.
CASES = [("verify", signal.SIGINT), ("verify", signal.SIGTERM), ("verify", signal.SIGHUP), ("fix", signal.SIGTERM),
         ("check-host --deep", signal.SIGTERM)]  # fmt: skip


@pytest.mark.parametrize(("command", "sig"), CASES, ids=[f"{c}-{s.name}" for c, s in CASES])
def test_a_signal_mid_decode_ends_every_worker_with_one_line_and_128_plus_the_signal(big_data, command, sig):
    proc = start(*COMMANDS[command], "--data", str(big_data))
    workers = wait_for("two decoding workers", lambda: (c := children(proc.pid)) and len(c) >= 2 and c, proc)
    time.sleep(0.5)  # decoding: every worker has a chunk of big JPEGs
    assert proc.poll() is None, "the decode ended before the signal: make the data larger"
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C at a terminal reaches the whole foreground group, workers too
    else:
        os.kill(proc.pid, sig)  # kill, timeout, a closed terminal: the command alone
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, (out, err)
    lines = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"interrupted by {NAMES[sig]}: {WHAT[command]}"), err
    assert "Traceback" not in err and "Aborted" not in err, err
    time.sleep(0.5)
    assert [p for p in workers if alive(p)] == [], "a decoding worker outlived the command"
    if command == "verify":
        assert not manifest.path(big_data).exists()
    assert not list(big_data.rglob("*.tmp"))


def test_sigkill_to_verify_takes_its_workers_too(big_data):
    """No handler runs on SIGKILL: the workers' parent-death signal ends them."""
    proc = start("data", "verify", "--data", str(big_data), "--jobs", "2", "--full")
    workers = wait_for("two decoding workers", lambda: (c := children(proc.pid)) and len(c) >= 2 and c, proc)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in workers if alive(p)] == []


@pytest.fixture
def stalled_server():
    """A TCP port that takes connections and never answers: a cover download hangs in its read (60 s timeout)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    held: list[socket.socket] = []
    s.settimeout(0.1)
    yield s, held
    for c in held:
        c.close()
    s.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_fetch_interrupted_with_covers_in_flight_exits_at_once(tmp_path, stalled_server, sig):
    """Its download threads used to be joined at exit: an interrupted fetch waited for every cover in flight."""
    server, _held = stalled_server
    port = server.getsockname()[1]
    index = {str(i): {"imageURL": f"http://127.0.0.1:{port}/{i}.jpg"} for i in range(8)}
    (tmp_path / "dataset.json").write_text(json.dumps(index))
    d = tmp_path / "d"
    d.mkdir()
    records = [{"id": str(i), "image": f"ocr_vqa/images/{i}.jpg", "conversations": []} for i in range(8)]
    (d / "llava_v1_5_mix665k.json").write_text(json.dumps(records))
    sources = tmp_path / "sources.toml"
    sources.write_text('schema = "kit.data-sources/1"\ncase = "llava1_5_7b"\n[reference]\npretrain_records = 1\n'
                       'finetune_records = 1\n\n[[source]]\nname = "ocr_vqa"\nwhat = "covers"\nkind = "covers"\n'
                       f'url = "file://{tmp_path / "dataset.json"}"\nroot = "data"\ndest = "ocr_vqa/images"\n'
                       'yields = "ocr_vqa/images"\nbytes = 1000\n')  # fmt: skip
    proc = start("data", "fetch", "--data", str(d), "--sources", str(sources), "--jobs", "4")
    # Four threads each wait in a read from the server that never answers.
    wait_for("four covers in flight", lambda: len(_accepted(server, _held)) >= 4, proc, timeout=60)
    t0 = time.monotonic()
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 128 + sig, (out, err)
    assert took < 10, f"exited {took:.1f} s after the signal (a thread held the exit)"
    lines = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"interrupted by {NAMES[sig]}: the partial downloads are kept"), err


def _accepted(server: socket.socket, held: list[socket.socket]) -> list[socket.socket]:
    try:
        while True:
            conn, _ = server.accept()
            held.append(conn)  # held open, never answered
    except (TimeoutError, BlockingIOError, OSError):
        pass
    return held


def test_check_host_interrupted_while_a_host_does_not_answer_ends_its_ssh_at_once(stalled_server):
    """ssh to a host that takes the connection and never answers waits for its connect timeout (15 s); the threads
    of the remote checks used to keep check-host waiting for it after SIGTERM, and the ssh ran on."""
    server, _held = stalled_server
    port = server.getsockname()[1]
    proc = start("check-host", "--config", "tiny", "--native", "--hosts", f"nobody@127.0.0.1:{port}")
    ssh = wait_for("the ssh to the silent host", lambda: [p for p in children(proc.pid) if _comm(p) == "ssh"], proc)
    time.sleep(0.3)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    assert time.monotonic() - t0 < 5, "check-host waited for the ssh's timeout"
    lines = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert lines == ["interrupted by SIGTERM: check-host stopped, and every worker with it"], err
    time.sleep(0.3)
    assert [p for p in ssh if alive(p)] == []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
