"""LLaVA-1.5-7B as the host sees it: the case's torch-free side, registered under the `kit.cases` entry point.

Everything kit/ needs of this case is here or one import away, in the standard library only: the stages and their
entry modules, the config schema (../config.py), the rules, reference rows and data sources (../*.toml), the
formulas of the results (metrics.py), the data layout and record validator (data.py, ../records.py), and the
MMMU scorer (scoring.py). kit/ never names this case; it asks `CASE`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.case import EVAL, TRAIN, Stage

from .. import config as config_schema
from . import data, metrics, scoring

ROOT = Path(__file__).resolve().parent.parent


class MMMU:
    """The eval stage's scorer: the official MMMU parsing and judging rules (scoring.py)."""

    name = "MMMU"
    figure = "overall"
    responses = "eval/responses.json"
    scores = "eval/mmmu"
    error = scoring.MMMUError

    def score_file(self, responses: Path) -> dict[str, Any]:
        return scoring.score(scoring.load_predictions(Path(responses)))

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

    def eval_data_problem(self, path: Path | None) -> str:
        return (f"the eval stage needs MMMU validation data: {path or '--eval-data DIR'} is not a directory; pass "
                "--eval-data DIR (a local copy of the MMMU/MMMU dataset, one folder of parquet files per subject), "
                "or --stage train to skip the evaluation")  # fmt: skip


CASE = Llava()
