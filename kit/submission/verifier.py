"""`kit verify`: check a submission from its raw facts alone, and change nothing in it.

First the archive itself, within bounds (kit/submission/bounds.py): the tarball's sha256, the manifest (every file
present with its hash and size, listed once, nothing unlisted), the signature, submission.json, the layout. Then
the checks `kit submit` refuses on (kit/submission/checks.py): each run complete and consistent, its clocks and
devices against each other, the rules of the division, the runs against each other, the system description
against the runs, the number of runs. Last, every figure recomputed with the kit's own formulas against what the
submission states. `strict` (a reviewer's mode) fails the warnings a reviewer must not accept.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kit import case as cases
from kit.case import rules as rules_mod
from kit.errors import KitError
from kit.results.model import accuracy_figure, accuracy_stage
from kit.results.summary import run_summary
from kit.submission.bounds import DEFAULT_LIMITS, Limits, unpack, walk
from kit.submission.checks import Candidate, run_checks
from kit.submission.findings import Finding, Findings
from kit.submission.layout import (
    MANIFEST_SCHEMA,
    SIGN_NAMESPACE,
    SUBMISSION_SCHEMA,
    TOP_LEVEL,
    SubmissionError,
    read_run,
    sha256_file,
)
from kit.submission.packer import stated_results
from kit.submission.system import PERSON_KEYS

REL_TOL = 1e-9
IGNORED_SUMMARY_KEYS = {"generated_at", "plots", "notes", "kit_version"}


@dataclass
class Report:
    path: str
    root: str = ""
    findings: list[Finding] = field(default_factory=list)
    submission: dict[str, Any] = field(default_factory=dict)
    strict: bool = False

    @property
    def ok(self) -> bool:
        return not any(f.status == "fail" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "strict": self.strict,
                "findings": [f.to_dict() for f in self.findings],
                "failures": sum(f.status == "fail" for f in self.findings),
                "warnings": sum(f.status == "warn" for f in self.findings)}  # fmt: skip


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


def open_tarball(tar_path: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> Path:
    """Unpack within the bounds into `dest` and return the submission's root there."""
    size = tar_path.stat().st_size
    if size > limits.total_bytes:
        raise SubmissionError(f"{tar_path}: {size / 2**30:.1f} GiB compressed, more than the {limits.total_bytes / 2**30:.1f} "
                              "GiB a submission may hold unpacked")  # fmt: skip
    unpack(tar_path, dest, limits)
    try:
        return find_root(dest)
    except SubmissionError:
        raise SubmissionError(f"{tar_path}: the archive holds no submission (no submission.json)") from None


# ---- the archive itself ----


def _check_tarball(out: Findings, tar_path: Path) -> None:
    side = tar_path.with_name(tar_path.name + ".sha256")
    if not side.is_file():
        out.warn("tarball", f"no {side.name} beside it: the archive's own hash is not checked", reviewer=True)
        return
    words = side.read_text(errors="replace").split()
    want = words[0] if words else ""
    got = sha256_file(tar_path)
    if want != got:
        out.fail("tarball", f"sha256 {got} does not match {side.name} ({want}): the archive changed after packing",
                 tar_path.name)  # fmt: skip
    else:
        out.passed("tarball", f"sha256 matches {side.name}")


def _check_manifest(out: Findings, root: Path, files: dict[str, int]) -> None:
    """Every entry a canonical path listed once, present with its size and sha256; no file unlisted."""
    mpath = root / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        out.fail("manifest", "manifest.json is missing", "manifest.json")
        return
    except (OSError, ValueError) as e:
        out.fail("manifest", f"manifest.json is not valid JSON: {e}", "manifest.json")
        return
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA or not isinstance(manifest.get("files"), list):
        out.fail("manifest", f"manifest.json is not a {MANIFEST_SCHEMA} manifest", "manifest.json")
        return
    listed: dict[str, dict[str, Any]] = {}
    for entry in manifest["files"]:
        rel = entry.get("path") if isinstance(entry, dict) else None
        canonical = PurePosixPath(rel).as_posix() if isinstance(rel, str) and rel else None
        if (not canonical or rel != canonical or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts
                or "\\" in rel):  # fmt: skip
            out.fail("manifest", f"entry {str(entry)[:200]!r} is not a canonical path inside the submission "
                                 "(as kit submit writes them: results/...)", "manifest.json")  # fmt: skip
            continue
        if rel in listed:
            out.fail("manifest", "listed twice in manifest.json: a file counts once", rel)
            continue
        listed[rel] = entry
        if rel not in files:
            out.fail("manifest", "listed in manifest.json but missing", rel)
        elif files[rel] != entry.get("bytes"):
            out.fail("manifest", f"{files[rel]} bytes, the manifest says {entry.get('bytes')}", rel)
        elif sha256_file(root / rel) != entry.get("sha256"):
            out.fail("manifest", "sha256 differs from the manifest's: the file changed after packing", rel)
    for rel in sorted(files):
        if rel not in listed and rel not in ("manifest.json", "manifest.json.sig"):
            out.fail("manifest", "present but not listed in manifest.json", rel)
    if not out.has("manifest"):
        out.passed("manifest", f"{len(listed)} files, each listed once with its sha256 and size")


