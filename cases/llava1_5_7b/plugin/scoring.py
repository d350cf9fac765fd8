"""MMMU validation scoring: parse raw model responses and judge them exactly as the official MMMU protocol
does (case-facts section 5), then aggregate per subject, per discipline and overall.

Standard library only: the host scores raw responses written by the case, so a corrected parser rescored
old runs (the run-directory contract: raw facts in, derived numbers out).

Two behaviours of the official protocol that a reader should know:

- A multiple-choice response with no recognisable letter gets a random letter from ONE generator,
  `random.Random(42)`, shared by all questions in scoring order. So `score` always scores in the official
  order (subjects by the official table's sorted short names, questions by their numeric id), whatever the
  order of its input; the same responses always give the same score.
- The official open-answer splitter lower-cases the response and then splits on ". followed by a capital
  letter" or a newline; after lower-casing no capital remains, so only newlines split. `parse_open`
  splits on newlines only, which is the same behaviour said plainly.
"""

from __future__ import annotations

import ast
import json
import math
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

RANDOM_SEED = 42

# The official subject table keyed by short name; sorted by short name, this is the scoring order.
SUBJECT_SHORT_NAMES: dict[str, str] = {
    "acc": "Accounting",
    "agri": "Agriculture",
    "arch": "Architecture_and_Engineering",
    "art": "Art",
    "art_theory": "Art_Theory",
    "bas_med": "Basic_Medical_Science",
    "bio": "Biology",
    "chem": "Chemistry",
    "cli_med": "Clinical_Medicine",
    "cs": "Computer_Science",
    "design": "Design",
    "diag_med": "Diagnostics_and_Laboratory_Medicine",
    "econ": "Economics",
    "elec": "Electronics",
    "ep": "Energy_and_Power",
    "fin": "Finance",
    "geo": "Geography",
    "his": "History",
    "liter": "Literature",
    "manage": "Manage",
    "mark": "Marketing",
    "mate": "Materials",
    "math": "Math",
    "mech": "Mechanical_Engineering",
    "music": "Music",
    "phar": "Pharmacy",
    "phys": "Physics",
    "psy": "Psychology",
    "pub_health": "Public_Health",
    "socio": "Sociology",
}
SUBJECT_ORDER: tuple[str, ...] = tuple(SUBJECT_SHORT_NAMES[k] for k in sorted(SUBJECT_SHORT_NAMES))

DISCIPLINES: dict[str, tuple[str, ...]] = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": (
        "Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
        "Public_Health",
    ),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": (
        "Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics", "Energy_and_Power",
        "Materials", "Mechanical_Engineering",
    ),
}  # fmt: skip
DISCIPLINE_OF: dict[str, str] = {s: d for d, subjects in DISCIPLINES.items() for s in subjects}
SUBJECTS: tuple[str, ...] = SUBJECT_ORDER
_SUBJECT_RANK = {s: i for i, s in enumerate(SUBJECT_ORDER)}

# The scorer's two classes. The official scorer tests `question_type == "multiple-choice"` and scores every other
# type as open: its own example outputs mark open questions "short-answer". So does this one, and it counts the
# types as the records declared them (summary `declared_types`).
QUESTION_TYPES = ("multiple-choice", "open")
MC_PUNCTUATION = (",", ".", "!", "?", ";", ":", "'")  # stripped one after another, in this order
OPEN_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
LAST_PIECE_INDICATORS = (*OPEN_INDICATORS, "=")  # "=" only counts in the last piece
BARE_PUNCTUATION = frozenset({":", ",", ".", "!", "?", ";", "'"})

# One left-to-right scan; the first alternative that matches at a position wins, so "1,234" is one number
# (not "1" and "234") and "1.5e-3" is one number (not "1.5" and "-3").
_NUMBER = re.compile(
    r"-?(?:"
    r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d|,\d)"  # comma-grouped: 1,234 or 12,345,678 (1,234.5 too)
    r"|(?:\d+(?:\.\d+)?|\.\d+)[eE][+-]?\d+"  # scientific: 1.5e-3, 2E5
    r"|\d+\.\d+|\.\d+|\d+"  # plain decimals and integers
    r")"
)

PREDICTIONS_FIELDS = ("id", "question_type", "answer", "response")
OUTPUT_FILES = ("predictions.jsonl", "judgements.jsonl", "summary.json", "disciplines.md")

Pred = str | float


class MMMUError(ValueError):
    """Bad MMMU input: the message names the file, the record and the field."""


# ----------------------------------------------------------------------------------------------- ids


