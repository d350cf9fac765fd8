"""One set of checks for a submission: `kit submit` refuses on them before it writes anything, `kit verify` reports
them after it has checked the archive itself.

Each check is a function of a Candidate (the runs, the system description, what is claimed about them) that adds
findings. `run_checks` runs them all in order and gives every check that found nothing a `pass` row saying what it
checked, so a reviewer sees what ran. The principle: every fact is checked against every other fact that can
contradict it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.case import rules as rules_mod
from kit.case.rules import Rules
from kit.data import identity
from kit.image.stacks import describe as describe_stack
from kit.image.stacks import stack_key
from kit.submission import clocks, devices, duplicates
from kit.submission.findings import Findings
from kit.submission.layout import (
    RunFacts,
    config_difference,
    data_manifest_digest,
    data_of,
    read_run,
    unfinished,
)
from kit.submission.system import derived_keys, describe, peak_problem, person_problems

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class Candidate:
    """A submission as it is (verify) or as it would be written (submit)."""

    rules: Rules
    runs: list[tuple[str, RunFacts]]  # (where, facts): "results/<system>/<case>/run_1", or a run directory
    person: dict[str, Any]  # SYSTEM.toml's keys
    description: dict[str, Any] | None  # systems/<system>.json as packed; None before packing
    division: str
    category: str
    claimed: dict[str, Any] = field(default_factory=dict)  # submission.json (verify); what submit will state
    system_where: str = "--system"

    @property
    def facts(self) -> list[RunFacts]:
        return [rf for _, rf in self.runs]


Check = Callable[[Candidate, Findings], None]
# (name, what a pass means): the rows a reviewer reads.
REGISTRY: list[tuple[str, str, Check]] = []


def check(name: str, what: str) -> Callable[[Check], Check]:
    def add(fn: Check) -> Check:
        REGISTRY.append((name, what, fn))
        return fn

    return add


def run_checks(c: Candidate, out: Findings) -> None:
    for name, what, fn in REGISTRY:
        before = len(out.items)
        fn(c, out)
        if not any(f.check == name for f in out.items[before:]):
            out.passed(name, what)


def _where(where: str, *parts: str) -> str:
    return "/".join([where, *parts])


# ---- each run on its own ----


@check("completeness", "every run finished every stage, every planned step and rank log is there, every eval "
                       "question answered")  # fmt: skip
def _completeness(c: Candidate, out: Findings) -> None:
    for where, rf in c.runs:
        if why := unfinished(rf):
            out.fail("completeness", why, where)
        world = (rf.run.get("nodes") or 0) * (rf.run.get("gpus") or 0)
        for stage in rf.training:
            ev = rf.events[stage]
            sw = _where(where, stage, "events.log")
            if not ev.facts:
                out.fail("completeness", "no kit_facts: the stage's events.log is empty or missing", sw)
                continue
            planned = ev.facts.get("steps_planned")
            numbers = [int(s["step"]) for s in ev.steps]
            if not isinstance(planned, int) or numbers != list(range(1, planned + 1)):
                out.fail("completeness", f"steps logged {numbers[:3]}..{numbers[-3:] if numbers else []} "
                                         f"({len(numbers)}), the plan has 1..{planned}", sw)  # fmt: skip
            if ev.run_stop_status != "success":
                out.fail("completeness", f"run_stop status {ev.run_stop_status!r}, not success", sw)
            for k in range(int(ev.facts.get("world_size") or world or 0)):
                if not (rf.path / stage / "logs" / f"rank{k}.log").is_file():
                    out.fail("completeness", f"rank {k}'s log is missing", _where(where, stage, "logs", f"rank{k}.log"))
        stage = rf.eval_stage
        if stage is None:
            continue
        ev = rf.events[stage]
        if not ev.facts:
            out.fail("completeness", "the eval stage logged nothing", _where(where, stage, "events.log"))
        scorer = rf.case.scorer
        responses = rf.path / scorer.responses if scorer else None
        if responses is None:
            continue
        rel = str(responses.relative_to(rf.path))
        try:
            answered = json.loads(responses.read_text())
        except (OSError, ValueError) as e:
            out.fail("completeness", f"{rel} unreadable: {e}", _where(where, rel))
            continue
        if isinstance(answered, list) and ev.facts:
            n = ev.facts.get("questions")
            ids = [r.get("id") for r in answered if isinstance(r, dict)]
            if len(ids) != n or len(set(ids)) != len(ids):
                out.fail("completeness", f"{len(set(ids))} distinct questions answered, the eval stage had {n}",
                         _where(where, rel))  # fmt: skip


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@check("consistency", "each run's facts agree with its config: config.toml and run.json, micro and global batch, "
                      "ZeRO stage, world size, the learning rate of every step")  # fmt: skip
def _consistency(c: Candidate, out: Findings) -> None:
    for where, rf in c.runs:
        cfg_toml = rf.path / "config.toml"
        if cfg_toml.is_file():
            try:
                flat_toml = rules_mod.flatten(tomllib.loads(cfg_toml.read_text()))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
                out.fail("consistency", f"config.toml unreadable: {e}", _where(where, "config.toml"))
            else:
                flat_run = rules_mod.flatten(rf.config)
                differ = [k for k in sorted(set(flat_toml) | set(flat_run)) if not _close(flat_toml.get(k), flat_run.get(k))]
                if differ:
                    k = differ[0]
                    out.fail("consistency", f"config.toml and run.json disagree on {k} ({flat_toml.get(k)!r} vs "
                                            f"{flat_run.get(k)!r}): the run's config was edited after it ran",
                             _where(where, "config.toml"))  # fmt: skip
        world = (rf.run.get("nodes") or 0) * (rf.run.get("gpus") or 0)
        for stage in rf.training:
            ev = rf.events[stage]
            f, sw = ev.facts, _where(where, stage, "events.log")
            if not f:
                continue
            scfg = rf.config.get(stage) or {}
            for key in ("micro_batch", "global_batch", "zero_stage"):
                if f.get(key) != scfg.get(key):
                    out.fail("consistency", f"kit_facts {key} = {f.get(key)!r} but the run's config says "
                                            f"{scfg.get(key)!r}", sw)  # fmt: skip
            if f.get("world_size") != world:
                out.fail("consistency", f"world_size {f.get('world_size')} but run.json asks {world} ranks", sw)
            base, warm, total = scfg.get("lr"), f.get("warmup_steps"), f.get("steps_total")
            if isinstance(base, (int, float)) and isinstance(warm, int) and isinstance(total, int):
                for s in ev.steps:
                    want = rf.case.metrics.learning_rate(float(base), int(s["step"]), warm, total)
                    got = s.get("lr")
                    if not isinstance(got, (int, float)) or not math.isclose(float(got), want, rel_tol=1e-6, abs_tol=1e-15):
                        out.fail("consistency", f"step {s['step']} logged lr {got!r}, the config's lr {base} with "
                                                f"{warm} warm-up steps of {total} gives {want!r}", sw)  # fmt: skip
                        break


@check("damaged input", "no step logs a value no honest step logs (a step time that is not a positive finite "
                        "number, a loss that is not finite), no torn line")  # fmt: skip
def _damaged(c: Candidate, out: Findings) -> None:
    for where, rf in c.runs:
        for stage in rf.stages:
            ev = rf.events[stage]
            sw = _where(where, stage, "events.log")
            for n, key, value in ev.bad_values:
                if key == "loss":
                    out.warn("damaged input", f"step {n}: loss = {value!r} is not finite (the run diverged there, or "
                                              "the log was edited)", sw, reviewer=True)  # fmt: skip
            if ev.torn_lines:
                out.fail("damaged input", f"{len(ev.torn_lines)} torn line(s) (line {ev.torn_lines[0]}...): not whole "
                                          "events", sw)  # fmt: skip
        if rf.status is not None and rf.status.torn_lines:
            out.fail("damaged input", f"{len(rf.status.torn_lines)} damaged line(s) in status.jsonl",
                     _where(where, "status.jsonl"))  # fmt: skip


@check("clocks", "each step's time against the event stamps, the stamps against status.jsonl, the monitor's "
                 "samples and the rank logs, both ways")  # fmt: skip
def _clocks(c: Candidate, out: Findings) -> None:
    for where, rf in c.runs:
        clocks.check_run(rf, out, where)


@check("devices", "the device each run names (kit_facts) is the one the host's probe, torch where the ranks ran, "
                  "and the monitor's samples saw, in number and memory")  # fmt: skip
def _devices(c: Candidate, out: Findings) -> None:
    for where, rf in c.runs:
        devices.check_run(rf, out, where)


@check("category", "every run is of the submission's category (full epochs, or --max-steps throughput runs)")
def _category(c: Candidate, out: Findings) -> None:
    for where, rf in c.runs:
        if rf.category != c.category:
            out.fail("category", f"a {rf.category} run in a {c.category} submission", where)


@check("synthetic", "real data and published weights")
def _synthetic(c: Candidate, out: Findings) -> None:
    claim = bool(c.claimed.get("synthetic"))
    for where, rf in c.runs:
        if rf.synthetic != claim:
            out.fail("synthetic", f"the run is {'synthetic' if rf.synthetic else 'real'} but the submission says "
                                  f"synthetic = {claim}", where)  # fmt: skip
    if claim and not out.has("synthetic"):
        out.warn("synthetic", "synthetic runs (generated data, random weights): they measure the kit, not the case",
                 reviewer=True)


# ---- the rules ----


@check("rules", "the fixed rules of the case hold in every run (closed), or every break is listed (open)")
def _rules(c: Candidate, out: Findings) -> None:
    breaks = [b for where, rf in c.runs
              for b in rules_mod.check_run(c.rules, rf.rule_facts(), c.category, where.split("/")[-1])]  # fmt: skip
    base = "/".join(c.runs[0][0].split("/")[:-1]) if c.runs else ""
    if c.division == "closed":
        for b in breaks:
            out.fail("rules", f"closed division: {b}", f"{base}/{b.where}" if base else b.where)
        if not breaks:
            out.passed("rules", "closed: every fixed rule holds in every run")
        return
    stated = c.claimed.get("breaks")
    if stated is None:  # submit: the breaks it will list
        out.passed("rules", f"open: {len(breaks)} break(s) of the fixed rules, each listed in submission.json")
        return
    want = sorted(json.dumps(b.to_dict(), sort_keys=True) for b in breaks)
    got = sorted(json.dumps(b, sort_keys=True) for b in stated if isinstance(b, dict))
    if want != got:
        unlisted = [b for b in breaks if json.dumps(b.to_dict(), sort_keys=True) not in got]
        detail = f"unlisted: {unlisted[0]}" if unlisted else "submission.json lists breaks the runs do not have"
        out.fail("rules", f"open division: the listed breaks differ from the runs' ({detail})", "submission.json")
    else:
        out.passed("rules", f"open: {len(breaks)} break(s) of the fixed rules, each listed")


# ---- the runs against each other ----


@check("same system", "every run ran on the same accelerator, node count, devices per node and hosts")
def _same_system(c: Candidate, out: Findings) -> None:
    if not c.runs:
        return
    fw, first = c.runs[0]
    for where, rf in c.runs[1:]:
        if rf.system_key() != first.system_key():
            out.fail("same system", f"{rf.system_key()} vs {fw}'s {first.system_key()}: one submission per system", where)


@check("same config", "every run repeats one resolved config")
def _same_config(c: Candidate, out: Findings) -> None:
    if not c.runs:
        return
    fw, first = c.runs[0]
    for where, rf in c.runs[1:]:
        if differ := config_difference(first.config, rf.config):
            out.fail("same config", f"{differ} (vs {fw}): the runs of a submission repeat one config, so their spread "
                                    "means something", _where(where, "run.json"))  # fmt: skip


@check("same software", "every run ran the same image (or Python environment) and software stack")
def _same_software(c: Candidate, out: Findings) -> None:
    if not c.runs:
        return
    fw, first = c.runs[0]
    if "stack" in c.claimed and stack_key(c.claimed.get("stack")) != stack_key(first.stack()):
        out.fail("same software", f"submission.json names the stack {describe_stack(c.claimed.get('stack'))}, but "
                                  f"{fw}/run.json ran {describe_stack(first.stack())}", "submission.json")  # fmt: skip
    for where, rf in c.runs[1:]:
        if rf.software()["id"] != first.software()["id"]:
            out.fail("same software", f"{rf.software()['id'][:30]} vs {fw}'s {first.software()['id'][:30]}: one image "
                                      "per submission", where)  # fmt: skip
        if stack_key(rf.stack()) != stack_key(first.stack()):
            out.fail("same software", f"stack {describe_stack(rf.stack())} vs {fw}'s {describe_stack(first.stack())}",
                     _where(where, "run.json"))  # fmt: skip


@check("same inputs", "every run read the same data, weights and eval set, by digest, and the data the "
                      "submission states")  # fmt: skip
def _same_inputs(c: Candidate, out: Findings) -> None:
    if not c.runs:
        return
    fw, first = c.runs[0]
    if "data" in c.claimed and c.claimed.get("data") != data_of(first):
        out.fail("same inputs", "submission.json's data (manifest, record files, filtered records) is not what "
                                f"{fw}/inputs.json recorded", "submission.json")  # fmt: skip
    if not first.inputs:
        out.fail("same inputs", "no inputs.json (data and weights identity): made by a kit older than the submission "
                                "rules; run it again", fw)  # fmt: skip
    for where, rf in c.runs[1:]:
        da, db = identity.digests(first.inputs), identity.digests(rf.inputs)
        for part in identity.PARTS:
            a, b = da.get(part), db.get(part)
            if a != b:
                out.fail("same inputs", f"{part} digest {b} vs {fw}'s {a}", _where(where, "inputs.json"))
        a, b = data_manifest_digest(first.inputs), data_manifest_digest(rf.inputs)
        if a != b:
            out.fail("same inputs", f"data manifest digest {b} vs {fw}'s {a}", _where(where, "inputs.json"))


@check(duplicates.CHECK, "no run is another renamed, re-stamped, padded or rescaled (step, eval and monitor "
                         "timings, status transitions), and no two ran at once on one host")  # fmt: skip
def _duplicates(c: Candidate, out: Findings) -> None:
    duplicates.check(c.runs, out)


@check("runs", "as many runs as the category needs for an honest spread")
def _runs(c: Candidate, out: Findings) -> None:
    need = c.rules.runs_needed(c.category)
    if len(c.runs) < need:
        out.fail("runs", f"{len(c.runs)} run(s); the {c.category} category needs {need} for an honest spread", "results")
    else:
        out.passed("runs", f"{len(c.runs)} runs ({c.category} needs {need})")


# ---- the system description ----


@check("system", "the system description's person's keys are typed and complete, and every other key is what "
                 "the runs' own facts give (accelerator, memory, interconnect, host, software)")  # fmt: skip
def _system(c: Candidate, out: Findings) -> None:
    where = c.system_where
    for p in person_problems(c.person, where):
        out.fail("system", p.removeprefix(f"{where}: "), where)
    if not c.runs:
        return
    fw, first = c.runs[0]
    if c.description is not None:
        derived = describe(c.person, first)
        for key in sorted(derived_keys()):
            if key == "facts_from":
                continue
            if json.dumps(c.description.get(key), sort_keys=True) != json.dumps(derived.get(key), sort_keys=True):
                out.fail("system", f"{key} is {c.description.get(key)!r}, but {fw}'s facts give {derived.get(key)!r}",
                         where)  # fmt: skip
        for key in ("submitter", "system_name", "division"):
            if key in c.claimed and c.description.get(key) != c.claimed.get(key):
                out.fail("system", f"{key} {c.description.get(key)!r} but submission.json says {c.claimed.get(key)!r}",
                         where)  # fmt: skip
    for w, rf in c.runs:
        a = rf.accelerator()
        if c.description is not None and a["model"] != c.description.get("accelerator_model_name"):
            out.fail("system", f"the run ran on {a['model']!r}, the system description says "
                               f"{c.description.get('accelerator_model_name')!r}", w)  # fmt: skip
    if why := peak_problem(first.accelerator(), c.person):
        out.fail("system", why, where)
    elif c.person.get("accelerator_peak_bf16_flops") and first.accelerator().get("type") != "cpu":
        out.warn("system", f"the accelerator's peak ({c.person['accelerator_peak_bf16_flops']:.4g} FLOP/s) is declared by "
                           f"the submitter ({c.person.get('accelerator_peak_source') or 'no source given'}), not "
                           "published in env/accelerators.toml: every MFU rests on it", where, reviewer=True)  # fmt: skip


def candidate_from_runs(run_dirs: list[Path], person: dict[str, Any], rules: Rules, system_where: str) -> Candidate:
    """What `kit submit` is asked to pack, as the checks see it (the description is derived when written)."""

    runs = [(str(p), read_run(Path(p))) for p in run_dirs]
    first = runs[0][1] if runs else None
    return Candidate(
        rules=rules, runs=runs, person=person, description=None, division=str(person.get("division")),
        category=first.category if first else "full",
        claimed={"synthetic": first.synthetic if first else False}, system_where=system_where,
    )  # fmt: skip


__all__ = ["REGISTRY", "Candidate", "Findings", "candidate_from_runs", "run_checks"]
