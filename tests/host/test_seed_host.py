"""The seed's own host: the A800 reference machine runs NVIDIA driver 470.141.10, which runs CUDA 11.x images only.

No NVML recording of a 470 driver exists in this project, so tests/fixtures/hosts/nvml-h200x2-driver470.json is the
real H200x2 recording with its four driver readings changed (its "source" says so; the first test checks that
nothing else changed). On it, `kit check-host` names the reference stack's CUDA 11.8 variant, and `kit build --cuda
auto --dry-run` plans that variant from the repository's own Dockerfile and locks without a refusal, now that
env/lock-cu118-torch.txt pins torch 2.1.2+cu118 by the sha256 the PyTorch index publishes (its header names the two
public records of it). `bash env/lock.sh cu118-torch` writes that lock, against a loopback index here.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kit import __version__
from kit.commands import check_host as ch
from kit.commands.build import build as build_command
from kit.commands.env import env
from kit.image import builder as b
from kit.vendors.nvidia.nvml import open_nvml

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ROOT / "tests" / "fixtures" / "hosts"
RECORDING = HOSTS / "nvml-h200x2.json"
SEED_DRIVER = HOSTS / "nvml-h200x2-driver470.json"
TORCH118 = "torch==2.1.2+cu118 --hash=sha256:60396358193f238888540f4a38d78485f161e28ec17fa445f0373b5350ef21f0"
DRIVER_CALLS = {
    '["nvmlSystemGetDriverVersion", []]': "470.141.10",
    '["nvmlSystemGetCudaDriverVersion", []]': 11040,
    '["nvmlSystemGetCudaDriverVersion_v2", []]': 11040,
    '["nvmlSystemGetNVMLVersion", []]': "11.470.141.10",
}
runner = CliRunner()


def test_the_seed_driver_recording_is_the_real_one_with_only_the_driver_changed():
    real, seed = json.loads(RECORDING.read_text()), json.loads(SEED_DRIVER.read_text())
    assert seed["source"].startswith("DERIVED, not recorded: tests/fixtures/hosts/nvml-h200x2.json")
    assert {k: v for k, v in seed.items() if k not in ("source", "calls")} == {
        k: v for k, v in real.items() if k != "calls"}  # fmt: skip
    assert set(seed["calls"]) == set(real["calls"])
    changed = {k for k in real["calls"] if real["calls"][k] != seed["calls"][k]}
    assert changed == set(DRIVER_CALLS)
    assert {k: seed["calls"][k]["result"] for k in changed} == DRIVER_CALLS


def test_check_host_on_the_seed_driver_names_the_reference_stacks_11_8_variant(tmp_path, monkeypatch):
    monkeypatch.setattr(ch, "extra_checks", [])  # Docker's checks belong to test_docker_checks.py
    app = typer.Typer()
    app.command("check-host")(ch.check_host)
    app.command("env")(env)  # two commands: the app takes the command's name, as kit's does
    argv = ["check-host", "--config", "A800x1x1", "--results", str(tmp_path)]
    seed = {"KIT_NVML_RECORDING": str(SEED_DRIVER)}  # NVIDIA's vendor answers from the recording
    r = runner.invoke(app, [*argv, "--json"], env=seed)
    rows = {c["name"]: c for c in next(iter(json.loads(r.stdout)["hosts"].values()))}
    driver = rows["driver"]
    assert driver["status"] == "ok" and driver["detail"].startswith("470.141.10: full support up to CUDA 11.4")
    assert rows["image CUDA 11.8"]["status"] == "warn" and "minor-version compatibility" in rows["image CUDA 11.8"]["detail"]
    assert rows["image CUDA 12.1"]["data"]["support"] == "none"
    reference = rows["stack reference"]
    assert reference["status"] == "warn"
    assert "with its CUDA 11.8 variant (`kit build --cuda auto` takes it)" in reference["detail"]
    assert "no variant runs on driver 470.141.10" in rows["stack current"]["detail"]
    shown = runner.invoke(app, argv, env={"COLUMNS": "200", **seed}).stdout  # what a user reads
    assert "kit build --cuda 11.8" in shown and "stack reference" in shown


def test_build_auto_on_the_seed_driver_plans_11_8_from_the_repository_without_refusal(tmp_path):
    plan = b.plan_build(ROOT, "auto", driver=open_nvml(SEED_DRIVER), results=tmp_path)
    assert plan.variant == "11.8" and plan.base_image == "nvidia/cuda:11.8.0-cudnn8-devel-ubuntu20.04"
    locks = [ROOT / "env" / "lock-cu118.txt", ROOT / "env" / "lock-cu118-torch.txt"]
    assert plan.locks == locks
    assert plan.lock_sha256 == hashlib.sha256(b"".join(p.read_bytes() for p in locks)).hexdigest()
    assert re.fullmatch(rf"kit-llava:{re.escape(__version__)}-cu118-[0-9a-f]{{12}}", plan.tag)
    assert plan.build_args["CUDA_VARIANT"] == "11.8"

    app = typer.Typer()
    app.command()(build_command)
    r = runner.invoke(app, ["--cuda", "auto", "--dry-run", "--results", str(tmp_path)],
                      env={"COLUMNS": "250", "KIT_NVML_RECORDING": str(SEED_DRIVER)})  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "nothing is sent to the engine" in r.output and plan.tag in r.output
    assert "CUDA 11.8 (driver 470.141.10 cannot run CUDA 12.1 fully" in r.output
    assert "lock-cu118-torch.txt" in r.output and "without its sha256" not in r.output
    assert "warning: CUDA 11.8 image runs only through minor-version compatibility" in r.output
    assert not (tmp_path / "builds").exists()  # a dry run writes nothing


def test_the_cu118_torch_lock_pins_the_published_sha256_and_names_its_records():
    text = (ROOT / "env" / "lock-cu118-torch.txt").read_text()
    assert [ln for ln in text.splitlines() if ln and not ln.startswith("#")] == [TORCH118]
    for record in ("XuHuang441/Multi-player-Nash-Policy-Optimization, inpo_original/README.md",
                   "342faafbdd95ced11731e377cb6f839ee37d9832",
                   "xhiroga/zenn-content, articles/uv-pytorch-trouble-shooting.md",
                   "ef00cd236ce9c9910a9be89ee2f0806863478904",
                   "https://download.pytorch.org/whl/cu118/torch-2.1.2%2Bcu118-cp310-cp310-linux_x86_64.whl#sha256="
                   "60396358193f238888540f4a38d78485f161e28ec17fa445f0373b5350ef21f0"):  # fmt: skip
        assert record in text
    sha = re.search(r"^TORCH118_SHA256=([0-9a-f]{64})$", (ROOT / "env" / "lock.sh").read_text(), re.M)
    assert sha and TORCH118.endswith(sha.group(1))


class _Index(http.server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        found = self.path == "/whl/cu118/torch/"
        self.send_response(200 if found else 404)
        self.end_headers()
        self.wfile.write(self.page if found else b"")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def index():
    """A loopback stand-in for the PyTorch index's torch page (its links carry #sha256= fragments)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _lock_sh(tmp_path: Path, url: str) -> subprocess.CompletedProcess:
    assert shutil.which("curl", path="/usr/bin:/bin"), "env/lock.sh reads the index with curl: install it (apt)"
    (tmp_path / "env").mkdir(exist_ok=True)
    shutil.copy(ROOT / "env" / "lock.sh", tmp_path / "env" / "lock.sh")
    return subprocess.run(["bash", "env/lock.sh", "cu118-torch"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "TORCH_INDEX_URL": url})  # fmt: skip


