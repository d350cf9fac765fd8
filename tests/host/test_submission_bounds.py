"""Archives built to exhaust `kit verify`: each refused within seconds, in bounded memory, with one line and exit 2.

Each bomb is a real file of the kind an attacker would send (a tarball of 200,000 empty members, a gzip bomb of 4 GB
of zeros in 40 members, a GNU tar sparse member of 20 GiB made by GNU tar itself), checked by a real `kit verify`
process whose peak memory is read from the kernel (the child's VmHWM), less that of the same process refusing a
missing path.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import pytest

from kit.submission.bounds import DEFAULT_LIMITS, Limits, unpack, walk
from kit.submission.layout import SubmissionError

ROOT = Path(__file__).resolve().parents[2]
# The memory a bomb may cost `kit verify` beyond what the same `kit verify` costs to start and refuse a missing path,
# in the same environment: the work must not grow with the archive. (The start-up itself is not bounded here: it
# depends on the machine's libraries; a CI machine once showed ~1 GB of VmHWM for every kit process.)
WORK_BOUND_MIB = 200


# Runs `kit verify` and, as it exits, writes its own peak resident memory (VmHWM: this process image's, not the forked
# test process's pages before exec, which ru_maxrss would count), with the rest of /proc/self/status's memory lines
# and any heavy module it imported, to the file named by KIT_TEST_PEAK.
PEAK_WRAPPER = (
    "import atexit, json, os, runpy, sys\n"
    "def peak():\n"
    "    with open('/proc/self/status') as f:\n"
    "        status = {k: v.strip() for k, _, v in (line.partition(':') for line in f) if k.startswith(('Vm', 'Rss'))}\n"
    "    heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'deepspeed', 'transformers', 'numpy'})\n"
    "    with open(os.environ['KIT_TEST_PEAK'], 'w') as out:\n"
    "        json.dump({'status': status, 'heavy': heavy[:10], 'modules': len(sys.modules)}, out)\n"
    "atexit.register(peak)\n"
    "sys.argv = ['kit', *sys.argv[1:]]\n"
    "runpy.run_module('kit.cli', run_name='__main__')\n"
)


class Peak(float):
    """A child's peak resident memory in MiB, carrying what the child reported (shown when an assertion fails)."""

    report: dict

    def __new__(cls, mib: float, report: dict):
        self = super().__new__(cls, mib)
        self.report = report
        return self

    def __repr__(self) -> str:
        return f"{float(self):.0f} MiB {self.report}"


def verify_cli(path: Path) -> tuple[subprocess.CompletedProcess, float, Peak]:
    """`kit verify PATH` in a child; (result, seconds, that process's peak resident memory in MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, "verify", str(path)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "COLUMNS": "200", "KIT_TEST_PEAK": str(peak_file)})  # fmt: skip
        seconds = time.monotonic() - t0
        report = json.loads(peak_file.read_text()) if peak_file.is_file() else {}
        hwm = report.get("status", {}).get("VmHWM", "")
        peak = Peak(int(hwm.split()[0]) / 1024 if hwm else float("inf"), report)
    return r, seconds, peak


@pytest.fixture(scope="module")
def start_mib(tmp_path_factory) -> Peak:
    """The peak of `kit verify` refusing a path that does not exist: the process's start-up, Python and imports."""
    r, _, peak = verify_cli(tmp_path_factory.mktemp("none") / "missing.tar.gz")
    assert r.returncode == 2, (r.stdout, r.stderr)
    if peak > 400:  # not a failure of the bounds, but worth seeing in the test summary: what made the start-up heavy
        warnings.warn(f"kit verify starts at {peak!r}", stacklevel=1)
    return peak


def within_bound(peak: Peak, start: Peak) -> bool:
    return peak - start < WORK_BOUND_MIB


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and r.stdout.strip() == ""
    return " ".join(lines)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def test_200000_empty_members(tmp_path, start_mib):
    path = tmp_path / "many.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as gz:
        for i in range(200_000):
            gz.write(_header(f"Acme/results/x/{i:06d}", 0))
        gz.write(b"\0" * 1024)
    assert path.stat().st_size < 3_000_000
    r, seconds, peak = verify_cli(path)
    msg = one_line_error(r)
    assert f"more than {DEFAULT_LIMITS.members:,} members" in msg and str(path) in msg
    assert seconds < 30 and within_bound(peak, start_mib), (seconds, peak, start_mib)


