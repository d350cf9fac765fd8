"""The LLaMA slow (SentencePiece) tokenizer's semantics, built directly on `sentencepiece`.

The reference tokenizes with transformers' slow `LlamaTokenizer` (4.37.2). Its behaviour around special
tokens and the SentencePiece "dummy prefix" changed across transformers releases, so the kit reproduces
the 4.37.2 rules here instead of depending on whichever transformers the image carries:

- the strings `<s>`, `</s>`, `<unk>` inside text become their ids (they split the text into pieces);
- each text piece is SentencePiece-encoded on its own;
- the piece at the very start of the text gets the dummy prefix ("▁"); a piece right after a special
  token gets it only with `legacy=True` (transformers' default when `tokenizer_config.json` has no flag).
  With `legacy=False` such a piece is encoded by a processor whose `add_dummy_prefix` is off, and a piece
  that begins with a space is encoded behind `<unk>` which is then cut off (transformers' trick).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

SPIECE_UNDERLINE = "\u2581"
SPECIAL_TOKENS = ("<s>", "</s>", "<unk>")
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


class Tokenizer:
    """LLaMA slow-tokenizer semantics over a SentencePiece model (pad = unk = 0, as the reference sets)."""

    def __init__(self, model_proto: bytes, *, legacy: bool = True, model_max_length: int = 2048) -> None:
        self.legacy = legacy
        self.model_max_length = model_max_length
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        proto = _model_proto_class()()
        proto.ParseFromString(model_proto)
        proto.normalizer_spec.add_dummy_prefix = False
        # Encodes text that continues a piece (or follows a special token when legacy=False).
        self.sp_noprefix = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.vocab_size: int = self.sp.get_piece_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.unk_id: int = self.sp.unk_id()
        self.pad_id: int = self.unk_id
        self.special_ids = {"<s>": self.bos_id, "</s>": self.eos_id, "<unk>": self.unk_id}
        self._unk_len = len(self.sp_noprefix.encode("<unk>"))

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load `tokenizer.model` and the `legacy` / `model_max_length` of `tokenizer_config.json`."""
        d = Path(path)
        model = d / "tokenizer.model"
        if not model.is_file():
            raise FileNotFoundError(f"{model}: no SentencePiece model; point the kit at a LLaMA tokenizer directory")
        config: dict = {}
        cfg_path = d / "tokenizer_config.json"
        if cfg_path.is_file():
            config = json.loads(cfg_path.read_text())
        legacy = config.get("legacy")
        max_len = config.get("model_max_length", 2048)
        # HF stores "infinite" as a huge float; the reference overrides it with 2048 anyway.
        if not isinstance(max_len, int) or max_len > 10**9:
            max_len = 2048
        return cls(model.read_bytes(), legacy=True if legacy is None else bool(legacy), model_max_length=max_len)

    def encode_piece(self, text: str, prefix: bool) -> list[int]:
        """Encode special-free text; `prefix` says whether SentencePiece adds its dummy "▁"."""
        if not text:
            return []
        if prefix:
            return self.sp.encode(text)
        if text.startswith((" ", SPIECE_UNDERLINE)):
            return self.sp_noprefix.encode("<unk>" + text)[self._unk_len :]
        return self.sp_noprefix.encode(text)

    def encode_continuation(self, text: str, state: str) -> tuple[list[int], str]:
        """Encode `text` that follows `state` ("start", "special" or "mid") in one string.

        Returns the ids and the state after it, so a string cut into segments can be encoded segment by
        segment with the same prefix rules as the whole string.
        """
        ids: list[int] = []
        for part in _SPECIAL_RE.split(text):
            if not part:
                continue
            if part in self.special_ids:
                ids.append(self.special_ids[part])
                state = "special"
                continue
            if not self.legacy:
                part = part.replace(SPIECE_UNDERLINE, " ")
            if state == "start":
                ids += self.encode_piece(part, prefix=True)
            elif state == "special":
                ids += self.encode_piece(part, prefix=self.legacy)
            else:
                ids += self.encode_piece(part, prefix=False)
            state = "mid"
        return ids, state

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Whole-string tokenization as `tokenizer(text).input_ids` of the reference."""
        ids, _ = self.encode_continuation(text, "start")
        return [self.bos_id, *ids] if bos else ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i for i in ids if i >= 0])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)


def _model_proto_class() -> type:
    """sentencepiece's ModelProto class, also when another copy of its .proto is already registered."""
    try:
        from sentencepiece import sentencepiece_model_pb2

        return sentencepiece_model_pb2.ModelProto
    except TypeError:  # e.g. transformers' sentencepiece_model_pb2_new was imported first
        from google.protobuf import descriptor_pool, message_factory

        desc = descriptor_pool.Default().FindMessageTypeByName("sentencepiece.ModelProto")
        return message_factory.GetMessageClass(desc)


def train_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike[str], vocab_size: int, *, model_max_length: int = 2048
) -> Path:
    """Train a small LLaMA-style BPE model (byte fallback, <unk>/<s>/</s> = 0/1/2) into `out_dir`.

    Deterministic (one thread, no input shuffling) and quick; `hard_vocab_limit` is off so a small corpus
    yields a smaller vocabulary instead of an error. Newlines are left to byte fallback, as in LLaMA.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentences = [line for t in texts for line in t.split("\n") if line.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        max_sentence_length=1 << 16,
        minloglevel=2,
    )
    _write_atomic(out / "tokenizer.model", buf.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": False,
        "model_max_length": model_max_length,
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "padding_side": "right",
    }
    _write_atomic(out / "tokenizer_config.json", (json.dumps(config, indent=2) + "\n").encode())
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
