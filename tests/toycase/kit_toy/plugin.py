"""The toy case as the host sees it: stages, config, formulas, data (none to fetch), scorer, rules and reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kit.case import EVAL, TRAIN, Stage
from kit.case.data import Checkpoint, EvalSet, Need, StageData
from kit_toy import config as schema

ROOT = Path(__file__).resolve().parent


class Metrics:
    REFERENCE_FACTOR = {"fit": 6}
    REFERENCE_RULE = "token/p/s x 16 x 6 / peak"
    EXACT_RULE = "6 FLOPs per weight per sample"
    SHAPE_KEYS = ("width",)
    DATA_STEP_COUNTS: dict[str, str] = {}
    ACCURACY_KEY = "quiz_acc"

    def reference_mfu(self, tps: float | None, stage: str, peak: float | None) -> float | None:
        if stage not in self.REFERENCE_FACTOR:
            raise ValueError(f"no reference MFU for {stage!r}")
        return None if tps is None or not peak else tps * 16 * 6 / peak

    def flops(self, model: dict[str, Any], step: dict[str, Any]) -> dict[str, float]:
        return {"linear": 6.0 * float(model.get("params") or 0) * float(step.get("samples") or 0)}

    def shape(self, cfg: dict[str, Any]) -> dict[str, Any] | None:
        m = cfg.get("model")
        return {k: m.get(k) for k in self.SHAPE_KEYS} if isinstance(m, dict) else None

    def learning_rate(self, base: float, step: int, warmup: int, total: int) -> float:
        return base  # plain SGD at a constant rate


class Data:
    """No data to fetch: the toy draws its points. The stage list says where its (never read) records would be."""

    SOURCES = ROOT / "data-sources.toml"
    CATEGORIES: dict[str, tuple[str, str]] = {}

    def stages(self, cfg: Any | None) -> tuple[StageData, ...]:
        return (StageData("fit", "points.json", ".", "plain", "data.points"),)

    def record_issue(self, rec: Any, template: str) -> tuple[str, str] | None:
        return None if isinstance(rec, dict) else ("schema", "a point is an object")

    def record_problem(self, rec: Any, template: str) -> str | None:
        issue = self.record_issue(rec, template)
        return issue[1] if issue else None

    def record_id(self, rec: Any) -> str | None:
        return str(rec.get("id")) if isinstance(rec, dict) else None

    def image_of(self, rec: Any) -> str | None:
        return None

    def image_path_problem(self, image: str) -> str | None:
        return None

    def source_of(self, stage: StageData, rec: Any) -> str:
        return "points"

    def image_source(self, stage: StageData, image: str) -> str:
        return "points"

    def source_stage(self, source: str) -> str:
        return "fit"

    def record_file(self, cfg: Any, stage: str) -> str:
        return "points.json"

    def record_key(self, stage: str) -> str:
        return "data.points"

    def count_records(self, path: Path) -> int:
        return len(json.loads(Path(path).read_text()))

    def checkpoints(self, cfg: Any | None) -> tuple[Checkpoint, ...]:
        return ()

    def eval_set(self) -> EvalSet | None:
        return None

    def synthetic_weights(self, cfg: Any) -> tuple[int, tuple[str, ...]]:
        seed = cfg["train"]["seed"] if isinstance(cfg, dict) else cfg.train.seed
        return seed, ()

    def results_need(self, cfg: Any, synthetic: bool) -> Need:
        return Need(1 << 20, "a 16-weight model", 1 << 20)

    def disk_need(self, cfg: Any, request: dict[str, Any]) -> tuple[int, int, str] | None:
        return None

    def memory_need(self, cfg: Any) -> Need:
        return Need(1 << 28, "two torch processes")

    def shm_need(self, cfg: Any) -> Need:
        return Need(0, "gloo on one host")


class Quiz:
    """Yes or no per held-out point: accuracy is the share answered right."""

    name = "toy quiz"
    command = "toyquiz"
    about = "The toy case's quiz: score its yes/no answers."
    figure = "overall"
    responses = "quiz/responses.json"
    scores = "quiz/scores"
    outputs = ("summary.json",)
    error = ValueError
    file_help = "quiz/responses.json of a toy run"
    score_help = "Score the toy quiz."

    def score_file(self, responses: Path) -> dict[str, Any]:
        rows = json.loads(Path(responses).read_text())
        if not isinstance(rows, list):
            raise ValueError(f"{responses}: not a list of answers")
        right = sum(1 for r in rows if r.get("response") == r.get("answer"))
        return {"num": len(rows), "correct": right, "overall": right / len(rows) if rows else 0.0}

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        return dict(result)

    def write(self, out: Path, result: dict[str, Any], protect: tuple[Path, ...] = ()) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        p = out / "summary.json"
        p.write_text(json.dumps(self.summary(result)) + "\n")
        return [p]

    def accuracy(self, summary: dict[str, Any]) -> float | None:
        v = summary.get("overall") if isinstance(summary, dict) else None
        return float(v) if isinstance(v, (int, float)) else None

    def table(self, result: dict[str, Any], details: bool = False) -> dict[str, Any]:
        return {"title": "toy quiz", "columns": ["quiz", "questions", "correct", "accuracy"],
                "rows": [{"cells": ["all", str(result["num"]), str(result["correct"]), f"{result['overall']:.2%}"]}]}


class Toy:
    name = "kit_toy"
    title = "toy regression"
    package = "kit_toy"
    root = ROOT
    stages = (Stage("fit", TRAIN, "kit_toy.fit", ("fit/model.pt",)), Stage("quiz", EVAL, "kit_toy.quiz"))
    image_repository = "kit-toy"
    request_aliases: dict[str, str] = {}
    probe_module = "kit_toy.env"
    synthetic_module = None
    prepare_module = None
    config = schema
    metrics = Metrics()
    data = Data()
    scorer = Quiz()

    def stage_args(self, stage: str, request: dict[str, Any]) -> list[str]:
        args = ["--config", str(request["config_file"])]
        if request.get("synthetic"):
            args.append("--synthetic")
        if stage == "quiz":
            return args + (["--limit", str(request["eval_limit"])] if request.get("eval_limit") else [])
        if request.get("max_steps"):
            args += ["--max-steps", str(request["max_steps"])]
        return args + ([] if request.get("save", True) else ["--no-save"])

    def request_problems(self, request: dict[str, Any], cfg: Any) -> list[str]:
        return [] if request.get("synthetic") else ["the toy case runs on its own points only: pass --synthetic"]

    def synthetic_questions(self, cfg: Any) -> int:
        return cfg.quiz.questions

    def synthetic_eval_questions(self, cfg: dict[str, Any]) -> int:
        return int(cfg["quiz"]["questions"])

    def synthetic_args(self, cfg: Any, max_steps: int) -> list[str]:
        return []

    def eval_default(self, data: Path | None) -> Path | None:
        return None

    def eval_model_problem(self, model_dir: Path | None) -> str | None:
        return "the quiz runs after fit in the same run: --stage all"

    def eval_data_problem(self, path: Path | None) -> str:
        return "the toy quiz needs no data"


CASE = Toy()