def test_a_gzip_bomb_of_4_gb(tmp_path, start_mib):
    """40 members of 100 MiB of zeros, each a gzip member of its own (a valid multi-member gzip stream)."""
    piece = 100 * 2**20
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zeros = comp.compress(b"\0" * piece) + comp.flush()
    path = tmp_path / "bomb.tar.gz"
    with open(path, "wb") as f:
        for i in range(40):
            f.write(gzip.compress(_header(f"Acme/results/x/zeros{i}", piece), mtime=0))
            f.write(zeros)
        f.write(gzip.compress(b"\0" * 1024, mtime=0))
    assert path.stat().st_size < 20 * 2**20
    free_before = shutil.disk_usage(tmp_path).free
    r, seconds, peak = verify_cli(path)
    msg = one_line_error(r)
    assert "add up to more than 2.0 GiB" in msg, msg
    assert seconds < 60 and within_bound(peak, start_mib), (seconds, peak, start_mib)
    assert shutil.disk_usage(tmp_path).free > free_before - 2**30  # the scratch folder is gone again


def test_a_sparse_member_of_20_gib(tmp_path, start_mib):
    gnutar = shutil.which("tar")
    if gnutar is None or "GNU tar" not in subprocess.run([gnutar, "--version"], capture_output=True, text=True).stdout:
        pytest.skip("GNU tar is needed to write a sparse member")
    src = tmp_path / "Acme" / "results"
    src.mkdir(parents=True)
    with open(src / "holes.bin", "wb") as f:
        f.truncate(20 * 2**30)
        f.seek(10 * 2**30)
        f.write(b"x")
    path = tmp_path / "sparse.tar.gz"
    subprocess.run([gnutar, "-czSf", str(path), "-C", str(tmp_path), "Acme"], check=True)
    (src / "holes.bin").unlink()
    assert path.stat().st_size < 100_000
    r, seconds, peak = verify_cli(path)
    msg = one_line_error(r)
    assert "holes.bin" in msg and ("sparse file" in msg or "is 20.0 GiB" in msg), msg
    assert seconds < 30 and within_bound(peak, start_mib), (seconds, peak, start_mib)


def test_a_sparse_file_in_a_folder_is_not_hashed(tmp_path):
    root = tmp_path / "Acme"
    (root / "results").mkdir(parents=True)
    with open(root / "results" / "holes.bin", "wb") as f:
        f.truncate(400 * 2**20)
    t0 = time.monotonic()
    with pytest.raises(SubmissionError, match="holes.bin.* is a sparse file of 400 MiB"):
        list(walk(root))
    assert time.monotonic() - t0 < 5


def _tar(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    path = tmp_path / "t.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize(("members", "message"), [
    ([_file("Acme/../../etc/cron.d/x")], "points outside the archive"),
    ([_file("/etc/passwd")], "points outside the archive"),
    ([_file("Acme/a"), _file("Acme/a")], "appears twice"),
    ([_file("Acme/" + "/".join("d" * 13) + "/f")], "folders deep"),
    ([_file("Acme/" + "x" * 1100)], "characters long"),
])  # fmt: skip
def test_members_that_are_refused(tmp_path, members, message):
    path = _tar(tmp_path, members)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(SubmissionError, match=message):
        unpack(path, dest)
    assert not (tmp_path / "etc").exists()


def test_links_and_special_files_are_refused(tmp_path):
    link = tarfile.TarInfo("Acme/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    fifo = tarfile.TarInfo("Acme/fifo")
    fifo.type = tarfile.FIFOTYPE
    for info, what in ((link, "a link"), (fifo, "a special file")):
        dest = tmp_path / what.replace(" ", "-")
        dest.mkdir()
        with pytest.raises(SubmissionError, match=f"is {what}"):
            unpack(_tar(dest, [(info, b"")]), dest)


def test_a_file_over_the_bound_is_refused_before_it_is_written(tmp_path):
    path = _tar(tmp_path, [_file("Acme/big", b"y" * 5000)])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(SubmissionError, match="the bound for one file is 4,096 bytes"):
        unpack(path, dest, Limits(file_bytes=4096))
    assert not (dest / "Acme" / "big").exists()


def test_not_a_gzip_tarball(tmp_path):
    path = tmp_path / "plain.tar.gz"
    path.write_bytes(b"this is not gzip")
    r, _, _ = verify_cli(path)
    msg = one_line_error(r)
    assert "not a gzip-compressed tar archive" in msg and str(path) in msg