def _check_signature(out: Findings, root: Path, allowed_signers: Path | None) -> None:
    sig, manifest = root / "manifest.json.sig", root / "manifest.json"
    if not sig.is_file():
        if allowed_signers is not None:
            out.fail("signature", "--allowed-signers was given but the submission is not signed (no manifest.json.sig)")
        else:
            out.warn("signature", "not signed: anyone could have packed it (kit submit --sign-key KEY)", reviewer=True)
        return
    if allowed_signers is None:
        out.warn("signature", "signed, but not checked: pass --allowed-signers FILE", reviewer=True)
        return
    if not allowed_signers.is_file():
        out.fail("signature", f"--allowed-signers {allowed_signers}: no such file")
        return
    try:
        found = subprocess.run(["ssh-keygen", "-Y", "find-principals", "-s", str(sig), "-f", str(allowed_signers)],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    except FileNotFoundError:
        out.fail("signature", "ssh-keygen is not installed: cannot check the signature (install openssh-client)")
        return
    principals = [p for p in found.stdout.split() if p]
    if found.returncode != 0 or not principals:
        out.fail("signature", f"made by no key in {allowed_signers}: {found.stderr.strip() or 'no principal matches'}",
                 "manifest.json.sig")  # fmt: skip
        return
    with open(manifest, "rb") as f:
        ok = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed_signers), "-I", principals[0], "-n",
                             SIGN_NAMESPACE, "-s", str(sig)], stdin=f, capture_output=True, text=True, timeout=60)  # fmt: skip
    if ok.returncode != 0:
        out.fail("signature", f"does not verify for {principals[0]}: {ok.stderr.strip() or ok.stdout.strip()}",
                 "manifest.json.sig")  # fmt: skip
    else:
        out.passed("signature", f"good signature by {principals[0]} over manifest.json")


# ---- figures ----


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
                out.append(f"{key}: stated {str(stated[k])[:80]!r}, not a figure the kit computes")
            elif k not in stated:
                out.append(f"{key}: missing (recomputed {str(recomputed[k])[:80]!r})")
            else:
                out += diff(stated[k], recomputed[k], key)
        return out
    if isinstance(stated, list) and isinstance(recomputed, list):
        if len(stated) != len(recomputed):
            return [f"{path}: {len(stated)} values stated, {len(recomputed)} recomputed"]
        return [d for i, (a, b) in enumerate(zip(stated, recomputed, strict=True)) for d in diff(a, b, f"{path}[{i}]")]
    return [] if _num_equal(stated, recomputed) else [f"{path}: stated {str(stated)[:80]!r}, recomputed {str(recomputed)[:80]!r}"]


def _rescore(out: Findings, run: Path, where: str, scorer: Any) -> float | None:
    """The eval's accuracy scored again from the raw responses by the case's scorer, checked against the shipped
    scores."""
    try:
        fresh = scorer.summary(scorer.score_file(run / scorer.responses))
    except (KitError, ValueError, OSError) as e:  # the scorer's error for a bad file, or a file that cannot be read
        out.fail("figures", f"the {scorer.name} responses cannot be scored: {e}", f"{where}/{scorer.responses}")
        return None
    scores = f"{scorer.scores}/summary.json"
    try:
        stated = json.loads((run / scores).read_text())
    except (OSError, ValueError):
        out.fail("figures", f"{scores} is missing or unreadable", f"{where}/{scores}")
        return scorer.accuracy(fresh)
    for d in diff(stated, fresh)[:3]:
        out.fail("figures", f"the {scorer.name} score disagrees with the responses: {d}", f"{where}/{scores}")
    return scorer.accuracy(fresh)


def _check_figures(out: Findings, c: Candidate, sub: dict[str, Any], peak: Any) -> None:
    case = cases.get(c.rules.case)
    acc, carrier = accuracy_figure(case), accuracy_stage(case)
    summaries = []
    for where, rf in c.runs:
        recomputed = run_summary(rf.path, peak_flops=peak if isinstance(peak, (int, float)) else None)
        rescored = _rescore(out, rf.path, where, case.scorer) if case.scorer is not None else None
        if rescored is not None and acc is not None:
            recomputed[acc.key] = rescored
            if carrier in recomputed["stages"]:
                recomputed["stages"][carrier][acc.key] = rescored
            if recomputed.get("eval"):
                recomputed["eval"]["overall"] = rescored
        summaries.append(recomputed)
        try:
            stated = json.loads((rf.path / "summary.json").read_text())
        except (OSError, ValueError) as e:
            out.fail("figures", f"summary.json unreadable: {e}", f"{where}/summary.json")
            continue
        for d in diff(stated, recomputed)[:5]:
            out.fail("figures", f"summary.json disagrees with the raw facts: {d}", f"{where}/summary.json")
    for d in diff(sub.get("results"), stated_results(summaries, c.rules))[:5]:
        out.fail("figures", f"stated results disagree with the runs: {d}", "submission.json")
    if not out.has("figures"):
        out.passed("figures", "every figure recomputed from the raw facts matches what is stated")


