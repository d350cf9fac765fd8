"""cases/llava1_5_7b/device.py, the case's one device layer, under both environments (`make test`: torch 2.13 /
DeepSpeed 0.19.8; `make test-pins`: torch 2.1.2 / DeepSpeed 0.13.1 with the case's own CPU accelerator).

The layer runs for real on whatever device this host has (here the CPU, through DeepSpeed's CPU accelerator or
compat.py's); the vendor's runtime is applied in real processes to real modules written into a temporary folder.
The CUDA path cannot run on this machine: there the real CUDA accelerator class of the installed DeepSpeed is driven
with torch.cuda's answers replayed from a recording made on an NVIDIA GPU (tests/fixtures/devices/, its source
inside).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from cases.llava1_5_7b import compat, device  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "cases"
RECORDING = ROOT / "tests" / "fixtures" / "devices" / "cuda-device-layer.json"
MIB = 2**20
PINNED_DEEPSPEED = compat._release(metadata.version("deepspeed")) < compat.OWN_CPU_ACCELERATOR_FROM


# ---------------------------------------------------------------------------------------------- one layer only

# The device API: torch.cuda in any spelling, and torch.backends' CUDA switches. Comments count too: a file that
# speaks of torch.cuda should speak of the device layer instead.
DEVICE_API = re.compile(r"\btorch\s*\.\s*(?:cuda|backends\s*\.\s*(?:cuda|cudnn))\b"
                        r"|^\s*from\s+torch\s+import\s+[^\n]*\bcuda\b|^\s*import\s+torch\.cuda\b", re.M)  # fmt: skip
BACKEND_LITERAL = re.compile(r"""(["'])(nccl|gloo)\1""")
LAYER = {"llava1_5_7b/device.py"}
BACKEND_NAMERS = LAYER | {"llava1_5_7b/compat.py"}  # compat.py: gloo's collectives for torch < 2.2, the CPU accelerator


def device_api_hits(root: Path) -> list[str]:
    """`path:line: text` of every device API use and backend literal outside the files allowed to have them."""
    hits = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        found = [] if rel in LAYER else list(DEVICE_API.finditer(text))
        found += [] if rel in BACKEND_NAMERS else list(BACKEND_LITERAL.finditer(text))
        for m in sorted(found, key=lambda m: m.start()):
            line = text.count("\n", 0, m.start()) + 1
            hits.append(f"{rel}:{line}: {text.splitlines()[line - 1].strip()}")
    return hits


def test_the_case_touches_the_device_only_through_device_py():
    hits = device_api_hits(CASES)
    assert not hits, "the device API outside cases/llava1_5_7b/device.py (use the device layer):\n" + "\n".join(hits)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    case = tmp_path / "llava1_5_7b"
    case.mkdir()
    (case / "device.py").write_text("import torch\ntorch.cuda.synchronize()\nBACKEND = 'nccl'\n")  # the layer: allowed
    (case / "compat.py").write_text('if backend != "gloo":\n    pass\n')  # allowed to name gloo
    (case / "train.py").write_text(textwrap.dedent("""\
        import torch
        from torch import nn, cuda
        torch.cuda.synchronize()
        torch . cuda . set_device(0)
        torch.backends.cudnn.allow_tf32 = True
        backend = "nccl" if ok else 'gloo'
        note = "ncclx and torch.cudax are other words"
    """))
    assert device_api_hits(tmp_path) == [
        "llava1_5_7b/train.py:2: from torch import nn, cuda",
        "llava1_5_7b/train.py:3: torch.cuda.synchronize()",
        "llava1_5_7b/train.py:4: torch . cuda . set_device(0)",
        "llava1_5_7b/train.py:5: torch.backends.cudnn.allow_tf32 = True",
        "llava1_5_7b/train.py:6: backend = \"nccl\" if ok else 'gloo'",
        "llava1_5_7b/train.py:6: backend = \"nccl\" if ok else 'gloo'",
    ]


# ---------------------------------------------------------------------------------------------- the layer, for real


@pytest.fixture(scope="module")
def layer() -> device.Device:
    if os.environ.get(device.RUNTIME_ENV):
        pytest.skip(f"{device.RUNTIME_ENV} is set in this environment; these tests run the layer without a runtime")
    return device.init(0, 1)  # this process's layer, as a rank of local rank 0 opens it


def test_the_layer_is_deepspeeds_accelerator_on_this_host(layer):
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    assert layer.accelerator is acc and device.current() is layer and device.init() is layer
    assert layer.type == acc.device_name() == device.device_type()
    if layer.on_host:
        assert layer.type == "cpu" and layer.torch_device == torch.device("cpu")
        assert type(acc).__name__ == ("HostCPUAccelerator" if PINNED_DEEPSPEED else "CPU_Accelerator")
        assert (layer.backend, layer.name(), layer.fused_adamw) == ("gloo", "cpu", False)
        assert layer.loader_pinning() == {"pin_memory": False} and layer.allow_tf32(True) is False
    else:  # run on a GPU machine: the same tests, with the CUDA accelerator
        assert layer.type == "cuda" and layer.torch_device == torch.device("cuda", 0)
        assert (layer.backend, layer.name()) == ("nccl", torch.cuda.get_device_name(0))
        assert layer.fused_adamw and layer.loader_pinning() == {"pin_memory": True}
    with pytest.raises(device.DeviceError, match="bound to local rank 0's device; it cannot take local rank 1's"):
        device.init(1, 2)


def test_memory_figures_follow_an_allocation_and_their_reset(layer):
    layer.synchronize()
    assert layer.reset_peaks() is True  # Linux: /proc/self/clear_refs; a device: its allocator's counters
    base = layer.memory_peaks()[0]
    x = torch.ones(256 * MIB // 4, device=layer.torch_device)  # 256 MiB, every page touched
    layer.synchronize()
    allocated, reserved = layer.memory_peaks()
    used = layer.memory_used()
    assert allocated >= base + 0.95 * 256 * MIB and reserved >= allocated
    assert layer.memory() == [allocated, reserved, used]
    del x
    layer.empty_cache()
    assert layer.memory_peaks()[0] == allocated  # a peak stays a peak
    assert layer.reset_peaks() is True
    assert layer.memory_peaks()[0] < allocated - 200 * MIB
    total = layer.memory_total()
    if layer.on_host:  # one rank's peak resident set, against the host's RAM (as the case always counted)
        assert allocated == reserved == used
        assert total == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        free, dev_total = torch.cuda.mem_get_info(0)
        assert total == dev_total and used >= allocated
    facts = layer.facts(2)
    assert facts == {"device_type": layer.type, "device_name": layer.name(), "device_count": 2,
                     "device_mem_total_bytes": total, "runtime": None}  # fmt: skip


def test_seed_synchronize_and_a_process_group_on_the_layers_backend(layer, tmp_path):
    import torch.distributed as dist

    layer.seed(1234)
    a = torch.rand(5, device=layer.torch_device)
    layer.seed(1234)
    b = torch.rand(5, device=layer.torch_device)
    assert torch.equal(a, b) and torch.initial_seed() == 1234
    assert layer.synchronize() is None
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group(layer.backend, store=store, rank=0, world_size=1)
    try:
        t = torch.full((3,), 2.5, device=layer.torch_device)
        dist.all_reduce(t)
        layer.synchronize()
        assert dist.get_backend() == layer.backend and t.tolist() == [2.5, 2.5, 2.5]
    finally:
        dist.destroy_process_group()


def test_a_cpu_rank_gets_its_share_of_the_cores(layer):
    if not layer.on_host:
        pytest.skip("a device rank keeps torch's threads")
    threads = torch.get_num_threads()
    try:
        other = device.Device(layer.accelerator)  # a second rank's view of the same host
        assert other.bind(1, 2) == torch.device("cpu") and other.index == 1
        assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) // 2)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- the vendor's runtime


def _runtime(**kw) -> dict[str, str]:
    return {device.RUNTIME_ENV: json.dumps(kw)}


@pytest.mark.parametrize(
    "raw, says",
    [
        ("{not json", "is not JSON"),
        ('["torch_npu"]', "is a JSON list, not an object"),
        ('{"vendor": "acme", "patches": ["x"]}', "has keys the case does not know how to apply: patches"),
        ('{"imports": ["torch_npu"]}', "names no vendor"),
        ('{"vendor": "acme", "imports": "torch_npu"}', '"imports" must be a list of module names'),
        ('{"vendor": "acme", "imports": ["torch-npu"]}', "names 'torch-npu', which is not a module name"),
        ('{"vendor": "acme", "environment": {"DS_ACCELERATOR": 1}}', "holds 'DS_ACCELERATOR': 1"),
        ('{"vendor": "acme", "environment": {"A=B": "1"}}', "names must be non-empty without '='"),
    ],
)  # fmt: skip
def test_a_runtime_the_case_cannot_apply_exactly_is_refused(raw, says):
    with pytest.raises(device.DeviceError) as e:
        device.read_runtime({device.RUNTIME_ENV: raw})
    msg = str(e.value)
    assert msg.startswith(f"{device.RUNTIME_ENV} ") and says in msg and raw[:20] in msg
    assert f"unset {device.RUNTIME_ENV} to run without one" in msg


def test_no_runtime_is_none_and_a_full_one_reads_back():
    assert device.read_runtime({}) is None and device.read_runtime({device.RUNTIME_ENV: " "}) is None
    rt = device.read_runtime(_runtime(vendor="ascend", imports=["torch_npu", "torch_npu.contrib.transfer_to_npu"],
                                      environment={"DS_ACCELERATOR": "npu"}))  # fmt: skip
    assert rt is not None and rt.facts() == {"vendor": "ascend", "imports": ["torch_npu", "torch_npu.contrib.transfer_to_npu"],
                                             "environment": {"DS_ACCELERATOR": "npu"}}  # fmt: skip
    assert device.read_runtime(_runtime(vendor="amd")).facts() == {"vendor": "amd", "imports": [], "environment": {}}


VENDOR_MODULE = '''
"""A vendor's torch plug-in stand-in: records, when imported, what the process held at that moment."""
import json, os, sys

with open(os.environ["KIT_TEST_VENDOR_LOG"], "a") as f:
    f.write(json.dumps({"module": __name__, "flag": os.environ.get("KIT_TEST_VENDOR_FLAG"),
                        "torch": "torch" in sys.modules, "deepspeed": "deepspeed" in sys.modules}) + "\\n")
'''


def _probe(tmp_path: Path, runtime: str, **env: str) -> subprocess.CompletedProcess:
    """The environment probe (`python -m cases.llava1_5_7b.env`) as the host starts it, with a runtime handed in."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    for name in ("acme_torch", "acme_patches"):
        (plugins / f"{name}.py").write_text(VENDOR_MODULE)
    (plugins / "acme_broken.py").write_text('raise OSError("libacme_runtime.so: cannot open shared object file")\n')
    environ = {**os.environ, **env, device.RUNTIME_ENV: runtime,
               "PYTHONPATH": os.pathsep.join([str(plugins), str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "cases.llava1_5_7b.env"], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_the_runtime_is_applied_first_environment_then_imports_in_order_and_recorded(tmp_path):
    log = tmp_path / "imports.jsonl"
    declared = {"vendor": "acme", "imports": ["acme_torch", "acme_patches"],
                "environment": {"KIT_TEST_VENDOR_LOG": str(log), "KIT_TEST_VENDOR_FLAG": "on"}}  # fmt: skip
    r = _probe(tmp_path, json.dumps(declared), KIT_TEST_VENDOR_FLAG="off")
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)  # nothing but the JSON on stdout: the layer's lines went to stderr
    assert facts["torch"]["runtime"] == declared and "device_error" not in facts
    assert facts["torch"]["device_type"] == device.choose_type({})
    # The environment was in place when the first module was imported; both came before torch and DeepSpeed.
    assert [json.loads(x) for x in log.read_text().splitlines()] == [
        {"module": "acme_torch", "flag": "on", "torch": False, "deepspeed": False},
        {"module": "acme_patches", "flag": "on", "torch": False, "deepspeed": False},
    ]
    assert f"{device.RUNTIME_ENV} (acme): KIT_TEST_VENDOR_FLAG=on replaces KIT_TEST_VENDOR_FLAG=off" in r.stderr
    assert "(acme) applied: environment ['KIT_TEST_VENDOR_FLAG', 'KIT_TEST_VENDOR_LOG'], imports ['acme_torch', 'acme_patches']" in r.stderr


def test_a_failing_import_names_the_vendor_and_the_module(tmp_path):
    log = tmp_path / "imports.jsonl"
    r = _probe(tmp_path, json.dumps({"vendor": "acme", "imports": ["acme_torch", "acme_broken", "acme_patches"],
                                     "environment": {"KIT_TEST_VENDOR_LOG": str(log)}}))  # fmt: skip
    assert r.returncode == 3  # the probe's "the case cannot run here", before any stage starts
    msg = ("the runtime of vendor 'acme' imports 'acme_broken' before the first device touch (after acme_torch), and "
           "that import failed: OSError: libacme_runtime.so: cannot open shared object file. Install the vendor's "
           "torch plug-in where the ranks run")  # fmt: skip
    assert f"the case cannot use the device here: {msg}" in r.stderr
    assert msg in json.loads(r.stdout)["device_error"]
    assert [json.loads(x)["module"] for x in log.read_text().splitlines()] == ["acme_torch"]  # stopped there
    missing = device.Runtime("acme", ["acme_not_installed"])
    with pytest.raises(device.DeviceError, match="imports 'acme_not_installed' before the first device touch, and "
                                                 "that import failed: ModuleNotFoundError"):  # fmt: skip
        device.apply_runtime(missing, {})


def test_an_accelerator_without_a_device_is_refused(tmp_path):
    """DS_ACCELERATOR names a device this host lacks: the layer says so before any rank builds an engine."""
    if device.choose_type({}) == "cuda":
        pytest.skip("this host has a CUDA device")
    r = _probe(tmp_path, "", DS_ACCELERATOR="cuda")
    assert r.returncode == 3, r.stderr
    assert ("DeepSpeed's cuda accelerator (CUDA_Accelerator) finds no device here (DS_ACCELERATOR='cuda'): check the "
            "driver and the device's visibility to this process, or unset DS_ACCELERATOR to run on the CPU") in r.stderr


# ---------------------------------------------------------------------------------------------- the CUDA path


def _replay(monkeypatch: pytest.MonkeyPatch, moment: dict, calls: list) -> None:
    """torch.cuda (and the version facts) answering as the GPU did at one recorded moment; every call is logged."""
    a = moment["torch_cuda"]

    def answer(name: str, value=None):
        def fn(*args):
            calls.append([name, *args])
            return a[name] if value is None else value

        return fn

    props = type("Props", (), {"total_memory": a["get_device_properties.total_memory"]})()
    for name in ("is_available", "device_count", "get_device_name", "max_memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, answer(name))
    monkeypatch.setattr(torch.cuda, "mem_get_info", answer("mem_get_info", tuple(a["mem_get_info"])))
    monkeypatch.setattr(torch.cuda, "get_device_capability", answer("get_device_capability",
                                                                    tuple(a["get_device_capability"])))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "get_device_properties", answer("get_device_properties", props))
    for name in ("set_device", "synchronize", "reset_peak_memory_stats", "empty_cache", "manual_seed_all"):
        monkeypatch.setattr(torch.cuda, name, answer(name, "done"))
    monkeypatch.setattr(torch.cuda.nccl, "version", answer("nccl.version", tuple(a["nccl.version"])))
    monkeypatch.setattr(torch.backends.cudnn, "version", answer("cudnn.version"))
    monkeypatch.setattr(torch.version, "cuda", a["version.cuda"])


def test_the_cuda_path_on_deepspeeds_cuda_accelerator_gives_what_it_gave_on_a_gpu(monkeypatch):
    """This machine has no GPU, so the real one cannot answer: the installed DeepSpeed's own CUDA accelerator class
    (0.19.8 here, 0.13.1 under the pins) drives the layer while torch.cuda answers as a real GPU did at four moments
    of a real run of this layer (the recording), and the layer must give exactly what it gave there."""
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

    rec = json.loads(RECORDING.read_text())
    assert rec["source"] and rec["machine"]["device"].startswith("NVIDIA ")
    acc = CUDA_Accelerator()  # touches no GPU when it is made
    calls: list = []
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for i, moment in enumerate(rec["moments"]):
            _replay(monkeypatch, moment, calls)
            if i == 0:
                layer = device.Device(acc)
                assert layer.module is torch.cuda and not layer.on_host
                assert str(layer.bind(0, 1)) == moment["layer"]["torch_device"] and ["set_device", 0] in calls
                assert layer.allow_tf32(False) is True
                assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
                layer.seed(42)
                assert ["manual_seed_all", 42] in calls
            if moment["action"] == "empty_cache, reset_peaks":
                layer.empty_cache()
                assert layer.reset_peaks() is True and ["reset_peak_memory_stats", 0] in calls
            layer.synchronize()
            assert calls[-1] == ["synchronize", 0]
            got = {"torch_device": str(layer.torch_device), "type": layer.type, "backend": layer.backend,
                   "name": layer.name(), "memory": layer.memory(), "facts": layer.facts(1)}  # fmt: skip
            want = {k: moment["layer"][k] for k in got}
            assert got == want, moment["action"]
            stack = layer.stack_facts()
            stack.pop("cpu_threads")  # this machine's, not the GPU host's
            want_stack = dict(moment["layer"]["stack_facts"])
            want_stack.pop("cpu_threads")
            want_stack["hip_version"] = getattr(torch.version, "hip", None)  # not replayed: both builds have none
            # device_runtime came after the recording: it is the recorded CUDA version in words
            assert stack.pop("device_runtime") == f"CUDA {want_stack['cuda_version']}"
            assert stack == want_stack, moment["action"]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert layer.fused_adamw and layer.loader_pinning() == {"pin_memory": True}
    assert ["mem_get_info", 0] in calls and ["max_memory_reserved", 0] in calls
    assert layer.facts(8)["device_count"] == 8  # one device per rank: the world, as kit_facts always counted


class _Recorded:
    """A stand-in for an accelerator that has no memory counters of its own in its torch module (mem_get_info
    absent, max_memory_reserved None): the layer's fall-backs, which no device on this machine can show."""

    def __init__(self) -> None:
        self.calls: list = []

    def device_name(self, index=None):
        return "xpu" if index is None else f"xpu:{index}"

    def set_device(self, index):
        self.calls.append(("set_device", index))

    def max_memory_allocated(self, index=None):
        return 3 * MIB

    def max_memory_reserved(self, index=None):
        return None

    def max_memory_cached(self, index=None):
        return 5 * MIB

    def total_memory(self, index=None):
        return 64 * 2**30

    def available_memory(self, index=None):
        return 60 * 2**30


def test_fall_backs_where_a_device_module_says_less():
    module = type("XpuModule", (), {})()  # no get_device_name, no mem_get_info
    layer = device.Device(_Recorded(), runtime=device.Runtime("intel", ["intel_extension_for_pytorch"], {"DS_ACCELERATOR": "xpu"}),
                          module=module)  # fmt: skip
    assert str(layer.bind(2, 8)) == "xpu:2" and layer.accelerator.calls == [("set_device", 2)]
    assert layer.memory() == [3 * MIB, 5 * MIB, 4 * 2**30] and layer.name() == "xpu"
    assert layer.facts(8) == {"device_type": "xpu", "device_name": "xpu", "device_count": 8,
                              "device_mem_total_bytes": 64 * 2**30,
                              "runtime": {"vendor": "intel", "imports": ["intel_extension_for_pytorch"],
                                          "environment": {"DS_ACCELERATOR": "xpu"}}}  # fmt: skip
    assert not layer.fused_adamw and layer.allow_tf32(True) is False
    want = {"pin_memory": True} if hasattr(torch, "accelerator") else {"pin_memory": True, "pin_memory_device": "xpu"}
    assert layer.loader_pinning() == want
