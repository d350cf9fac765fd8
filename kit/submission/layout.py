"""A submission's fixed shape, and one run's raw facts as the checks read them.

Layout (fixed; `kit verify` checks it):

    <org>/
      submission.json                        what is submitted: case, system, division, category, runs, breaks,
                                             and the stated results (olympic means), all recomputed by verify
      manifest.json                          sha256 and size of every other file
      manifest.json.sig                      optional: ssh-keygen -Y sign, namespace kit-submission
      systems/<system>.json                  the system description
      results/<system>/<case>/run_<i>/       one run's raw facts (run.json, environment.json, inputs.json,
                                             config.toml, status.jsonl, summary.json, logs/, <stage>/events.log,
                                             <stage>/logs/, <stage>/monitor.jsonl, eval responses and judgements,
                                             build.json)
    <org>.tar.gz, <org>.tar.gz.sha256
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit import case as cases
from kit.case.rules import flatten
from kit.errors import KitError
from kit.image.stacks import run_stack
from kit.run.dir import RunDir
from kit.run.events import StageEvents, load_stage, read_status

SUBMISSION_SCHEMA = "kit.submission/1"
MANIFEST_SCHEMA = "kit.manifest/1"
SYSTEM_SCHEMA = "kit.system/1"
SIGN_NAMESPACE = "kit-submission"
TOP_LEVEL = ("submission.json", "manifest.json", "manifest.json.sig", "systems", "results")
# Run-directory files a submission carries (relative globs); checkpoints, weights, generated data and plots stay out.
RUN_FILES = (
    "run.json", "environment.json", "inputs.json", "config.toml", "status.jsonl", "summary.json", "logs/*.log",
    "*/events.log", "*/logs/*.log", "*/failure-rank*.json", "*/monitor.jsonl",
)


def run_files(case: Any) -> tuple[str, ...]:
    """RUN_FILES and, for each eval stage of the case, its raw responses (every .json and .jsonl it wrote) and the
    scores the host wrote (the scorer's folder)."""
    extra: list[str] = []
    for stage in cases.evaluating(case):
        extra += [f"{stage}/*.json", f"{stage}/*.jsonl"]
    if case.scorer is not None:
        extra.append(f"{case.scorer.scores}/*")
    return RUN_FILES + tuple(extra)


def output_files(case: Any) -> tuple[str, ...]:
    """What the case's stages leave (the trained weights): recorded by sha256 in a submission, not carried."""
    return tuple(o for s in case.stages for o in s.outputs)


class SubmissionError(KitError, ValueError):
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


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class RunFacts:
    """What the rules and the checks need from one run directory (raw facts only)."""

    path: Path
    run: dict[str, Any]
    environment: dict[str, Any]
    inputs: dict[str, Any]
    events: dict[str, StageEvents]
    stage_states: dict[str, str]
    run_state: str | None
    status: Any = None  # kit.run.events.RunStatus
    problems: list[str] = field(default_factory=list)

    @property
    def case(self) -> Any:
        return cases.get(str(self.run.get("case")))

    @property
    def stages(self) -> tuple[str, ...]:
        """The case's stages, in order."""
        return tuple(s.name for s in self.case.stages)

    @property
    def training(self) -> tuple[str, ...]:
        return cases.training(self.case)

    @property
    def stage_facts(self) -> dict[str, dict[str, Any]]:
        return {s: dict(self.events[s].facts) for s in self.training if s in self.events and self.events[s].facts}

    @property
    def eval_stage(self) -> str | None:
        """The case's eval stage (a case has at most one), or None."""
        return next(iter(cases.evaluating(self.case)), None)

    @property
    def eval_facts(self) -> dict[str, Any]:
        """The eval stage's kit_facts (a case has at most one eval stage), or {}."""
        for s in cases.evaluating(self.case):
            ev = self.events.get(s)
            if ev and ev.facts:
                return dict(ev.facts)
        return {}

    @property
    def run_id(self) -> str:
        return str(self.run.get("run_id") or self.path.name)

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config the run read (config.toml; older runs kept it in run.json too)."""
        return RunDir(self.path).config()

    @property
    def synthetic(self) -> bool:
        return bool(self.run.get("synthetic")) or bool(self.inputs.get("synthetic"))

    @property
    def category(self) -> str:
        return "throughput" if self.run.get("max_steps") or self.run.get("eval_limit") else "full"

    def stack(self) -> dict[str, Any]:
        """The software stack the run ran on (run.json `stack`: kit/image/stacks.py's record); "unknown" when the run
        was made before the kit recorded it."""
        return run_stack(self.run, self.environment)

    def software(self) -> dict[str, Any]:
        """The image the run ran in (its id), or for a native run the Python environment (a hash of pip freeze),
        with the stack it was built from or matches."""
        containers = self.run.get("containers")
        if isinstance(containers, dict) and containers.get("image_id"):
            return {"kind": "image", "id": containers["image_id"], "tag": containers.get("image"), "stack": self.stack()}
        case = self.environment.get("case") if isinstance(self.environment.get("case"), dict) else {}
        freeze = "\n".join(str(x) for x in case.get("pip_freeze") or [])
        ident = sha256_bytes(f"{case.get('python')}\n{freeze}".encode())
        return {"kind": "native", "id": f"sha256:{ident}", "python": case.get("python"), "stack": self.stack()}

    def accelerator(self) -> dict[str, Any]:
        """The device the run trained on, from its last training stage's kit_facts."""
        facts = next((self.stage_facts[s] for s in reversed(self.training) if self.stage_facts.get(s)), {})
        nodes, gpus = self.run.get("nodes"), self.run.get("gpus")
        return {
            "model": facts.get("device_name") or self.config.get("device"),
            "type": facts.get("device_type"),
            "memory_bytes": facts.get("device_mem_total_bytes"),
            "nodes": nodes,
            "per_node": gpus,
        }

    def hosts(self) -> tuple:
        """The hosts the run ran on: its container nodes' hosts, or the host that probed its environment."""
        host = (self.environment.get("host") or {}).get("hostname") if isinstance(self.environment.get("host"), dict) else None
        containers = self.run.get("containers") if isinstance(self.run.get("containers"), dict) else {}
        nodes = tuple(n.get("host") for n in containers.get("nodes") or [] if isinstance(n, dict))
        if nodes and set(nodes) != {"local"}:
            return nodes
        listed = self.run.get("hosts")
        if isinstance(listed, list) and listed and set(listed) != {"local"}:  # older runs: the parsed --hosts
            return tuple(listed)
        return (host,)

    def system_key(self) -> tuple:
        a = self.accelerator()
        return (a["model"], a["nodes"], a["per_node"], self.hosts())

    def rule_facts(self) -> dict[str, Any]:
        return {"config": self.config, "synthetic": self.synthetic, "stages": self.stage_facts,
                "eval": self.eval_facts, "inputs": self.inputs}  # fmt: skip


def read_run(path: Path) -> RunFacts:
    run = read_json(path / "run.json")
    if not isinstance(run, dict):
        raise SubmissionError(f"{path}: no readable run.json; is it a run directory made by `kit run`?")
    try:
        case = cases.get(str(run.get("case")))
    except cases.UnknownCase as e:
        raise SubmissionError(f"{path}: {e}") from None
    status = read_status(path)
    events, states = {}, {}
    for stage in (s.name for s in case.stages):
        ev = load_stage(path / stage)
        st = status.stages.get(stage)
        states[stage] = st.state if st else ("absent" if not ev.facts else "unknown")
        events[stage] = ev
    env = read_json(path / "environment.json")
    inputs = read_json(path / "inputs.json")
    return RunFacts(
        path=path, run=run, environment=env if isinstance(env, dict) else {},
        inputs=inputs if isinstance(inputs, dict) else {}, events=events, stage_states=states,
        run_state=status.run_state, status=status,
    )  # fmt: skip


def unfinished(rf: RunFacts) -> str | None:
    """Why a run cannot be submitted as finished, or None."""
    planned = [s.get("name") if isinstance(s, dict) else s for s in rf.run.get("stages") or []]
    if rf.run_state in ("failed", "interrupted"):
        return f"the run is {rf.run_state}, not finished (finish it with `kit resume {rf.path}`)"
    if rf.run_state != "finished":
        return (f"the run has not finished (its last state is {rf.run_state or 'none'}: still running, or its kit "
                f"process died without a record; wait for it, or continue it with `kit resume {rf.path}`)")
    missing = [s for s in rf.stages if s not in planned]
    if missing:
        return (f"it ran --stage {'/'.join(map(str, planned))}: stage(s) {', '.join(missing)} never ran; a submission "
                "needs every stage of the case")  # fmt: skip
    bad = [f"{s} {rf.stage_states.get(s)}" for s in rf.stages if rf.stage_states.get(s) != "finished"]
    if bad:
        return f"stage(s) not finished: {', '.join(bad)}"
    gone = [s for s in rf.stages if not (rf.path / s / "events.log").is_file()]
    if gone:
        return f"stage(s) {', '.join(gone)}: status.jsonl says finished, but {gone[0]}/events.log is missing"
    return None


def config_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:

    fa, fb = flatten(a), flatten(b)
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) != fb.get(k):
            return f"{k} = {fa.get(k)!r} vs {fb.get(k)!r}"
    return None


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


def data_manifest_digest(inputs: dict[str, Any]) -> str | None:
    """The digest of the verified data (`kit data verify`'s manifest) a run recorded, or None."""
    data = inputs.get("data") if isinstance(inputs.get("data"), dict) else {}
    m = data.get("manifest") if isinstance(data.get("manifest"), dict) else {}
    return m.get("digest")