def _link(sha: str, python: str = "cp310") -> bytes:
    wheel = f"torch-2.1.2%2Bcu118-{python}-{python}-linux_x86_64.whl"
    return f'<a href="/whl/cu118/{wheel}#sha256={sha}">{wheel.replace("%2B", "+")}</a>\n'.encode()


def test_lock_sh_writes_the_torch_lock_with_or_without_the_index(tmp_path, index):
    committed = (ROOT / "env" / "lock-cu118-torch.txt").read_text()
    port = index.server_address[1]
    unreachable = _lock_sh(tmp_path, f"http://127.0.0.1:{port}/nowhere")  # 404: as good as unreachable
    assert unreachable.returncode == 0, unreachable.stderr
    assert "with the recorded sha256 (the index was not reachable here)" in unreachable.stderr
    written = (tmp_path / "env" / "lock-cu118-torch.txt").read_text()
    # Only the first line names the index it was written for; the records and the pin are the same.
    assert written.splitlines()[1:] == committed.splitlines()[1:]
    _Index.page = _link("0" * 64, "cp311") + _link(TORCH118.rsplit(":", 1)[1])  # the page lists every wheel
    same = _lock_sh(tmp_path, f"http://127.0.0.1:{port}/whl")
    assert same.returncode == 0, same.stderr
    assert f"with the sha256 of the index (http://127.0.0.1:{port}/whl/cu118), equal to the recorded one" in same.stderr


def test_lock_sh_stops_when_the_index_publishes_another_sha256(tmp_path, index):
    port = index.server_address[1]
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "lock-cu118-torch.txt").write_text("# the lock before\n" + TORCH118 + "\n")
    _Index.page = _link("ab" * 32)
    r = _lock_sh(tmp_path, f"http://127.0.0.1:{port}/whl")
    assert r.returncode == 1
    assert f"publishes sha256 {'ab' * 32} for torch-2.1.2%2Bcu118-cp310-cp310-linux_x86_64.whl, not the recorded" in r.stderr
    assert "find out why before changing TORCH118_SHA256 in env/lock.sh" in r.stderr
    assert (tmp_path / "env" / "lock-cu118-torch.txt").read_text() == "# the lock before\n" + TORCH118 + "\n"