# ---- the whole ----


def verify(path: str | Path, allowed_signers: Path | None = None, rules_path: Path | None = None,
           strict: bool = False, limits: Limits = DEFAULT_LIMITS) -> Report:  # fmt: skip
    """Check a submission (a folder or its .tar.gz) without changing anything in it. A path that is not a
    submission, or one that crosses a bound, raises SubmissionError (the command exits 2)."""
    path = Path(path)
    out = Findings(strict=strict)
    rep = Report(path=str(path), strict=strict)
    if not path.exists():
        raise SubmissionError(f"{path}: no such file or folder")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz")):
            raise SubmissionError(f"{path}: expected a submission folder or its .tar.gz")
        with tempfile.TemporaryDirectory(prefix="kit-verify-") as tmp:
            root = open_tarball(path, Path(tmp), limits)
            _check_tarball(out, path)
            _verify_tree(out, rep, root, allowed_signers, rules_path, limits)
    else:
        _verify_tree(out, rep, find_root(path), allowed_signers, rules_path, limits)
    out.close()
    rep.findings = out.items
    return rep


def _verify_tree(out: Findings, rep: Report, root: Path, allowed_signers: Path | None, rules_path: Path | None,
                 limits: Limits) -> None:  # fmt: skip
    rep.root = str(root)
    files = {rel: size for rel, _, size in walk(root, limits)}  # bounded: a refusal raises before any hashing
    _check_manifest(out, root, files)
    _check_signature(out, root, allowed_signers)
    try:
        sub = json.loads((root / "submission.json").read_text())
    except (OSError, ValueError) as e:
        out.fail("layout", f"submission.json unreadable: {e}", "submission.json")
        return
    if not isinstance(sub, dict) or sub.get("schema") != SUBMISSION_SCHEMA:
        out.fail("layout", f"schema {sub.get('schema') if isinstance(sub, dict) else None!r}, expected "
                           f"{SUBMISSION_SCHEMA!r}", "submission.json")  # fmt: skip
        return
    rep.submission = sub
    try:
        rules = rules_mod.load(str(sub.get("case", "")), rules_path)
    except (rules_mod.RulesError, KeyError) as e:
        out.fail("rules", str(e), "submission.json")
        return
    if sub.get("rules_sha256") != sha256_file(rules.path):
        out.warn("rules", f"packed under other rules (sha256 {str(sub.get('rules_sha256'))[:12]}); checked against "
                          f"{rules.path}", "submission.json", reviewer=True)  # fmt: skip
    system, case = str(sub.get("system", "")), sub.get("case")
    division, category = sub.get("division"), sub.get("category")
    if division not in ("closed", "open"):
        out.fail("layout", f"division {division!r}: expected closed or open", "submission.json")
    if category not in rules.categories:
        out.fail("layout", f"category {category!r}: expected one of {', '.join(rules.categories)}", "submission.json")
        return
    sys_rel = f"systems/{system}.json"
    try:
        desc = json.loads((root / sys_rel).read_text())
    except (OSError, ValueError) as e:
        out.fail("layout", f"{sys_rel} unreadable: {e}", sys_rel)
        desc = {}
    if not isinstance(desc, dict):
        out.fail("layout", f"{sys_rel} is not an object", sys_rel)
        desc = {}

    results = root / "results" / system / str(case)
    listed = [r.get("dir") for r in sub.get("runs") or [] if isinstance(r, dict)]
    present = sorted(p.name for p in results.iterdir() if p.is_dir()) if results.is_dir() else []
    for d in listed:
        if d not in present:
            out.fail("layout", "listed in submission.json but missing", f"results/{system}/{case}/{d}")
    for d in present:
        if d not in listed:
            out.fail("layout", "a run folder submission.json does not list", f"results/{system}/{case}/{d}")
    for name in sorted(p.name for p in root.iterdir() if p.name not in TOP_LEVEL):
        out.fail("layout", "not part of a submission's layout", name)
    runs = []
    for d in listed:
        if d in present:
            where = f"results/{system}/{case}/{d}"
            try:
                runs.append((where, read_run(results / str(d))))
            except SubmissionError as e:
                out.fail("completeness", str(e), where)
    if not runs:
        out.fail("layout", "no runs", f"results/{system}/{case}")
        return
    if not out.has("layout"):
        out.passed("layout", f"submission.json, {sys_rel} and {len(runs)} run folder(s), nothing else")
    person = {k: v for k, v in desc.items() if k in PERSON_KEYS}
    c = Candidate(rules=rules, runs=runs, person=person, description=desc, division=str(division),
                  category=str(category), claimed=sub, system_where=sys_rel)  # fmt: skip
    run_checks(c, out)
    _check_figures(out, c, sub, desc.get("accelerator_peak_bf16_flops"))
