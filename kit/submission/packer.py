"""`kit submit`: check finished runs with the checks `kit verify` runs, then write the submission.

`prepare()` reads the runs and the system file and returns every finding verify would report; `pack()` refuses on
any failure before it writes a byte. `write()` builds the submission under temporary names in --out and gives it its
final names last (the tarball, its .sha256, then the folder), so an interrupted or failed submit leaves nothing
half-made under a final name and a retry works.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit import __version__
from kit.case.rules import Break, Rules
from kit.case.rules import check_run as rule_breaks
from kit.results.model import stated_results
from kit.results.summary import run_summary
from kit.submission.checks import Candidate, candidate_from_runs, run_checks
from kit.submission.findings import Findings
from kit.submission.layout import (
    MANIFEST_SCHEMA,
    SIGN_NAMESPACE,
    SUBMISSION_SCHEMA,
    RunFacts,
    SubmissionError,
    data_of,
    output_files,
    read_json,
    run_files,
    sha256_file,
    slug,
)
from kit.submission.system import describe, read_system_toml

SHOWN_IN_REFUSAL = 12  # findings listed in a refusal; the rest are counted


class Refused(SubmissionError):
    """The runs fail checks `kit verify` would fail: nothing was written."""

    def __init__(self, findings: Findings, hint: str = "") -> None:
        fails = findings.failures
        lines = [f"- [{f.check}] {f.where + ': ' if f.where else ''}{f.detail}" for f in fails[:SHOWN_IN_REFUSAL]]
        if len(fails) > SHOWN_IN_REFUSAL:
            lines.append(f"- and {len(fails) - SHOWN_IN_REFUSAL} more")
        super().__init__(f"{len(fails)} check(s) kit verify would fail; nothing was written:\n" + "\n".join(lines)
                         + (f"\n{hint}" if hint else ""))  # fmt: skip
        self.findings = findings


@dataclass
class Plan:
    candidate: Candidate
    findings: Findings
    run_dirs: list[Path]
    system_toml: Path

    @property
    def person(self) -> dict[str, Any]:
        return self.candidate.person

    @property
    def facts(self) -> list[RunFacts]:
        return self.candidate.facts


def prepare(run_dirs: list[Path], system_toml: Path, rules: Rules, *, allow_synthetic: bool = False) -> Plan:
    """Read the system file and the runs and run every check verify will run; raise SubmissionError for what is not
    a submission at all (no runs, a run given twice, another case, a synthetic run without --allow-synthetic)."""
    if not run_dirs:
        raise SubmissionError("no runs given: kit submit RUN [RUN ...] --system SYSTEM.toml --out DIR")
    person = read_system_toml(system_toml)
    resolved = [Path(r).resolve() for r in run_dirs]
    twice = sorted({str(r) for r in resolved if resolved.count(r) > 1})
    if twice:
        raise SubmissionError(f"run {twice[0]} is given more than once; each run counts once")
    c = candidate_from_runs([Path(r) for r in run_dirs], person, rules, f"--system {system_toml}")
    for rf in c.facts:
        if rf.run.get("case") != rules.case:
            raise SubmissionError(f"run {rf.run_id}: case {rf.run.get('case')!r}, but these rules are for {rules.case!r}")
        if rf.synthetic and not allow_synthetic:
            raise SubmissionError(
                f"run {rf.run_id} is synthetic (generated data, random initial weights): it measures the kit, not "
                "the case; pass --allow-synthetic to pack it anyway (the submission is then marked synthetic "
                "wherever it is shown)"
            )
    findings = Findings()
    run_checks(c, findings)
    findings.close()
    return Plan(c, findings, [Path(r) for r in run_dirs], system_toml)


def refusal_hint(plan: Plan) -> str:
    if plan.candidate.division == "closed" and plan.findings.has("rules"):
        return (f"The closed division allows no change to a fixed rule; set division = \"open\" in {plan.system_toml} "
                "to submit them with every break listed")  # fmt: skip
    return ""


# ---- what is written ----


def _run_files(run: Path, case: Any) -> list[Path]:
    seen: dict[str, Path] = {}
    for pattern in run_files(case):
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
            data = read_json(rec)
            if isinstance(data, dict) and data.get("image_id") == sw["id"]:
                return rec
    return None


def outputs_of(run: Path, case: Any) -> dict[str, dict[str, Any]]:
    """sha256 and size of what the run produced (the projector, the 16-bit model), recorded, not carried."""
    out = {}
    for pattern in output_files(case):
        for p in sorted(run.glob(pattern)):
            if p.is_file():
                out[str(p.relative_to(run))] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
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


def write_tarball(tree: Path, name: str, dest: Path) -> None:
    """`dest`: a gzip tar of `tree` under the top folder `name` (sorted members, no owners or times: the same tree
    gives the same bytes), streamed to disk."""
    with open(dest, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:  # fmt: skip
        for p in [tree, *sorted(tree.rglob("*"))]:
            rel = p.relative_to(tree).as_posix()
            tar.add(p, arcname=name if rel == "." else f"{name}/{rel}", recursive=False, filter=_tar_filter)


@dataclass
class Packed:
    root: Path
    tarball: Path
    sha256: str
    signature: Path | None
    breaks: list[Break]
    synthetic: bool
    category: str
    findings: Findings | None = None


def _need_bytes(plan: Plan) -> int:
    """About what the submission takes under --out: its files, a tarball no larger, and room for the rest."""
    files = sum(p.stat().st_size for rf in plan.facts for p in _run_files(rf.path, rf.case))
    return 2 * files + 4 * 2**20


def _free_under(out: Path) -> int:
    p = out
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def write(plan: Plan, out: Path, sign_key: Path | None = None) -> Packed:
    """Write the submission of a prepared plan (whatever its findings) under --out, atomically."""
    person, first = plan.person, plan.facts[0]
    org, system = slug(person["submitter"]), slug(person["system_name"])
    root, tarball = out / org, out / f"{org}.tar.gz"
    side = out / f"{tarball.name}.sha256"
    existing = [p for p in (root, tarball, side) if p.exists()]
    if existing:
        raise SubmissionError(f"{existing[0]} exists: a submission is never written over; choose another --out (or "
                              "remove it)")  # fmt: skip
    need, free = _need_bytes(plan), _free_under(out)
    if need > free:
        raise SubmissionError(f"--out {out}: the submission needs about {_mib(need)}, and {_mib(free)} is free there; "
                              "free space or choose another --out; nothing was written")  # fmt: skip
    tag = f"partial-{os.getpid()}"
    tmp_root, tmp_tar, tmp_side = out / f".{org}.{tag}", out / f".{org}.tar.gz.{tag}", out / f".{side.name}.{tag}"
    made: list[Path] = []
    new_out = [p for p in (out, *out.parents) if not p.exists()]  # folders this call creates, removed on failure
    try:
        out.mkdir(parents=True, exist_ok=True)
        breaks = _fill(plan, tmp_root, system)
        signature = sign(tmp_root / "manifest.json", sign_key) if sign_key else None
        write_tarball(tmp_root, org, tmp_tar)
        digest = sha256_file(tmp_tar)
        tmp_side.write_text(f"{digest}  {tarball.name}\n")
        for src, dst in ((tmp_tar, tarball), (tmp_side, side), (tmp_root, root)):
            made.append(dst)  # first: a signal raised as the rename returns must still undo it
            os.replace(src, dst)
    except BaseException as e:  # a failure, Ctrl-C or SIGTERM: nothing half-made stays, under any name
        for p in made:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        shutil.rmtree(tmp_root, ignore_errors=True)
        for p in (tmp_tar, tmp_side):
            p.unlink(missing_ok=True)
        for p in new_out:  # innermost first
            try:
                p.rmdir()
            except OSError:
                pass
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SubmissionError(f"--out {out}: the disk filled up while writing the submission (it needs about "
                                  f"{_mib(need)}; {_mib(_free_under(out))} is free now); nothing was left behind: free "
                                  "space and run kit submit again") from None  # fmt: skip
        if isinstance(e, OSError):
            raise SubmissionError(f"--out {out}: cannot write the submission ({e.strerror or e}); nothing was left "
                                  "behind") from None  # fmt: skip
        raise
    return Packed(root, tarball, digest, root / signature.name if signature else None, breaks, first.synthetic,
                  plan.candidate.category, plan.findings)  # fmt: skip


def _fill(plan: Plan, tmp_root: Path, system: str) -> list[Break]:
    """The submission's tree under its temporary name: runs, summaries, system description, submission.json,
    manifest."""
    person, facts, rules = plan.person, plan.facts, plan.candidate.rules
    first = facts[0]
    results = tmp_root / "results" / system / rules.case
    summaries, runs_meta = [], []
    breaks: list[Break] = []
    for i, f in enumerate(facts, 1):
        dest = results / f"run_{i}"
        for src in _run_files(f.path, f.case):
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
                          "outputs": outputs_of(f.path, f.case)})  # fmt: skip
        breaks += rule_breaks(rules, f.rule_facts(), plan.candidate.category, where=f"run_{i}")
    (tmp_root / "systems").mkdir(parents=True)
    (tmp_root / "systems" / f"{system}.json").write_text(json.dumps(describe(person, first), indent=2) + "\n")
    sub = {
        "schema": SUBMISSION_SCHEMA,
        "case": rules.case,
        "submitter": person["submitter"],
        "org": slug(person["submitter"]),
        "system": system,
        "system_name": person["system_name"],
        "division": person["division"],
        "category": plan.candidate.category,
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
    return breaks


def pack(run_dirs: list[Path], system_toml: Path, out: Path, rules: Rules, *, allow_synthetic: bool = False,
         sign_key: Path | None = None) -> Packed:  # fmt: skip
    """`kit submit`: refuse on any finding verify would fail, else write."""
    plan = prepare(run_dirs, system_toml, rules, allow_synthetic=allow_synthetic)
    if not plan.findings.ok:
        raise Refused(plan.findings, refusal_hint(plan))
    return write(plan, out, sign_key)
