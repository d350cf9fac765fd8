"""`kit verify`: check a submission from its raw facts alone, and change nothing in it.

Checks, in order: the tarball's sha256 (when its .sha256 lies beside it), the manifest (every file present with
its hash and size, no file unlisted), the signature, submission.json and the system description, the layout, each
run's completeness (every stage finished, every step of the plan logged, every rank's log, all MMMU questions
answered), the consistency of each run's facts (the config it ran against the config it names, the learning rate
of every step against the schedule, step times against the log's clock), the rules of the division, the runs
against each other (one system, one software, the same inputs, no run twice), the number of runs the category
needs, and every figure recomputed with the kit's own formulas against what the submission states.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import mmmu
from . import rules as rules_mod
from .events import load_stage
from .metrics import run_summary
from .stacks import describe as describe_stack
from .stacks import stack_key
from .submission import (
    MANIFEST_SCHEMA,
    SIGN_NAMESPACE,
    STAGES,
    STATUSES,
    SUBMISSION_SCHEMA,
    SYSTEM_REQUIRED,
    SubmissionError,
    config_difference,
    data_of,
    read_run,
    sha256_file,
    stated_results,
    unfinished,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REL_TOL = 1e-9
# Seconds a step may take beyond the log's own clock between it and the step before (rounding, logging).
CLOCK_SLACK_S = 0.05
IGNORED_SUMMARY_KEYS = {"generated_at", "plots", "notes", "kit_version"}


@dataclass
class Finding:
    check: str
    status: str  # pass | fail | warn
    detail: str
    where: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "where": self.where}


@dataclass
class Report:
    path: str
    root: str = ""
    findings: list[Finding] = field(default_factory=list)
    submission: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(f.status == "fail" for f in self.findings)

    def add(self, check: str, status: str, detail: str, where: str = "") -> None:
        self.findings.append(Finding(check, status, detail, where))

    def fail(self, check: str, detail: str, where: str = "") -> None:
        self.add(check, "fail", detail, where)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "findings": [f.to_dict() for f in self.findings],
                "failures": sum(f.status == "fail" for f in self.findings),
                "warnings": sum(f.status == "warn" for f in self.findings)}  # fmt: skip


# ---- opening ----


def _safe_extract(tar_path: Path, dest: Path) -> None:
    import shutil

    with tarfile.open(tar_path, "r:gz") as tar:
        members = tar.getmembers()
        total = sum(m.size for m in members)
        free = shutil.disk_usage(dest).free
        if total > free:
            raise SubmissionError(f"{tar_path}: unpacks to {total / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB "
                                  f"free under {dest}; unpack it elsewhere and verify the folder")  # fmt: skip
        for m in members:
            p = Path(m.name)
            if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                raise SubmissionError(f"{tar_path}: member {m.name!r} is not a plain file or folder inside the "
                                      "archive; a submission holds nothing else")  # fmt: skip
        tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)  # noqa: S202


def data_manifest_digest(inputs: dict[str, Any]) -> str | None:
    """The digest of the verified data (`kit data verify`'s manifest) a run recorded, or None."""
    data = inputs.get("data") if isinstance(inputs.get("data"), dict) else {}
    m = data.get("manifest") if isinstance(data.get("manifest"), dict) else {}
    return m.get("digest")


def find_root(path: Path) -> Path:
    """The submission's root: the folder holding submission.json (given, or its only child)."""
    if (path / "submission.json").is_file() or (path / "manifest.json").is_file():
        return path
    kids = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")] if path.is_dir() else []
    found = [k for k in kids if (k / "submission.json").is_file() or (k / "manifest.json").is_file()]
    if len(found) == 1:
        return found[0]
    raise SubmissionError(f"{path}: no submission here (no submission.json or manifest.json in it or in one "
                          "folder below it)")  # fmt: skip


# ---- the checks ----


def _check_tarball(rep: Report, tar_path: Path) -> None:
    side = tar_path.with_name(tar_path.name + ".sha256")
    if not side.is_file():
        rep.add("tarball", "warn", f"no {side.name} beside it: the archive's own hash is not checked")
        return
    want = side.read_text().split()[0] if side.read_text().split() else ""
    got = sha256_file(tar_path)
    if want != got:
        rep.fail("tarball", f"sha256 {got} does not match {side.name} ({want}): the archive changed after packing",
                 tar_path.name)  # fmt: skip
    else:
        rep.add("tarball", "pass", f"sha256 matches {side.name}")


def _check_manifest(rep: Report, root: Path) -> None:
    mpath = root / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        rep.fail("manifest", "manifest.json is missing", "manifest.json")
        return
    except ValueError as e:
        rep.fail("manifest", f"manifest.json is not valid JSON: {e}", "manifest.json")
        return
    if manifest.get("schema") != MANIFEST_SCHEMA or not isinstance(manifest.get("files"), list):
        rep.fail("manifest", f"manifest.json is not a {MANIFEST_SCHEMA} manifest", "manifest.json")
        return
    listed = {}
    bad = 0
    for entry in manifest["files"]:
        rel = entry.get("path", "") if isinstance(entry, dict) else ""
        p = root / rel
        if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            rep.fail("manifest", f"entry {entry!r} is not a path inside the submission", "manifest.json")
            bad += 1
            continue
        listed[rel] = entry
        if not p.is_file():
            rep.fail("manifest", "listed in manifest.json but missing", rel)
            bad += 1
        elif p.stat().st_size != entry.get("bytes"):
            rep.fail("manifest", f"{p.stat().st_size} bytes, the manifest says {entry.get('bytes')}", rel)
            bad += 1
        elif sha256_file(p) != entry.get("sha256"):
            rep.fail("manifest", "sha256 differs from the manifest's: the file changed after packing", rel)
            bad += 1
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in listed and rel not in ("manifest.json", "manifest.json.sig"):
            rep.fail("manifest", "present but not listed in manifest.json", rel)
            bad += 1
    if not bad:
        rep.add("manifest", "pass", f"{len(listed)} files, every sha256 and size as listed")


def _check_signature(rep: Report, root: Path, allowed_signers: Path | None) -> None:
    sig, manifest = root / "manifest.json.sig", root / "manifest.json"
    if not sig.is_file():
        if allowed_signers is not None:
            rep.fail("signature", "--allowed-signers was given but the submission is not signed (no manifest.json.sig)")
        else:
            rep.add("signature", "warn", "not signed: anyone could have packed it (kit submit --sign-key KEY)")
        return
    if allowed_signers is None:
        rep.add("signature", "warn", "signed, but not checked: pass --allowed-signers FILE")
        return
    if not allowed_signers.is_file():
        rep.fail("signature", f"--allowed-signers {allowed_signers}: no such file")
        return
    try:
        found = subprocess.run(["ssh-keygen", "-Y", "find-principals", "-s", str(sig), "-f", str(allowed_signers)],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    except FileNotFoundError:
        rep.fail("signature", "ssh-keygen is not installed: cannot check the signature (install openssh-client)")
        return
    principals = [p for p in found.stdout.split() if p]
    if found.returncode != 0 or not principals:
        rep.fail("signature", f"made by no key in {allowed_signers}: {found.stderr.strip() or 'no principal matches'}",
                 "manifest.json.sig")  # fmt: skip
        return
    with open(manifest, "rb") as f:
        ok = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed_signers), "-I", principals[0], "-n",
                             SIGN_NAMESPACE, "-s", str(sig)], stdin=f, capture_output=True, text=True, timeout=60)  # fmt: skip
    if ok.returncode != 0:
        rep.fail("signature", f"does not verify for {principals[0]}: {ok.stderr.strip() or ok.stdout.strip()}",
                 "manifest.json.sig")  # fmt: skip
    else:
        rep.add("signature", "pass", f"good signature by {principals[0]} over manifest.json")


