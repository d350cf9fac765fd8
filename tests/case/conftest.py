"""Shared fixtures of the data tests: a tokenizer trained here on the words the hand-derived tests use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cases.llava1_5_7b.data import SYSTEM_V1
from cases.llava1_5_7b.tokenizer import Tokenizer, train_tokenizer

# Every word of the hand-derived expectations appears often, so each becomes one "▁word" piece; the
# "</s>USER" and "<image>look" forms teach the pieces "USER" and "look" without the dummy prefix.
CORPUS = [
    SYSTEM_V1 + " USER: <image>look at this ASSISTANT: red ball</s>USER: what colour ASSISTANT: blue</s>",
    SYSTEM_V1 + " USER: hello world ASSISTANT: green box</s>USER: look at this ASSISTANT: red</s>",
    "a red ball and a blue box near the green ball, 12 or 34 or 56 or 78 or 90",
] * 60


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(CORPUS, tmp_path_factory.mktemp("tok"), 1000, model_max_length=64)


@pytest.fixture(scope="session")
def tok(tok_dir: Path) -> Tokenizer:
    """The trained tokenizer with legacy=True (the transformers default without a flag)."""
    t = Tokenizer.from_dir(tok_dir)
    t.legacy = True
    return t


@pytest.fixture(scope="session")
def tok_nl(tok_dir: Path) -> Tokenizer:
    """The same model with legacy=False (as Vicuna v1.5's tokenizer_config.json says)."""
    t = Tokenizer.from_dir(tok_dir)
    assert t.legacy is False
    return t


def P(t: Tokenizer, *pieces: str) -> list[int]:
    """Ids of pieces written by hand; fails loudly if the test tokenizer lacks one."""
    ids = [t.piece_to_id(p) for p in pieces]
    missing = [p for p, i in zip(pieces, ids, strict=True) if i == t.unk_id and p != "<unk>"]
    assert not missing, f"test tokenizer has no piece {missing}"
    return ids


SYSTEM_PIECES = (
    "▁A ▁chat ▁between ▁a ▁curious ▁user ▁and ▁an ▁artificial ▁intelligence ▁assistant . ▁The ▁assistant "
    "▁gives ▁helpful , ▁detailed , ▁and ▁polite ▁answers ▁to ▁the ▁user ' s ▁questions ."
).split()


def write_json(path: Path, records: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def H(v: str) -> dict[str, str]:
    """A human turn of a LLaVA record."""
    return {"from": "human", "value": v}


def G(v: str) -> dict[str, str]:
    """A gpt turn of a LLaVA record."""
    return {"from": "gpt", "value": v}