def split_id(qid: str) -> tuple[str, int]:
    """`validation_<Subject>_<n>` -> (Subject, n). Subjects contain underscores, so split at both ends."""
    head, sep, n = qid.rpartition("_")
    split, sep2, subject = head.partition("_")
    if not (sep and sep2 and split and n.isdigit()):
        raise MMMUError(f"id {qid!r} is not of the form validation_<Subject>_<n>")
    if subject not in _SUBJECT_RANK:
        raise MMMUError(f"id {qid!r}: unknown subject {subject!r} (one of {', '.join(SUBJECT_ORDER)})")
    return subject, int(n)


def order_key(qid: str) -> tuple[int, int, str]:
    """The official scoring order: subject rank, then numeric question number (so _2 before _10)."""
    subject, n = split_id(qid)
    return _SUBJECT_RANK[subject], n, qid


# ----------------------------------------------------------------------------------- multiple choice


def parse_options(options_str: str | Sequence[str], qid: str = "?") -> list[str]:
    """The dataset's `options` is a string holding a Python-style list (single quotes), hence literal_eval."""
    if isinstance(options_str, list) and all(isinstance(o, str) for o in options_str):
        return list(options_str)
    if not isinstance(options_str, str):
        raise MMMUError(
            f"question {qid}: options must be a string holding a list, got {type(options_str).__name__}"
        )
    try:
        options = ast.literal_eval(options_str)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise MMMUError(
            f"question {qid}: options {options_str[:80]!r} is not a Python-style list ({e})"
        ) from None
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise MMMUError(f"question {qid}: options {options_str[:80]!r} is not a list of strings")
    return options