def _num_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)
    return a == b


def diff(stated: Any, recomputed: Any, path: str = "") -> list[str]:
    """Where a stated summary disagrees with the recomputed one (dotted keys; volatile keys ignored)."""
    if isinstance(stated, dict) and isinstance(recomputed, dict):
        out = []
        for k in sorted(set(stated) | set(recomputed)):
            if k in IGNORED_SUMMARY_KEYS:
                continue
            key = f"{path}.{k}" if path else k
            if k not in recomputed:
                out.append(f"{key}: stated {stated[k]!r}, not a figure the kit computes")
            elif k not in stated:
                out.append(f"{key}: missing (recomputed {recomputed[k]!r})")
            else:
                out += diff(stated[k], recomputed[k], key)
        return out
    if isinstance(stated, list) and isinstance(recomputed, list):
        if len(stated) != len(recomputed):
            return [f"{path}: {len(stated)} values stated, {len(recomputed)} recomputed"]
        return [d for i, (a, b) in enumerate(zip(stated, recomputed, strict=True)) for d in diff(a, b, f"{path}[{i}]")]
    return [] if _num_equal(stated, recomputed) else [f"{path}: stated {stated!r}, recomputed {recomputed!r}"]


def lr_expected(base: float, step: int, warmup: int, total: int) -> float:
    """The rate step `step` (1-based) applies: linear warm-up, then cosine to zero (the case's scheduler)."""
    s = step - 1
    if s < warmup:
        return base * s / max(1, warmup)
    progress = (s - warmup) / max(1, total - warmup)
    return base * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _check_run_facts(rep: Report, run: Path, where: str) -> None:
    """Completeness and internal consistency of one packed run."""
    rf = read_run(run)
    if why := unfinished(rf):
        rep.fail("completeness", why, where)
    cfg_toml = run / "config.toml"
    try:
        toml_cfg = tomllib.loads(cfg_toml.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        rep.fail("consistency", f"config.toml unreadable: {e}", f"{where}/config.toml")
        toml_cfg = None
    if toml_cfg is not None:
        flat_toml = rules_mod.flatten(toml_cfg)
        flat_run = rules_mod.flatten(rf.config)
        differ = [k for k in sorted(set(flat_toml) | set(flat_run)) if not _num_equal(flat_toml.get(k), flat_run.get(k))]
        if differ:
            k = differ[0]
            rep.fail("consistency", f"config.toml and run.json disagree on {k} ({flat_toml.get(k)!r} vs "
                                    f"{flat_run.get(k)!r}): the run's config was edited after it ran",
                     f"{where}/config.toml")  # fmt: skip
    world_expected = (rf.run.get("nodes") or 0) * (rf.run.get("gpus") or 0)
    for stage in ("pretrain", "finetune"):
        ev = load_stage(run / stage)
        f = ev.facts
        sw = f"{where}/{stage}/events.log"
        if not f:
            rep.fail("completeness", "no kit_facts: the stage's events.log is empty or missing", sw)
            continue
        scfg = rf.config.get(stage) or {}
        for key in ("micro_batch", "global_batch", "zero_stage"):
            if f.get(key) != scfg.get(key):
                rep.fail("consistency", f"kit_facts {key} = {f.get(key)!r} but the run's config says {scfg.get(key)!r}", sw)
        if f.get("world_size") != world_expected:
            rep.fail("consistency", f"world_size {f.get('world_size')} but run.json asks {world_expected} ranks", sw)
        steps = ev.steps
        planned = f.get("steps_planned")
        numbers = [int(s["step"]) for s in steps]
        if numbers != list(range(1, (planned or 0) + 1)):
            rep.fail("completeness", f"steps logged {numbers[:3]}..{numbers[-3:] if numbers else []} ({len(numbers)}), "
                                     f"the plan has 1..{planned}", sw)  # fmt: skip
        if ev.run_stop_status != "success":
            rep.fail("completeness", f"run_stop status {ev.run_stop_status!r}, not success", sw)
        for k in range(int(f.get("world_size") or 0)):
            if not (run / stage / "logs" / f"rank{k}.log").is_file():
                rep.fail("completeness", f"rank {k}'s log is missing", f"{where}/{stage}/logs/rank{k}.log")
        base = scfg.get("lr")
        warm, total = f.get("warmup_steps"), f.get("steps_total")
        if isinstance(base, (int, float)) and isinstance(warm, int) and isinstance(total, int):
            for s in steps:
                want = lr_expected(float(base), int(s["step"]), warm, total)
                if not math.isclose(float(s.get("lr") or 0.0), want, rel_tol=1e-6, abs_tol=1e-15):
                    rep.fail("consistency", f"step {s['step']} logged lr {s.get('lr')!r}, the config's lr {base} with "
                                            f"{warm} warm-up steps of {total} gives {want!r}", sw)  # fmt: skip
                    break
        prev = None
        for s in steps:
            t = s.get("time_ms")
            if prev is not None and isinstance(t, (int, float)) and isinstance(prev, (int, float)):
                gap = (t - prev) / 1000
                if float(s.get("step_time_s") or 0) > gap + CLOCK_SLACK_S:
                    rep.fail("consistency", f"step {s['step']}: step_time_s {s.get('step_time_s')} is longer than the "
                                            f"{gap:.3f} s the log's clock shows since the step before", sw)  # fmt: skip
                    break
                if float(s.get("step_time_s") or 0) <= 0:
                    rep.fail("consistency", f"step {s['step']}: step_time_s {s.get('step_time_s')} is not positive", sw)
                    break
            prev = t
    ev = load_stage(run / "eval")
    responses = run / "eval" / "responses.json"
    if not ev.facts:
        rep.fail("completeness", "the eval stage logged nothing", f"{where}/eval/events.log")
    try:
        answered = json.loads(responses.read_text())
    except (OSError, ValueError) as e:
        rep.fail("completeness", f"eval/responses.json unreadable: {e}", f"{where}/eval/responses.json")
        answered = None
    if isinstance(answered, list) and ev.facts:
        n = ev.facts.get("questions")
        ids = [r.get("id") for r in answered if isinstance(r, dict)]
        if len(ids) != n or len(set(ids)) != len(ids):
            rep.fail("completeness", f"{len(set(ids))} distinct questions answered, the eval stage had {n}",
                     f"{where}/eval/responses.json")  # fmt: skip


def verify(path: str | Path, allowed_signers: Path | None = None, rules_path: Path | None = None) -> Report:
    """Check a submission (a folder or its .tar.gz) without changing anything in it."""
    path = Path(path)
    rep = Report(path=str(path))
    if not path.exists():
        raise SubmissionError(f"{path}: no such file or folder")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz")):
            raise SubmissionError(f"{path}: expected a submission folder or its .tar.gz")
        _check_tarball(rep, path)
        with tempfile.TemporaryDirectory(prefix="kit-verify-") as tmp:
            try:
                _safe_extract(path, Path(tmp))
            except (tarfile.TarError, OSError, EOFError) as e:
                rep.fail("tarball", f"cannot be unpacked: {e}", path.name)
                return rep
            _verify_tree(rep, find_root(Path(tmp)), allowed_signers, rules_path)
        return rep
    _verify_tree(rep, find_root(path), allowed_signers, rules_path)
    return rep


def _verify_tree(rep: Report, root: Path, allowed_signers: Path | None, rules_path: Path | None) -> None:
    rep.root = str(root)
    _check_manifest(rep, root)
    _check_signature(rep, root, allowed_signers)
    try:
        sub = json.loads((root / "submission.json").read_text())
    except (OSError, ValueError) as e:
        rep.fail("layout", f"submission.json unreadable: {e}", "submission.json")
        return
    rep.submission = sub
    if sub.get("schema") != SUBMISSION_SCHEMA:
        rep.fail("layout", f"schema {sub.get('schema')!r}, expected {SUBMISSION_SCHEMA!r}", "submission.json")
        return
    try:
        rules = rules_mod.load(sub.get("case", ""), rules_path)
    except (rules_mod.RulesError, KeyError) as e:
        rep.fail("rules", str(e), "submission.json")
        return
    if sub.get("rules_sha256") != sha256_file(rules.path):
        rep.add("rules", "warn", f"packed under other rules (sha256 {str(sub.get('rules_sha256'))[:12]}); checked "
                                 f"against {rules.path}")  # fmt: skip
    system, case = sub.get("system", ""), sub.get("case")
    division, category = sub.get("division"), sub.get("category")
    if division not in ("closed", "open"):
        rep.fail("layout", f"division {division!r}: expected closed or open", "submission.json")
    if category not in rules.categories:
        rep.fail("layout", f"category {category!r}: expected one of {', '.join(rules.categories)}", "submission.json")
        return

    # The system description.
    sys_path = root / "systems" / f"{system}.json"
    try:
        desc = json.loads(sys_path.read_text())
    except (OSError, ValueError) as e:
        rep.fail("system", f"systems/{system}.json unreadable: {e}", f"systems/{system}.json")
        desc = {}
    missing = [k for k in SYSTEM_REQUIRED if not str(desc.get(k, "")).strip()]
    if desc and missing:
        rep.fail("system", f"required key(s) missing: {', '.join(missing)}", f"systems/{system}.json")
    if desc and str(desc.get("status", "")).lower() not in STATUSES:
        rep.fail("system", f"status {desc.get('status')!r}: expected one of {', '.join(STATUSES)}", f"systems/{system}.json")
    if desc and desc.get("division") != division:
        rep.fail("system", f"division {desc.get('division')!r} but submission.json says {division!r}", f"systems/{system}.json")

    # The layout: exactly the runs submission.json lists.
    results = root / "results" / system / str(case)
    listed = [r.get("dir") for r in sub.get("runs") or [] if isinstance(r, dict)]
    present = sorted(p.name for p in results.iterdir() if p.is_dir()) if results.is_dir() else []
    for d in listed:
        if d not in present:
            rep.fail("layout", "listed in submission.json but missing", f"results/{system}/{case}/{d}")
    for d in present:
        if d not in listed:
            rep.fail("layout", "a run folder submission.json does not list", f"results/{system}/{case}/{d}")
    runs = [results / d for d in listed if d in present]
    others = sorted(p.name for p in root.iterdir() if p.name not in ("submission.json", "manifest.json",
                                                                      "manifest.json.sig", "systems", "results"))  # fmt: skip
    for name in others:
        rep.fail("layout", "not part of a submission's layout", name)
    if not runs:
        rep.fail("layout", "no runs", f"results/{system}/{case}")
        return

    # Each run: complete, consistent, within the rules.
    facts = []
    for run in runs:
        where = run.relative_to(root).as_posix()
        try:
            rf = read_run(run)
        except SubmissionError as e:
            rep.fail("completeness", str(e), where)
            continue
        facts.append((where, rf))
        _check_run_facts(rep, run, where)
        if rf.category != category:
            rep.fail("category", f"a {rf.category} run in a {category} submission", where)
        if rf.synthetic != bool(sub.get("synthetic")):
            rep.fail("synthetic", f"the run is {'synthetic' if rf.synthetic else 'real'} but submission.json says "
                                  f"synthetic = {sub.get('synthetic')}", where)  # fmt: skip
    breaks = [b for where, rf in facts for b in rules_mod.check_run(rules, rf.rule_facts(), category, where.split("/")[-1])]
    stated_breaks = sub.get("breaks") or []
    if division == "closed":
        for b in breaks:
            rep.fail("rules", f"closed division: {b}", f"results/{system}/{case}/{b.where}")
        if not breaks:
            rep.add("rules", "pass", "closed: every fixed rule holds in every run")
    else:
        want = sorted(json.dumps(b.to_dict(), sort_keys=True) for b in breaks)
        got = sorted(json.dumps(b, sort_keys=True) for b in stated_breaks)
        if want != got:
            unlisted = [b for b in breaks if json.dumps(b.to_dict(), sort_keys=True) not in got]
            detail = f"unlisted: {unlisted[0]}" if unlisted else "submission.json lists breaks the runs do not have"
            rep.fail("rules", f"open division: the listed breaks differ from the runs' ({detail})", "submission.json")
        else:
            rep.add("rules", "pass", f"open: {len(breaks)} break(s) of the fixed rules, each listed")

    # The runs against each other.
    if facts:
        first_where, first = facts[0]
        if "data" in sub and sub.get("data") != data_of(first):
            rep.fail("data identity", "submission.json's data (manifest, record files, filtered records) is not what "
                     f"{first_where}/inputs.json recorded", "submission.json")  # fmt: skip
        if "stack" in sub and stack_key(sub.get("stack")) != stack_key(first.stack()):
            rep.fail("stack identity", f"submission.json names the stack {describe_stack(sub.get('stack'))}, but "
                     f"{first_where}/run.json ran {describe_stack(first.stack())}", "submission.json")  # fmt: skip
        for where, rf in facts[1:]:
            if rf.system_key() != first.system_key():
                rep.fail("same system", f"{rf.system_key()} vs {first_where}'s {first.system_key()}", where)
            if differ := config_difference(first.config, rf.config):
                rep.fail("same config", f"{differ} (vs {first_where})", f"{where}/run.json")
            if rf.software()["id"] != first.software()["id"]:
                rep.fail("same software", f"{rf.software()['id'][:30]} vs {first_where}'s {first.software()['id'][:30]}",
                         where)  # fmt: skip
            if stack_key(rf.stack()) != stack_key(first.stack()):
                rep.fail("same software stack", f"{describe_stack(rf.stack())} vs {first_where}'s "
                         f"{describe_stack(first.stack())}", f"{where}/run.json")  # fmt: skip
            for part in ("data", "weights", "mmmu"):
                a = (first.inputs.get(part) or {}).get("digest") if isinstance(first.inputs.get(part), dict) else None
                b = (rf.inputs.get(part) or {}).get("digest") if isinstance(rf.inputs.get(part), dict) else None
                if a != b:
                    rep.fail("same inputs", f"{part} digest {b} vs {first_where}'s {a}", f"{where}/inputs.json")
            a, b = (data_manifest_digest(first.inputs), data_manifest_digest(rf.inputs))
            if a != b:
                rep.fail("same inputs", f"data manifest digest {b} vs {first_where}'s {a}", f"{where}/inputs.json")
        seen: dict[str, str] = {}
        for where, rf in facts:
            for key in (f"run id {rf.run_id}",
                        *(f"{s}/events.log sha256 {sha256_file(rf.path / s / 'events.log')}" for s in STAGES
                          if (rf.path / s / "events.log").is_file())):  # fmt: skip
                if key in seen:
                    rep.fail("duplicate run", f"same {key.split(' sha256')[0]} as {seen[key]}: a run counts once", where)
                    break
                seen[key] = where
    need = rules.runs_needed(category)
    if len(runs) < need:
        rep.fail("runs", f"{len(runs)} run(s); the {category} category needs {need} for an honest spread", "results")
    else:
        rep.add("runs", "pass", f"{len(runs)} runs ({category} needs {need})")

    # Every figure, recomputed.
    peak = desc.get("accelerator_peak_bf16_flops") if isinstance(desc, dict) else None
    summaries = []
    figures_ok = True
    for where, rf in facts:
        recomputed = run_summary(rf.path, peak_flops=peak)
        rescored = _rescore(rep, rf.path, where)
        if rescored is not None:
            recomputed["mmmu_acc"] = rescored
            if "finetune" in recomputed["stages"]:
                recomputed["stages"]["finetune"]["mmmu_acc"] = rescored
            if recomputed.get("eval"):
                recomputed["eval"]["overall"] = rescored
        summaries.append(recomputed)
        try:
            stated = json.loads((rf.path / "summary.json").read_text())
        except (OSError, ValueError) as e:
            rep.fail("figures", f"summary.json unreadable: {e}", f"{where}/summary.json")
            figures_ok = False
            continue
        for d in diff(stated, recomputed)[:5]:
            rep.fail("figures", f"summary.json disagrees with the raw facts: {d}", f"{where}/summary.json")
            figures_ok = False
    for d in diff(sub.get("results"), stated_results(summaries, rules))[:5]:
        rep.fail("figures", f"stated results disagree with the runs: {d}", "submission.json")
        figures_ok = False
    if figures_ok:
        rep.add("figures", "pass", "every figure recomputed from the raw facts matches what is stated")
    for where, rf in facts:
        a = rf.accelerator()
        if desc and a["model"] != desc.get("accelerator_model_name"):
            rep.fail("system", f"the run ran on {a['model']!r}, the system description says "
                               f"{desc.get('accelerator_model_name')!r}", where)  # fmt: skip
        if desc and (a["nodes"], a["per_node"]) != (desc.get("number_of_nodes"), desc.get("accelerators_per_node")):
            rep.fail("system", f"the run used {a['nodes']} x {a['per_node']}, the system description says "
                               f"{desc.get('number_of_nodes')} x {desc.get('accelerators_per_node')}", where)  # fmt: skip
    if sub.get("synthetic"):
        rep.add("synthetic", "warn", "synthetic runs (generated data, random weights): they measure the kit, not the case")


def _rescore(rep: Report, run: Path, where: str) -> float | None:
    """MMMU accuracy scored again from the raw responses, checked against the shipped score files."""
    responses = run / "eval" / "responses.json"
    try:
        result = mmmu.score(mmmu.load_predictions(responses))
    except (mmmu.MMMUError, OSError) as e:
        rep.fail("figures", f"the MMMU responses cannot be scored: {e}", f"{where}/eval/responses.json")
        return None
    shipped = run / "eval" / "mmmu" / "summary.json"
    try:
        stated = json.loads(shipped.read_text())
    except (OSError, ValueError):
        rep.fail("figures", "eval/mmmu/summary.json is missing or unreadable", f"{where}/eval/mmmu/summary.json")
        return _overall(mmmu.summary(result))
    fresh = json.loads(json.dumps(mmmu.jsonable(mmmu.summary(result))))
    for d in diff(stated, fresh)[:3]:
        rep.fail("figures", f"the MMMU score disagrees with the responses: {d}", f"{where}/eval/mmmu/summary.json")
    return _overall(fresh)


def _overall(summary: dict[str, Any]) -> float | None:
    v = summary.get("overall")
    if isinstance(v, dict):
        v = v.get("acc", v.get("accuracy"))
    if not isinstance(v, (int, float)):
        return None
    return v / 100 if v > 1 else float(v)
