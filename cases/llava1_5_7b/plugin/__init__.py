"""LLaVA-1.5-7B as the host sees it: the case's torch-free side, registered under the `kit.cases` entry point.

Everything kit/ needs of this case is here or one import away, in the standard library only: the stages and their
entry modules, the config schema (../config.py), the rules, reference rows and data sources (../*.toml), the
formulas of the results (metrics.py), the data layout and record validator (data.py, ../records.py), the MMMU
scorer (scoring.py), and the fit of a config to another device (fit.py). kit/ never names this case; it asks `CASE`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.case import EVAL, TRAIN, Stage

from .. import config as config_schema
from . import data, fit, metrics, scoring

ROOT = Path(__file__).resolve().parent.parent


class MMMU:
    """The eval stage's scorer: the official MMMU parsing and judging rules (scoring.py)."""

    name = "MMMU"
    command = "mmmu"  # `kit mmmu score RESPONSES`
    about = "MMMU validation: score raw responses with the official parsing and judging rules."
    examples = """Examples:

      kit mmmu score runs/RUN/eval/responses.json

      kit mmmu score responses.json --subjects --out runs/RUN/eval/mmmu
    """
    figure = "overall"
    responses = "eval/responses.json"
    scores = "eval/mmmu"
    outputs = scoring.OUTPUT_FILES
    error = scoring.MMMUError
    file_help = ("JSON list (or .jsonl) of raw responses: id, question_type, answer, all_choices and index2ans (or "
                 "options), response; a run's are in runs/RUN/eval/responses.json.")  # fmt: skip
    score_help = """Score raw MMMU responses: parse each (official rules, seeded random fallback), judge, aggregate.

    Accuracy is per subject, then instance-weighted (micro) per discipline and overall.

    Records are scored in the official order whatever the file's order, so the random fallback repeats.
    A question_type other than "multiple-choice" (such as "open" or "short-answer") is scored as open, as the
    official scorer does; the summary counts the records of each type.

    Exit 0, or 2 on a bad file (the message names the file, the record and the field).

    Examples:

      kit mmmu score runs/RUN/eval/responses.json

      kit mmmu score responses.json --subjects

      kit mmmu score responses.json --json --out runs/RUN/eval/mmmu
    """

    def score_file(self, responses: Path) -> dict[str, Any]:
        return scoring.score(scoring.load_predictions(Path(responses)), source=str(responses))

    def table(self, result: dict[str, Any], details: bool = False) -> dict[str, Any]:
        """The result as a table for the host to draw: per discipline (micro average), with --subjects each subject
        under it, then the overall. Cells are plain text; rows marked "bold" or "section" (a rule above)."""
        rows: list[dict[str, Any]] = []
        for d, agg in result["disciplines"].items():
            rows.append({"cells": [d, str(agg["num"]), str(agg["correct"]), f"{100 * agg['accuracy']:.2f}%"],
                         "bold": True})  # fmt: skip
            if details:
                for sub in agg["subjects"]:
                    sa = result["subjects"][sub]
                    rows.append({"cells": [f"  {sub}", str(sa["num"]), str(sa["correct"]), f"{100 * sa['accuracy']:.2f}%"]})
        rows.append({"cells": ["overall", str(result["num"]), str(result["correct"]), f"{100 * result['overall']:.2f}%"],
                     "bold": True, "section": True})  # fmt: skip
        n_mc = result["question_types"].get("multiple-choice", {}).get("num", 0)
        return {
            "title": "MMMU validation",
            "columns": ["discipline / subject", "questions", "correct", "accuracy"],
            "rows": rows,
            "caption": (f"{result['random_fallbacks']} of {n_mc} multiple-choice responses named no letter and got a "
                        f"seeded random one (random.Random({result['seed']}), official order)"),
            "notes": [f"records by question type: {scoring.declared_types_text(result)}"],
        }  # fmt: skip

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        import json

        return json.loads(json.dumps(scoring.jsonable(scoring.summary(result))))

    def write(self, out: Path, result: dict[str, Any], protect: tuple[Path, ...] = ()) -> list[Path]:
        return list(scoring.write_outputs(Path(out), result, protect=protect).values())

    def accuracy(self, summary: dict[str, Any]) -> float | None:
        """`overall` of a summary as a fraction (a dict's acc/accuracy; above 1 read as percent)."""
        v = summary.get("overall") if isinstance(summary, dict) else None
        if isinstance(v, dict):
            v = v.get("acc", v.get("accuracy"))
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return None
        return v / 100 if v > 1 else float(v)


