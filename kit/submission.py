"""A submission: finished runs' raw facts, a system description, a hash manifest, a tarball, a signature.

Layout (fixed; `kit verify` checks it):

    <org>/
      submission.json                        what is submitted: case, system, division, category, runs, breaks,
                                             and the stated results (olympic means), all recomputed by verify
      manifest.json                          sha256 and size of every other file
      manifest.json.sig                      optional: ssh-keygen -Y sign, namespace kit-submission
      systems/<system>.json                  the system description
      results/<system>/<case>/run_<i>/       one run's raw facts (run.json, environment.json, inputs.json,
                                             config.toml, status.jsonl, summary.json, logs/, <stage>/events.log,
                                             <stage>/logs/, eval responses and judgements, build.json)
    <org>.tar.gz, <org>.tar.gz.sha256

Nothing here trusts a derived file: the summaries shipped are recomputed by `kit verify` from the raw facts.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .events import load_stage, read_status
from .metrics import run_summary
from .rules import Break, Rules, check_run, olympic_mean
from .stacks import describe as describe_stack
from .stacks import stack_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUBMISSION_SCHEMA = "kit.submission/1"
MANIFEST_SCHEMA = "kit.manifest/1"
SYSTEM_SCHEMA = "kit.system/1"
SIGN_NAMESPACE = "kit-submission"
STATUSES = ("available on-premise", "available cloud", "preview", "research, development, or internal")
# What only a person knows (SYSTEM.toml); everything else comes from the runs' own facts.
SYSTEM_REQUIRED = ("submitter", "system_name", "division", "status", "cooling")
SYSTEM_OPTIONAL = ("host_storage_type", "host_networking_topology", "accelerator_interconnect_topology", "hw_notes",
                   "sw_notes", "accelerator_peak_bf16_flops", "accelerator_peak_source", "contact")  # fmt: skip
# Run-directory files a submission carries (relative globs); checkpoints, weights, generated data and plots stay out.
RUN_FILES = (
    "run.json", "environment.json", "inputs.json", "config.toml", "status.jsonl", "summary.json", "logs/*.log",
    "*/events.log", "*/logs/*.log", "*/failure-rank*.json", "eval/responses.json", "eval/responses-rank*.jsonl",
    "eval/mmmu/*", "*/monitor.jsonl",
)
OUTPUT_FILES = ("pretrain/mm_projector.bin", "finetune/model/*")
STAGES = ("pretrain", "finetune", "eval")


class SubmissionError(ValueError):
    """A submission cannot be made (or read) as asked; the message names the run or file and the fix."""


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip()).strip("._")
    return s or "unnamed"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---- one run's facts ----


@dataclass
class RunFacts:
    """What the rules and the checks need from one run directory (raw facts only)."""

    path: Path
    run: dict[str, Any]
    environment: dict[str, Any]
    inputs: dict[str, Any]
    stage_facts: dict[str, dict[str, Any]]
    stage_states: dict[str, str]
    run_state: str | None
    eval_facts: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.run.get("run_id") or self.path.name)

    @property
    def config(self) -> dict[str, Any]:
        c = self.run.get("config")
        return c if isinstance(c, dict) else {}

    @property
    def synthetic(self) -> bool:
        return bool(self.run.get("synthetic")) or bool(self.inputs.get("synthetic"))

    @property
    def category(self) -> str:
        return "throughput" if self.run.get("max_steps") or self.run.get("eval_limit") else "full"

    def stack(self) -> dict[str, Any]:
        """The software stack the run ran on (run.json `stack`: kit/stacks.py's record); "unknown" when the run
        was made before the kit recorded it."""
        from .stacks import run_stack

        return run_stack(self.run, self.environment)

    def software(self) -> dict[str, Any]:
        """The image the run ran in (its id), or for a native run the Python environment (a hash of pip freeze),
        with the stack it was built from or matches."""
        containers = self.run.get("containers")
        if isinstance(containers, dict) and containers.get("image_id"):
            return {"kind": "image", "id": containers["image_id"], "tag": containers.get("image"), "stack": self.stack()}
        case = self.environment.get("case") if isinstance(self.environment.get("case"), dict) else {}
        freeze = "\n".join(case.get("pip_freeze") or [])
        ident = sha256_bytes(f"{case.get('python')}\n{freeze}".encode())
        return {"kind": "native", "id": f"sha256:{ident}", "python": case.get("python"), "stack": self.stack()}

    def accelerator(self) -> dict[str, Any]:
        facts = self.stage_facts.get("finetune") or self.stage_facts.get("pretrain") or {}
        nodes, gpus = self.run.get("nodes"), self.run.get("gpus")
        return {
            "model": facts.get("device_name") or self.config.get("device"),
            "type": facts.get("device_type"),
            "memory_bytes": facts.get("device_mem_total_bytes"),
            "nodes": nodes,
            "per_node": gpus,
        }

    def system_key(self) -> tuple:
        host = (self.environment.get("host") or {}).get("hostname")
        hosts = tuple(self.run.get("hosts") or ()) or (host,)
        a = self.accelerator()
        return (a["model"], a["nodes"], a["per_node"], hosts)

    def rule_facts(self) -> dict[str, Any]:
        return {"config": self.config, "synthetic": self.synthetic, "stages": self.stage_facts,
                "eval": self.eval_facts, "inputs": self.inputs}  # fmt: skip


def config_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    from .rules import flatten

    fa, fb = flatten(a), flatten(b)
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) != fb.get(k):
            return f"{k} = {fa.get(k)!r} vs {fb.get(k)!r}"
    return None


def read_run(path: Path) -> RunFacts:
    run = _json(path / "run.json")
    if not isinstance(run, dict):
        raise SubmissionError(f"{path}: no readable run.json; is it a run directory made by `kit run`?")
    status = read_status(path)
    stage_facts, states = {}, {}
    eval_facts: dict[str, Any] = {}
    for stage in STAGES:
        ev = load_stage(path / stage)
        st = status.stages.get(stage)
        states[stage] = st.state if st else ("absent" if not ev.facts else "unknown")
        if stage == "eval":
            eval_facts = dict(ev.facts)
        elif ev.facts:
            stage_facts[stage] = dict(ev.facts)
    env = _json(path / "environment.json")
    inputs = _json(path / "inputs.json")
    return RunFacts(
        path=path, run=run, environment=env if isinstance(env, dict) else {},
        inputs=inputs if isinstance(inputs, dict) else {}, stage_facts=stage_facts, stage_states=states,
        run_state=status.run_state, eval_facts=eval_facts,
    )  # fmt: skip


def unfinished(rf: RunFacts) -> str | None:
    """Why a run cannot be submitted as finished, or None."""
    planned = [s.get("name") if isinstance(s, dict) else s for s in rf.run.get("stages") or []]
    if rf.run_state in ("failed", "interrupted"):
        return f"the run is {rf.run_state}, not finished (finish it with `kit resume {rf.path}`)"
    if rf.run_state != "finished":
        return (f"the run has not finished (its last state is {rf.run_state or 'none'}: still running, or its kit "
                f"process died without a record; wait for it, or continue it with `kit resume {rf.path}`)")
    missing = [s for s in STAGES if s not in planned]
    if missing:
        return f"it ran --stage {'/'.join(planned)}: stage(s) {', '.join(missing)} never ran; a submission needs all three"
    bad = [f"{s} {rf.stage_states.get(s)}" for s in STAGES if rf.stage_states.get(s) != "finished"]
    if bad:
        return f"stage(s) not finished: {', '.join(bad)}"
    gone = [s for s in STAGES if not (rf.path / s / "events.log").is_file()]
    if gone:
        return f"stage(s) {', '.join(gone)}: status.jsonl says finished, but {gone[0]}/events.log is missing"
    return None


# ---- system description ----


def read_system_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SubmissionError(f"--system {path}: no such file (see docs/submissions.md)") from None
    except tomllib.TOMLDecodeError as e:
        raise SubmissionError(f"--system {path}: not valid TOML: {e}") from None
    missing = [k for k in SYSTEM_REQUIRED if not str(data.get(k, "")).strip()]
    if missing:
        raise SubmissionError(f"--system {path}: missing required key(s) {', '.join(missing)} "
                              f"(what only a person knows; the rest comes from the runs)")  # fmt: skip
    unknown = sorted(set(data) - set(SYSTEM_REQUIRED) - set(SYSTEM_OPTIONAL))
    if unknown:
        raise SubmissionError(f"--system {path}: unknown key {unknown[0]}; allowed: "
                              f"{', '.join(SYSTEM_REQUIRED + SYSTEM_OPTIONAL)}")  # fmt: skip
    if data["division"] not in ("closed", "open"):
        raise SubmissionError(f"--system {path}: division = {data['division']!r}; expected closed or open")
    if str(data["status"]).lower() not in STATUSES:
        raise SubmissionError(f"--system {path}: status = {data['status']!r}; expected one of {', '.join(STATUSES)}")
    peak = data.get("accelerator_peak_bf16_flops")
    if peak is not None and (isinstance(peak, bool) or not isinstance(peak, (int, float)) or peak <= 0):
        raise SubmissionError(f"--system {path}: accelerator_peak_bf16_flops must be a positive number (FLOP/s)")
    return data


def system_description(person: dict[str, Any], rf: RunFacts) -> dict[str, Any]:
    """systems/<system>.json: the person's keys plus the facts of the first run (each fact names its source)."""
    host = rf.environment.get("host") or {}
    case = rf.environment.get("case") or {}
    versions = case.get("versions") or {}
    gpus = host.get("gpus") or {}
    acc = rf.accelerator()
    devices = gpus.get("devices") or []
    links = [d.get("nvlink_links_up", 0) for d in devices]
    if acc["type"] == "cpu":
        interconnect = "none (CPU ranks, gloo)"
    elif links and max(links) > 0:
        interconnect = f"NVLink, {min(links)}-{max(links)} links up per GPU"
    elif devices:
        interconnect = "PCIe (no NVLink links up)"
    else:
        interconnect = "unknown (NVML not available when the run ran)"
    ib = host.get("infiniband") or []
    active = [p for p in ib if "ACTIVE" in str(p.get("state", "")).upper()]
    torch_info = case.get("torch") or {}
    sw = rf.software()
    out = {
        "schema": SYSTEM_SCHEMA,
        **{k: person[k] for k in SYSTEM_REQUIRED},
        "number_of_nodes": acc["nodes"],
        "accelerators_per_node": acc["per_node"],
        "accelerator_model_name": acc["model"],
        "accelerator_memory_capacity_bytes": acc["memory_bytes"],
        "accelerator_interconnect": interconnect,
        "host_networking": ", ".join(f"{p['device']}/{p['port']} {p.get('rate')}" for p in active)
        or ("no active InfiniBand port" if ib else "no InfiniBand devices"),
        "host_processor_model_name": host.get("cpu_model") or host.get("cpu"),
        "host_processor_core_count": host.get("cpus"),
        "host_memory_capacity_bytes": host.get("memory_bytes"),
        "operating_system": host.get("os_name") or host.get("os"),
        "kernel": host.get("kernel"),
        "driver": gpus.get("driver"),
        "cuda_driver": gpus.get("cuda_driver"),
        "cuda_runtime": torch_info.get("cuda_version"),
        "framework": f"PyTorch {versions.get('torch')}, DeepSpeed {versions.get('deepspeed')}",
        "other_software_stack": ", ".join(f"{k} {v}" for k, v in sorted(versions.items())
                                          if v and k not in ("torch", "deepspeed")),  # fmt: skip
        "python": case.get("python"),
        "software": sw,
        "software_stack": describe_stack(rf.stack()),
        "facts_from": f"run {rf.run_id}: environment.json (host, NVML, /proc, /sys) and events.log kit_facts",
    }
    for k in SYSTEM_OPTIONAL:
        if k in person:
            out[k] = person[k]
    return out


def peak_problem(accelerator: dict[str, Any], person: dict[str, Any]) -> str | None:
    """An accelerator env/accelerators.toml does not know needs its peak declared, or no MFU can be shown."""
    from .metrics import lookup_peak

    if accelerator.get("type") == "cpu" or person.get("accelerator_peak_bf16_flops"):
        return None
    peak, why = lookup_peak(accelerator.get("model"), accelerator.get("type"))
    if peak is not None:
        return None
    return (f"the runs' accelerator {accelerator.get('model')!r} has no peak in env/accelerators.toml ({why}): declare "
            "accelerator_peak_bf16_flops (dense bf16 FLOP/s) and accelerator_peak_source (its datasheet) in the system "
            "file; every table then says the peak was declared by the submitter")


# ---- packing ----


def _run_files(run: Path) -> list[Path]:
    seen: dict[str, Path] = {}
    for pattern in RUN_FILES:
        for p in sorted(run.glob(pattern)):
            rel = p.relative_to(run)
            if p.is_file() and not p.is_symlink() and not rel.parts[-1].startswith("."):
                if rel.parts[0] in ("checkpoint", "synthetic", "plots") or "checkpoint" in rel.parts:
                    continue
                seen[str(rel)] = p
    return [seen[k] for k in sorted(seen)]


def _build_record(rf: RunFacts) -> Path | None:
    """The `kit build` record of the run's image (results/builds/<tag>.json whose image id matches)."""
    sw = rf.software()
    if sw["kind"] != "image":
        return None
    for d in {rf.path.parent / "builds", Path(rf.run.get("results") or rf.path.parent) / "builds"}:
        for rec in sorted(d.glob("*.json")) if d.is_dir() else []:
            data = _json(rec)
            if isinstance(data, dict) and data.get("image_id") == sw["id"]:
                return rec
    return None


def outputs_of(run: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of what the run produced (the projector, the 16-bit model), recorded, not carried."""
    out = {}
    for pattern in OUTPUT_FILES:
        for p in sorted(run.glob(pattern)):
            if p.is_file():
                out[str(p.relative_to(run))] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def stated_results(summaries: list[dict[str, Any]], rules: Rules) -> dict[str, Any]:
    """Per stage and figure: the olympic mean over the runs, with min, max and the values."""
    drop, min_runs = int(rules.olympic["drop"]), int(rules.olympic["min_runs"])
    out: dict[str, Any] = {}
    for stage in ("pretrain", "finetune"):
        per = {}
        for fig in rules.olympic["figures"]:
            vals = [(s.get("stages", {}).get(stage) or {}).get(fig) for s in summaries]
            if fig == "mmmu_acc":
                vals = [s.get("mmmu_acc") for s in summaries] if stage == "finetune" else []
            nums = [v for v in vals if isinstance(v, (int, float))]
            if not nums:
                continue
            per[fig] = {"olympic_mean": olympic_mean(nums, drop, min_runs), "min": min(nums), "max": max(nums),
                        "values": nums, "n": len(nums)}  # fmt: skip
        out[stage] = per
    return out


def write_manifest(root: Path) -> dict[str, Any]:
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in ("manifest.json", "manifest.json.sig"):
            files.append({"path": rel, "sha256": sha256_file(p), "bytes": p.stat().st_size})
    manifest = {"schema": MANIFEST_SCHEMA, "algorithm": "sha256", "files": files}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def sign(manifest: Path, key: Path) -> Path:
    """manifest.json.sig through `ssh-keygen -Y sign` (OpenSSH's file signatures) with the kit's namespace."""
    if not key.is_file():
        raise SubmissionError(f"--sign-key {key}: no such file (an ssh private key, e.g. ~/.ssh/id_ed25519)")
    sig = manifest.with_name(manifest.name + ".sig")
    sig.unlink(missing_ok=True)
    try:
        r = subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", SIGN_NAMESPACE, str(manifest)],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    except FileNotFoundError:
        raise SubmissionError("--sign-key needs ssh-keygen (OpenSSH 8.1 or newer): install openssh-client") from None
    if r.returncode != 0 or not sig.is_file():
        raise SubmissionError(f"signing with {key} failed: {r.stderr.strip() or r.stdout.strip()} "
                              "(a key with a passphrase needs ssh-agent)")  # fmt: skip
    return sig


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def write_tarball(root: Path, out: Path) -> tuple[Path, str]:
    """<org>.tar.gz (sorted members, no owners or times: the same tree gives the same bytes) and its sha256 file."""
    tar_path = out / f"{root.name}.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in [root, *sorted(root.rglob("*"))]:
            tar.add(p, arcname=p.relative_to(root.parent).as_posix(), recursive=False, filter=_tar_filter)
    tmp = tar_path.with_name(f".{tar_path.name}.tmp")
    with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())
    os.replace(tmp, tar_path)
    digest = sha256_file(tar_path)
    (out / f"{tar_path.name}.sha256").write_text(f"{digest}  {tar_path.name}\n")
    return tar_path, digest


@dataclass
class Packed:
    root: Path
    tarball: Path
    sha256: str
    signature: Path | None
    breaks: list[Break]
    synthetic: bool
    category: str


def data_of(f: RunFacts) -> dict[str, Any] | None:
    """The data's identity a submission states: the verified data manifest (`kit data verify`) and what a filtered
    record file dropped, per stage, from the first run's inputs.json (every run must agree; verify checks)."""
    data = f.inputs.get("data") if isinstance(f.inputs.get("data"), dict) else None
    if data is None:
        return None
    stages = data.get("stages") or {}
    return {
        "manifest": data.get("manifest"),
        "record_files": {s: {"file": e.get("records_file"), "sha256": e.get("sha256")} for s, e in stages.items()},
        "filtered": {s: e["filter"] for s, e in stages.items() if e.get("filter")},
    }


def pack(
    run_dirs: list[Path], system_toml: Path, out: Path, rules: Rules, *, allow_synthetic: bool = False,
    sign_key: Path | None = None,
) -> Packed:
    """Check the runs, then write the submission tree, its manifest, tarball and (optionally) signature."""
    if not run_dirs:
        raise SubmissionError("no runs given: kit submit RUN [RUN ...] --system SYSTEM.toml --out DIR")
    person = read_system_toml(system_toml)
    facts = [read_run(Path(r)) for r in run_dirs]
    ids = [f.run_id for f in facts]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SubmissionError(f"run {dup[0]} is given more than once; each run counts once")
    for f in facts:
        if f.run.get("case") != rules.case:
            raise SubmissionError(f"run {f.run_id}: case {f.run.get('case')!r}, but these rules are for {rules.case!r}")
        if why := unfinished(f):
            raise SubmissionError(f"run {f.run_id} ({f.path}) cannot be submitted: {why}")
        if f.synthetic and not allow_synthetic:
            raise SubmissionError(
                f"run {f.run_id} is synthetic (generated data, random initial weights): it measures the kit, not "
                "the case; pass --allow-synthetic to pack it anyway (the submission is then marked synthetic "
                "wherever it is shown)"
            )
        replayed = ((f.environment.get("host") or {}).get("gpus") or {}).get("replayed_from")
        if replayed:
            raise SubmissionError(f"run {f.run_id}: its GPU facts were replayed from the recording {replayed} "
                                  "(KIT_NVML_RECORDING), not read from the host it ran on; run it again without it")  # fmt: skip
        if not f.inputs:
            raise SubmissionError(f"run {f.run_id}: no inputs.json (data and weights identity); it was made by a kit "
                                  "older than the submission rules: run it again")  # fmt: skip
    first = facts[0]
    for f in facts[1:]:
        if f.system_key() != first.system_key():
            raise SubmissionError(f"runs {first.run_id} and {f.run_id} come from different systems "
                                  f"({first.system_key()} vs {f.system_key()}): one submission per system")  # fmt: skip
        if f.software()["id"] != first.software()["id"]:
            raise SubmissionError(f"runs {first.run_id} and {f.run_id} ran different software "
                                  f"({first.software()['id'][:23]} vs {f.software()['id'][:23]}): one image per "
                                  "submission")  # fmt: skip
        if stack_key(f.stack()) != stack_key(first.stack()):
            raise SubmissionError(f"runs {first.run_id} and {f.run_id} ran different software stacks "
                                  f"({describe_stack(first.stack())} vs {describe_stack(f.stack())}): one stack per "
                                  "submission")  # fmt: skip
        if differ := config_difference(first.config, f.config):
            raise SubmissionError(f"runs {first.run_id} and {f.run_id} ran different configs ({differ}): the runs of "
                                  "a submission repeat one config, so their spread means something")  # fmt: skip
        if f.synthetic != first.synthetic:
            raise SubmissionError(f"runs {first.run_id} and {f.run_id}: one is synthetic and one is not")
        if f.category != first.category:
            raise SubmissionError(f"runs {first.run_id} ({first.category}) and {f.run_id} ({f.category}) are of "
                                  "different categories: full epochs and --max-steps runs are submitted apart")  # fmt: skip
    if why := peak_problem(first.accelerator(), person):
        raise SubmissionError(f"--system {system_toml}: {why}")
    category = first.category
    division = person["division"]
    breaks: list[Break] = []
    for i, f in enumerate(facts, 1):
        breaks += check_run(rules, f.rule_facts(), category, where=f"run_{i}")
    if division == "closed" and breaks:
        listed = "; ".join(str(b) for b in breaks[:5])
        raise SubmissionError(f"the closed division allows no change to a fixed rule, and these runs break "
                              f"{len(breaks)}: {listed}. Set division = \"open\" in {system_toml} to submit them "
                              "with every break listed")  # fmt: skip

    org, system = slug(person["submitter"]), slug(person["system_name"])
    root = out / org
    if root.exists():
        raise SubmissionError(f"{root} exists: a submission is never written over; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    tmp_root = out / f".{org}.partial"
    if tmp_root.exists():
        shutil.rmtree(tmp_root)
    results = tmp_root / "results" / system / rules.case
    summaries = []
    runs_meta = []
    for i, f in enumerate(facts, 1):
        dest = results / f"run_{i}"
        for src in _run_files(f.path):
            rel = src.relative_to(f.path)
            if rel.as_posix() == "summary.json":
                continue  # written fresh below, from the raw facts
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
        if rec := _build_record(f):
            shutil.copyfile(rec, dest / "build.json")
        summary = run_summary(dest, peak_flops=person.get("accelerator_peak_bf16_flops"))
        summary.pop("generated_at", None)
        (dest / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        summaries.append(summary)
        runs_meta.append({"dir": f"run_{i}", "run_id": f.run_id, "source": str(f.path.resolve()),
                          "config": f.config.get("name"), "max_steps": f.run.get("max_steps", 0),
                          "outputs": outputs_of(f.path)})  # fmt: skip
    (tmp_root / "systems").mkdir(parents=True)
    (tmp_root / "systems" / f"{system}.json").write_text(json.dumps(system_description(person, first), indent=2) + "\n")
    sub = {
        "schema": SUBMISSION_SCHEMA,
        "case": rules.case,
        "submitter": person["submitter"],
        "org": org,
        "system": system,
        "system_name": person["system_name"],
        "division": division,
        "category": category,
        "synthetic": first.synthetic,
        "software": first.software(),
        "stack": first.stack(),
        "kit_version": __version__,
        "rules_sha256": sha256_file(rules.path),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs_meta,
        "data": data_of(first),
        "breaks": [b.to_dict() for b in breaks],
        "results": stated_results(summaries, rules),
    }
    (tmp_root / "submission.json").write_text(json.dumps(sub, indent=2) + "\n")
    write_manifest(tmp_root)
    signature = sign(tmp_root / "manifest.json", sign_key) if sign_key else None
    os.replace(tmp_root, root)
    if signature is not None:
        signature = root / signature.name
    tarball, digest = write_tarball(root, out)
    return Packed(root, tarball, digest, signature, breaks, first.synthetic, category)
