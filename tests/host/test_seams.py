"""The host knows no case and no accelerator vendor by name: kit/ holds none of their words.

Each string literal of every kit/ module (docstrings and comments aside: they may explain with an example) is
searched for the first case's own vocabulary (its stages, eval set, model parts, data sources, record counts) and
for vendor words. A hit is a seam broken: the host should have asked the case (kit/case) or the vendor
(kit/vendors) instead. CLI help that shows an example command line may name the case, and nothing else may.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "kit"

CASE_WORDS = [
    "llava", "pretrain", "finetune", "mmmu", "projector", "mm_projector", "vicuna", "llama", "clip", "coco", "gqa",
    "ocr_vqa", "ocr-vqa", "textvqa", "visual genome", "558,128", "558128", "665,298", "665298", "image_tokens",
    "vision_", "llm_", "lm_head",
]  # fmt: skip
VENDOR_WORDS = ["nvidia", "nvml", "cuda", "nccl", "nvlink", "a800", "h100", "h200", "rocm", "ascend", "npu"]
# Modules that are a vendor's own (the seam's other side) may name it.
VENDOR_MODULES = {"kit/vendors/amd.py", "kit/vendors/ascend.py"} | {
    p.relative_to(ROOT).as_posix() for p in (KIT / "vendors" / "nvidia").rglob("*.py")}  # every file of NVIDIA's package


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _help_strings(tree: ast.AST) -> set[int]:
    """Strings passed as help= to a Typer option or argument: CLI examples live there."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg in ("help", "epilog", "rich_help_panel"):
                    for sub in ast.walk(kw.value):
                        if isinstance(sub, ast.Constant):
                            ids.add(id(sub))
    return ids


def literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree) | _help_strings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            out.append((node.lineno, node.value))
    return out


def hits(words: list[str], exempt: set[str] = frozenset()) -> list[str]:
    found = []
    for path in sorted(KIT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in exempt:
            continue
        for line, text in literals(path):
            low = text.lower()
            for w in words:
                if re.search(rf"(?<![a-z0-9]){re.escape(w)}", low):
                    found.append(f"{rel}:{line}: {w!r} in {text[:70]!r}")
                    break
    return found


def test_the_host_names_no_case_concept():
    found = hits(CASE_WORDS)
    assert not found, f"{len(found)} literal(s) in kit/ name the case's concepts:\n" + "\n".join(found)


def test_the_host_names_no_vendor():
    found = hits(VENDOR_WORDS, VENDOR_MODULES)
    assert not found, f"{len(found)} literal(s) in kit/ name a vendor:\n" + "\n".join(found)