class Llava:
    name = "llava1_5_7b"
    title = "LLaVA-1.5-7B"
    package = "cases.llava1_5_7b"
    root = ROOT
    stages = (
        Stage("pretrain", TRAIN, "cases.llava1_5_7b.train", ("pretrain/mm_projector.bin",)),
        Stage("finetune", TRAIN, "cases.llava1_5_7b.train", ("finetune/model/*",)),
        Stage("eval", EVAL, "cases.llava1_5_7b.evaluate"),
    )
    probe_module = "cases.llava1_5_7b.env"  # prints the environment facts where the ranks run (environment.json)
    synthetic_module = "cases.llava1_5_7b.synthetic"  # generates --synthetic's data set in the real formats
    prepare_module = "cases.llava1_5_7b.ops"  # builds DeepSpeed's CPU op once before a native run
    image_repository = "kit-llava"  # `kit build`'s tag: kit-llava:VERSION-...
    request_aliases = {"mmmu": "eval_data", "mmmu_decoding": "eval_decoding"}  # run.json fields of older runs
    config = config_schema
    metrics = metrics
    data = data
    scorer = MMMU()

    def stage_args(self, stage: str, request: dict[str, Any]) -> list[str]:
        """The arguments of train.py (training stages) or evaluate.py (the eval stage), after --stage and --run-dir."""
        args = ["--config", str(request["config_file"])]
        if request.get("synthetic"):
            args.append("--synthetic")
        if request.get("models"):
            args += ["--models", request["models"]]
        if stage == "eval":
            if request.get("eval_data"):
                args += ["--mmmu", request["eval_data"]]
            elif request.get("synthetic"):
                args += ["--synthetic-questions", str(request.get("synthetic_questions") or 30)]
            if request.get("model_dir"):
                args += ["--model-dir", request["model_dir"]]
            args += ["--decoding", request.get("eval_decoding") or "greedy"]
            if request.get("eval_limit"):
                args += ["--limit", str(request["eval_limit"])]
            return args
        if request.get("data"):
            args += ["--data", request["data"]]
        if request.get("max_steps"):
            args += ["--max-steps", str(request["max_steps"])]
        if not request.get("save", True):
            args.append("--no-save")
        return args

    def synthetic_questions(self, cfg: Any) -> int:
        """Questions per subject of the generated eval set (--synthetic)."""
        return int(cfg.to_dict()["synthetic"].get("mmmu_questions", 30))

    def synthetic_eval_questions(self, cfg: dict[str, Any]) -> int:
        """The questions a full synthetic eval answers: every subject's generated questions."""
        return len(scoring.SUBJECT_SHORT_NAMES) * int(cfg["synthetic"]["mmmu_questions"])

    def synthetic_args(self, cfg: Any, max_steps: int) -> list[str]:
        """synthetic.py's arguments beyond --config and --out. With --max-steps, one step more than the run trains:
        an epoch's last step gathers the leftover samples of both modalities (LLaVA's grouped sampler), 1 step in
        5,197 of the real finetune epoch but 1 in 4 of a 4-step epoch, where it inflated the measured padding."""
        if not max_steps:
            return []
        return ["--pretrain-records", str((max_steps + 1) * cfg.pretrain.global_batch),
                "--finetune-records", str((max_steps + 1) * cfg.finetune.global_batch)]  # fmt: skip

    def request_problems(self, request: dict[str, Any], cfg: Any) -> list[str]:
        """What this case refuses in a request, whatever the host: stages that cannot run alone."""
        stages = list(request.get("stages") or [])
        out = []
        if stages == ["finetune"] and not request.get("synthetic"):
            out.append("finetune alone needs the pretrain projector: run --stage train (with --synthetic, finetune "
                       "alone starts from a random projector)")  # fmt: skip
        if "eval" in stages and "finetune" in stages and not request.get("save", True):
            out.append("--no-save leaves no finetuned model for the eval stage: use --stage train with --no-save")
        return out

    def eval_default(self, data: Path | None) -> Path | None:
        """Where the eval set lies under --data when --eval-data is not given."""
        return data / "MMMU" if data is not None else None

    def eval_model_problem(self, model_dir: Path | None) -> str | None:
        """--stage eval alone needs a trained model: why --model-dir cannot serve, or None."""
        if model_dir is not None and (model_dir / "pytorch_model.bin").is_file():
            return None
        return ("--stage eval alone needs a finetuned model: --model-dir DIR holding pytorch_model.bin (a run's "
                f"finetune/model){'' if model_dir is None else f'; {model_dir} has none'}")  # fmt: skip

    def fit(self, reference: str, target: dict[str, Any]) -> dict[str, Any]:
        """A config for another device from `reference`, changing only free keys (fit.py; `kit configs new`)."""
        t = fit.Target(device=target["device"], memory_gib=float(target["memory_gib"]), nodes=int(target["nodes"]),
                       gpus_per_node=int(target["gpus_per_node"]), host_memory_gib=target.get("host_memory_gib"))  # fmt: skip
        return fit.fit(reference, t, name=target.get("name"))

    def eval_data_problem(self, path: Path | None) -> str:
        return (f"the eval stage needs MMMU validation data: {path or '--eval-data DIR'} is not a directory; pass "
                "--eval-data DIR (a local copy of the MMMU/MMMU dataset, one folder of parquet files per subject), "
                "or --stage train to skip the evaluation")  # fmt: skip


CASE = Llava()