def choices_for(options: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """(index2ans, all_choices): the options lettered A, B, C... in dataset order."""
    all_choices = [chr(ord("A") + i) for i in range(len(options))]
    return dict(zip(all_choices, options, strict=True)), all_choices


def mc_candidates(
    response: str, all_choices: Sequence[str], index2ans: Mapping[str, str]
) -> tuple[str | None, str]:
    """The letter the response names and how it was found ("bracket", "space", "option_text"), or
    (None, "random") when nothing was found and the caller must draw from the shared generator."""
    text = response
    for p in MC_PUNCTUATION:  # one character at a time, as the official loop does: "B,." keeps its ","
        text = text.strip(p)
    text = f" {text} "
    kind, cands = "bracket", [c for c in all_choices if f"({c})" in text]
    if not cands:
        kind, cands = "space", [c for c in all_choices if f" {c} " in text]
    lowered = text.lower()
    if not cands and len(text.split()) > 5:
        kind, cands = "option_text", [c for c, ans in index2ans.items() if ans.lower() in lowered]
    if not cands:
        return None, "random"
    if len(cands) == 1:
        return cands[0], kind
    if kind == "bracket":
        where = [text.rfind(f"({c})") for c in cands]
    elif kind == "space":
        where = [text.rfind(f" {c} ") for c in cands]
    else:
        where = [lowered.rfind(index2ans[c].lower()) for c in cands]
    # Largest position wins; on a tie (one option's text a prefix of another's) the first candidate.
    return cands[where.index(max(where))], kind


def parse_multi_choice(
    response: str, all_choices: Sequence[str], index2ans: Mapping[str, str], rng: random.Random
) -> str:
    """The predicted letter. `rng` must be the one generator shared across the whole scoring pass."""
    letter, _ = mc_candidates(response, all_choices, index2ans)
    return letter if letter is not None else rng.choice(list(all_choices))


# ---------------------------------------------------------------------------------------------- open


def extract_numbers(text: str) -> list[str]:
    """Every number in `text`, as written: comma-grouped, scientific, then plain decimals and integers."""
    return _NUMBER.findall(text)


def _as_number(s: str) -> float | None:
    """A number as the protocol reads one: what float() accepts once commas are dropped."""
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def normalize(item: str) -> list[Pred]:
    """Numbers -> float rounded to 2 places; strings -> lower-cased and stripped; a single character c ->
    [" c", "c "], so that a one-letter answer only matches as a word edge, not inside any word."""
    s = item.strip()
    number = _as_number(s)
    if number is not None:
        return [round(number, 2)]
    s = s.lower()
    return [f" {s}", f"{s} "] if len(s) == 1 else [s]


def open_key_responses(response: str) -> tuple[list[str], bool]:
    """The answer-bearing tails of the response, and whether an indicator supplied them (else the whole
    response, cleaned, is the single key)."""
    text = response.strip().strip(".").lower()
    pieces = text.split("\n")  # the official regex, after lower(), only ever splits on "\n" (module doc)
    keys: list[str] = []
    for i, piece in enumerate(pieces):
        indicators = LAST_PIECE_INDICATORS if i == len(pieces) - 1 else OPEN_INDICATORS
        shortest: str | None = None
        for indicator in indicators:
            if indicator in piece:
                tail = piece.rsplit(indicator, 1)[1].strip()  # the text after its last occurrence
                # An empty tail counts as none yet: a later indicator's tail replaces it (official rule).
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        # The chosen tail is dropped (not replaced by the next shortest) when it is bare punctuation.
        if shortest and shortest not in BARE_PUNCTUATION:
            keys.append(shortest)
    if not keys:
        return [text], False
    return keys, True


def parse_open(response: str) -> list[Pred]:
    """The prediction list of an open answer: the key tails, every number in them, normalised, unique
    (first occurrence kept, so the output is deterministic)."""
    keys, _ = open_key_responses(response)
    items = list(keys)
    for key in keys:
        items.extend(extract_numbers(key))
    preds: list[Pred] = []
    for item in items:
        for p in normalize(item):
            if not any(type(p) is type(q) and p == q for q in preds):
                preds.append(p)
    return preds


# -------------------------------------------------------------------------------------------- judging


def _golds(answer: str | Sequence[str]) -> list[str]:
    return [answer] if isinstance(answer, str) else list(answer)


def judge_multi_choice(answer: str | Sequence[str], pred: str) -> bool:
    """Exact letter match; a list of golds accepts any of them."""
    return pred in _golds(answer)


def judge_open(answer: str | Sequence[str], preds: Sequence[Pred]) -> bool:
    """A string prediction containing a normalised gold string, or a number equal to a numeric gold."""
    golds = [g for a in _golds(answer) for g in normalize(a)]
    gold_str = [g for g in golds if isinstance(g, str)]
    gold_num = [g for g in golds if isinstance(g, float)]
    for p in preds:
        if isinstance(p, str):
            if any(g in p for g in gold_str):
                return True
        elif p in gold_num:
            return True
    return False


# -------------------------------------------------------------------------------------------- records


def _where(source: str | None, index: int, rec: Any) -> str:
    qid = rec.get("id") if isinstance(rec, Mapping) else None
    at = f"record {index}" + (f" (id {qid})" if isinstance(qid, str) else "")
    return f"{source}: {at}" if source else at


def check_record(rec: Any, index: int, source: str | None = None) -> dict[str, Any]:
    """Validate one raw-response record and return it in the scorer's shape (choices built from `options`
    when needed). Errors name the source file, the record index and id, and the field."""
    where = _where(source, index, rec)
    if not isinstance(rec, Mapping):
        raise MMMUError(f"{where}: expected an object, found {type(rec).__name__}")
    for field in PREDICTIONS_FIELDS:
        if field not in rec:
            raise MMMUError(f"{where}: missing field {field!r}")
    qid, qtype, answer, response = (rec[f] for f in PREDICTIONS_FIELDS)
    if not isinstance(qid, str):
        raise MMMUError(f"{where}: field 'id' must be a string, got {type(qid).__name__}")
    try:
        subject, _ = split_id(qid)
    except MMMUError as e:
        raise MMMUError(f"{where}: field 'id': {e}") from None
    if not isinstance(qtype, str) or not qtype.strip():
        raise MMMUError(
            f"{where}: field 'question_type' must be a string: 'multiple-choice', or any other type (such as 'open' "
            f"or 'short-answer'), which is scored as open, as the official scorer does; got {qtype!r}"
        )
    if not isinstance(response, str):
        raise MMMUError(f"{where}: field 'response' must be a string, got {type(response).__name__}")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    ok = isinstance(answer, str) or (
        isinstance(answer, list) and answer and all(isinstance(a, str) for a in answer)
    )
    if not ok:
        raise MMMUError(
            f"{where}: field 'answer' must be a string or a non-empty list of strings, got {answer!r}"
        )
    kind = "multiple-choice" if qtype == "multiple-choice" else "open"
    out = {"id": qid, "subject": subject, "question_type": kind, "declared_type": qtype, "answer": answer,
           "response": response}  # fmt: skip
    if kind == "multiple-choice":
        if "all_choices" in rec or "index2ans" in rec:
            for field in ("all_choices", "index2ans"):
                if field not in rec:
                    raise MMMUError(
                        f"{where}: missing field {field!r} (multiple choice needs both, or 'options')"
                    )
            all_choices, index2ans = rec["all_choices"], rec["index2ans"]
            if not (
                isinstance(all_choices, list) and all_choices and all(isinstance(c, str) for c in all_choices)
            ):
                raise MMMUError(
                    f"{where}: field 'all_choices' must be a non-empty list of letters, got {all_choices!r}"
                )
            if not (isinstance(index2ans, dict) and all(isinstance(v, str) for v in index2ans.values())):
                raise MMMUError(
                    f"{where}: field 'index2ans' must map letters to option texts, got {index2ans!r}"
                )
            if set(index2ans) != set(all_choices):
                raise MMMUError(
                    f"{where}: field 'index2ans' has letters {sorted(index2ans)} but 'all_choices' has "
                    f"{sorted(all_choices)}"
                )
        elif "options" in rec:
            try:
                index2ans, all_choices = choices_for(parse_options(rec["options"], qid))
            except MMMUError as e:
                raise MMMUError(f"{where}: field 'options': {e}") from None
            if not all_choices:
                raise MMMUError(f"{where}: field 'options' is empty")
        else:
            raise MMMUError(f"{where}: missing field 'all_choices' and 'index2ans' (or 'options')")
        out["all_choices"], out["index2ans"] = list(all_choices), dict(index2ans)
    return out


def load_predictions(path: Path) -> list[dict[str, Any]]:
    """Read raw responses: a JSON list of objects (or JSON Lines when the name ends in .jsonl)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise MMMUError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MMMUError(f"{path}: cannot be read ({e})") from None
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise MMMUError(f"{path}: line {lineno} is not valid JSON ({e})") from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise MMMUError(f"{path}: not valid JSON ({e}); expected a list of response objects") from None
        if not isinstance(records, list):
            raise MMMUError(
                f"{path}: expected a JSON list of response objects, found a {type(records).__name__}"
            )
    if not records:
        raise MMMUError(f"{path}: holds no records")
    for i, rec in enumerate(records):
        check_record(rec, i, str(path))
    _no_repeats(records, str(path))
    return records


def _no_repeats(records: Sequence[Mapping[str, Any]], source: str | None = None) -> None:
    """Each question once: a repeated id would be scored twice and would draw the random fallback twice."""
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r["id"] in seen:
            raise MMMUError(
                f"{_where(source, i, r)}: id {r['id']} repeats record {seen[r['id']]}; keep one response per "
                "question (a merged file may hold a rank's responses twice)"
            )
        seen[r["id"]] = i


# -------------------------------------------------------------------------------------------- scoring


def _acc(correct: int, num: int) -> dict[str, Any]:
    return {"accuracy": correct / num if num else 0.0, "correct": correct, "num": num}


def score(records: Iterable[Mapping[str, Any]], source: str | None = None) -> dict[str, Any]:
    """Parse and judge every record, in the official order whatever the input order (the random fallback
    depends on it), and aggregate: accuracy per subject, then micro (instance-weighted) per discipline and
    overall, over the subjects present. Fractions in 0..1, with counts. `source` names the file in errors."""
    checked = [check_record(r, i, source) for i, r in enumerate(records)]
    if not checked:
        raise MMMUError(f"{source}: no records to score" if source else "no records to score")
    _no_repeats(checked, source)
    declared: dict[str, int] = {}
    for r in checked:
        declared[r["declared_type"]] = declared.get(r["declared_type"], 0) + 1
    checked.sort(key=lambda r: order_key(r["id"]))

    rng = random.Random(RANDOM_SEED)  # one generator, consumed in scoring order
    questions = []
    for r in checked:
        if r["question_type"] == "multiple-choice":
            letter, how = mc_candidates(r["response"], r["all_choices"], r["index2ans"])
            if letter is None:
                letter = rng.choice(r["all_choices"])
            pred: Any = letter
            correct = judge_multi_choice(r["answer"], letter)
        else:
            _, from_indicator = open_key_responses(r["response"])
            how = "indicator" if from_indicator else "whole_response"
            pred = parse_open(r["response"])
            correct = judge_open(r["answer"], pred)
        questions.append({
            "id": r["id"], "subject": r["subject"], "discipline": DISCIPLINE_OF[r["subject"]],
            "question_type": r["question_type"], "declared_type": r["declared_type"], "answer": r["answer"],
            "parsed_pred": pred, "parse": how,
            "correct": correct,
        })  # fmt: skip

    def tally(select) -> dict[str, Any]:
        chosen = [q for q in questions if select(q)]
        return _acc(sum(q["correct"] for q in chosen), len(chosen))

    present = {q["subject"] for q in questions}
    subjects = {
        s: {"discipline": DISCIPLINE_OF[s], **tally(lambda q, s=s: q["subject"] == s)}
        for s in SUBJECT_ORDER
        if s in present
    }
    disciplines = {}
    for d, members in DISCIPLINES.items():
        here = [s for s in members if s in present]
        if here:
            disciplines[d] = {**tally(lambda q, d=d: q["discipline"] == d), "subjects": here}
    types = {t: tally(lambda q, t=t: q["question_type"] == t) for t in QUESTION_TYPES}
    total = tally(lambda q: True)
    return {
        "overall": total["accuracy"],
        "correct": total["correct"],
        "num": total["num"],
        "disciplines": disciplines,
        "subjects": subjects,
        "question_types": {t: v for t, v in types.items() if v["num"]},
        # As the records declared them: {"multiple-choice": 847, "short-answer": 53} for the official examples.
        "declared_types": dict(sorted(declared.items())),
        "random_fallbacks": sum(q["parse"] == "random" for q in questions),
        "seed": RANDOM_SEED,
        "questions": questions,
    }


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result without the per-question list: what summary.json and `--json` hold."""
    return {k: v for k, v in result.items() if k != "questions"}


# -------------------------------------------------------------------------------------------- outputs


def jsonable(obj: Any) -> Any:
    """Strict JSON: a non-finite number (float() reads "inf", "nan") is written as its string."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [jsonable(v) for v in obj]
    return obj


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def declared_types_text(result: Mapping[str, Any]) -> str:
    """`900: 847 multiple-choice, 53 short-answer (scored as open)`: the records' own types, counted."""
    declared = result.get("declared_types") or {}
    parts = [f"{n} {t}" + ("" if t in QUESTION_TYPES else " (scored as open)") for t, n in declared.items()]
    return f"{sum(declared.values())}: {', '.join(parts)}"


def disciplines_markdown(result: Mapping[str, Any]) -> str:
    """One table per discipline (its subjects, then the discipline's micro average), then the overall."""
    n_mc = result["question_types"].get("multiple-choice", {}).get("num", 0)
    lines = [
        f"# MMMU: {_pct(result['overall'])} ({result['correct']} / {result['num']})",
        "",
        f"Multiple-choice responses with no letter found, given a seeded random letter: "
        f"{result['random_fallbacks']} of {n_mc}.",
        "",
        f"Records by question type: {declared_types_text(result)}.",
    ]
    for d, agg in result["disciplines"].items():
        lines += ["", f"## {d}: {_pct(agg['accuracy'])}", "", "| subject | correct | questions | accuracy |",
                  "| --- | ---: | ---: | ---: |"]  # fmt: skip
        for s in agg["subjects"]:
            sa = result["subjects"][s]
            lines.append(f"| {s} | {sa['correct']} | {sa['num']} | {_pct(sa['accuracy'])} |")
        lines.append(f"| **{d}** | **{agg['correct']}** | **{agg['num']}** | **{_pct(agg['accuracy'])}** |")
    lines += ["", "## Overall", "", "| | correct | questions | accuracy |", "| --- | ---: | ---: | ---: |"]
    for d, agg in result["disciplines"].items():
        lines.append(f"| {d} | {agg['correct']} | {agg['num']} | {_pct(agg['accuracy'])} |")
    lines.append(
        f"| **overall** | **{result['correct']}** | **{result['num']}** | **{_pct(result['overall'])}** |"
    )
    return "\n".join(lines) + "\n"


def write_outputs(
    out_dir: Path, result: Mapping[str, Any], *, protect: Iterable[Path] = ()
) -> dict[str, Path]:
    """Write the derived files atomically (each may be replaced: they are recomputed from raw responses).
    A path in `protect` (the raw responses) is never written: the call fails before writing anything."""
    out_dir = Path(out_dir)
    targets = {name: out_dir / name for name in OUTPUT_FILES}
    guarded = {Path(p).resolve() for p in protect}
    for path in targets.values():
        if path.resolve() in guarded:
            raise MMMUError(f"{path} holds the raw responses; choose another output directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    questions = result["questions"]

    def jsonl(rows: Iterable[Mapping[str, Any]]) -> str:
        return "".join(json.dumps(jsonable(dict(r)), allow_nan=False) + "\n" for r in rows)

    keep = ("id", "subject", "question_type", "parsed_pred", "parse")
    _write_atomic(targets["predictions.jsonl"], jsonl({k: q[k] for k in keep} for q in questions))
    _write_atomic(targets["judgements.jsonl"], jsonl(questions))
    _write_atomic(
        targets["summary.json"], json.dumps(jsonable(summary(result)), indent=2, allow_nan=False) + "\n"
    )
    _write_atomic(targets["disciplines.md"], disciplines_markdown(result))
    return targets
