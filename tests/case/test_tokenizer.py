"""The LLaMA slow-tokenizer rules: special strings, dummy prefix (legacy or not), training, loading."""

from __future__ import annotations

import json

from cases.llava1_5_7b.tokenizer import Tokenizer, train_tokenizer

from .conftest import CORPUS, P


def test_trained_model_is_llama_style(tok: Tokenizer, tok_dir) -> None:
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tok.sp.pad_id() == -1  # no pad piece: the reference pads with unk
    assert tok.vocab_size == tok.sp.get_piece_size()
    # Newline and unseen characters fall back to bytes, as in LLaMA.
    assert tok.encode("\n", bos=False)[-1] == tok.piece_to_id("<0x0A>")
    assert tok.encode("ß", bos=False)[-2:] == P(tok, "<0xC3>", "<0x9F>")
    assert tok.encode("12", bos=False)[-2:] == P(tok, "1", "2")  # split_digits
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert cfg["legacy"] is False and cfg["model_max_length"] == 64


def test_training_is_deterministic(tmp_path, tok_dir) -> None:
    again = train_tokenizer(CORPUS, tmp_path / "again", 1000, model_max_length=64)
    assert (again / "tokenizer.model").read_bytes() == (tok_dir / "tokenizer.model").read_bytes()


def test_special_strings_become_ids(tok: Tokenizer) -> None:
    assert tok.encode("red</s>") == [1, *P(tok, "▁red"), 2]
    assert tok.encode("red<s><unk>", bos=False) == [*P(tok, "▁red"), 1, 0]
    assert tok.encode("") == [1]
    assert tok.encode("", bos=False) == []


def test_first_piece_gets_dummy_prefix_in_both_modes(tok: Tokenizer, tok_nl: Tokenizer) -> None:
    for t in (tok, tok_nl):
        assert t.encode("red ball") == [1, *P(t, "▁red", "▁ball")]


def test_prefix_after_special_legacy_vs_not(tok: Tokenizer, tok_nl: Tokenizer) -> None:
    # legacy=True: the piece after </s> gets "▁" (transformers' default); legacy=False: it does not.
    assert tok.encode("red</s>USER") == [1, *P(tok, "▁red"), 2, *P(tok, "▁USER")]
    assert tok_nl.encode("red</s>USER") == [1, *P(tok_nl, "▁red"), 2, *P(tok_nl, "USER")]
    # A piece that starts with a space: legacy adds the dummy "▁" before it, non-legacy does not.
    assert tok.encode("red</s> USER") == [1, *P(tok, "▁red"), 2, *P(tok, "▁", "▁USER")]
    assert tok_nl.encode("red</s> USER") == [1, *P(tok_nl, "▁red"), 2, *P(tok_nl, "▁USER")]
    # Text that starts with a special token: legacy prefixes what follows, non-legacy does not.
    assert tok.encode("</s>USER") == [1, 2, *P(tok, "▁USER")]
    assert tok_nl.encode("</s>USER") == [1, 2, *P(tok_nl, "USER")]


def test_from_dir_reads_legacy_flag_and_max_length(tmp_path, tok_dir) -> None:
    (tmp_path / "tokenizer.model").write_bytes((tok_dir / "tokenizer.model").read_bytes())
    t = Tokenizer.from_dir(tmp_path)  # no tokenizer_config.json: transformers' legacy default
    assert t.legacy is True and t.model_max_length == 2048
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"legacy": False, "model_max_length": 4096}))
    t = Tokenizer.from_dir(tmp_path)
    assert t.legacy is False and t.model_max_length == 4096


def test_from_dir_names_missing_model(tmp_path) -> None:
    import pytest

    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        Tokenizer.from_dir(tmp_path)
