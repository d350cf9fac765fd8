"""The record validator shared by the case (`LlavaDataset`) and the host (`kit check-host --deep`, `kit data verify`).

Standard library only: the host side imports it without torch, numpy or Pillow.

Every problem has a category (CATEGORIES), so a verifier can count a real file's unusable records by kind, and
what the reference pipeline would do with each kind is written once, here (docs/fidelity.md).
"""

from __future__ import annotations

import posixpath
from typing import Any

IMAGE_TOKEN = "<image>"
ESCAPES = "image path escapes the data root"

# category -> (what it is, what the reference pipeline (haotian-liu/LLaVA v1.2 train.py) does with such a record);
# docs/fidelity.md has the full account, record by record.
CATEGORIES: dict[str, tuple[str, str]] = {
    "schema": ("not a {id, conversations} object, or a bad 'image' (not a path inside the image folder) or turn",
               "fails at start or mid-run (KeyError, TypeError); a record without 'id' it trains"),
    "empty-turn": ("an empty or whitespace-only turn",
                   "mostly masks the whole sample (its round walk comes up short); a whitespace-only value it trains"),
    "gpt-first": ("the first turn is gpt", "v1: drops the leading gpt turn silently and trains the rest; plain: fails"),
    "turn-order": ("turns do not alternate human, gpt", "fails its role assertion mid-run"),
    "odd-turns": ("the last human turn has no gpt answer", "masks the whole sample (tokenization mismatch)"),
    "gpt-image": ("a gpt turn holds <image>", "moves the placeholder to the front of that answer and splices the image"),
    "placeholders": ("an image record without exactly one <image>",
                     "0: trains the text without the image (v1), fails (plain); 2: misaligns images or fails"),
    "text-image": ("a text-only record holds <image>", "v1: trains the literal text <image>; plain: splices a zero image"),
    "plain-shape": ("the plain template needs an image and exactly one human and one gpt turn",
                    "fails its assertion (len(source) == 2) mid-run"),
}  # fmt: skip


def image_path_problem(image: str) -> str | None:
    """Why a record's image path must not be opened, or None. An image is a relative path under the stage's image
    folder (inside the data root): an absolute path, or one whose `..` climbs above that folder, could name any file
    of the host (/etc/passwd, /proc/self/environ), which the loaders and `kit data verify` would then open. Decided from
    the text alone, before anything is opened; a symlink the data's owner placed inside the folder is followed as a
    file there."""
    if "\0" in image:
        return f"{ESCAPES}: {image!r} holds a NUL byte"
    if posixpath.isabs(image):
        return f"{ESCAPES}: {image!r} is absolute; an image is a path relative to the stage's image folder"
    norm = posixpath.normpath(image)
    if norm == ".." or norm.startswith("../"):
        return f"{ESCAPES}: {image!r} climbs out of the stage's image folder with '..'"
    return None


def record_issue(rec: Any, template: str) -> tuple[str, str] | None:
    """(category, why) when a record cannot be used (schema, turn order, `<image>` placement), or None when fine."""
    if not isinstance(rec, dict):
        return "schema", f"a record must be a JSON object, got {type(rec).__name__}"
    if not isinstance(rec.get("id"), (str, int)) or isinstance(rec.get("id"), bool):
        return "schema", "missing or invalid 'id' (a string)"
    image = rec.get("image")
    if "image" in rec and (not isinstance(image, str) or not image):
        return "schema", f"'image' must be a non-empty relative path, got {image!r}"
    if isinstance(image, str) and (escape := image_path_problem(image)):
        return "schema", escape
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        return "schema", "missing 'conversations' (a non-empty list of {from, value} turns)"
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in ("human", "gpt"):
            return "schema", f"turn {j} must be {{'from': 'human'|'gpt', 'value': string}}, got {str(turn)[:80]}"
    for j, turn in enumerate(conv):
        if not turn["value"].strip():
            return "empty-turn", f"turn {j} ({turn['from']}) has an empty value"
        want = "human" if j % 2 == 0 else "gpt"
        if turn["from"] != want:
            if j == 0:
                return "gpt-first", "turns must alternate human, gpt, ... starting with human; turn 0 is gpt (LLaVA would silently drop a leading gpt turn)"
            return "turn-order", f"turns must alternate human, gpt, ... starting with human; turn {j} is {turn['from']}"
        if turn["from"] == "gpt" and IMAGE_TOKEN in turn["value"]:
            return "gpt-image", f"turn {j} (gpt) contains {IMAGE_TOKEN}; only human turns may hold the image"
    if len(conv) % 2:
        return "odd-turns", f"{len(conv)} turns: the last human turn has no gpt answer"
    placeholders = sum(t["value"].count(IMAGE_TOKEN) for t in conv)
    if "image" in rec and placeholders != 1:
        return "placeholders", f"an image record needs exactly one {IMAGE_TOKEN} placeholder, found {placeholders}"
    if "image" not in rec and placeholders:
        return "text-image", f"a text-only record (no 'image') contains {IMAGE_TOKEN}"
    if template == "plain" and ("image" not in rec or len(conv) != 2):
        return "plain-shape", "the plain template needs an image and exactly one human and one gpt turn"
    return None


def record_problem(rec: Any, template: str) -> str | None:
    """Why a record cannot be used, or None when it is fine (record_issue without its category)."""
    issue = record_issue(rec, template)
    return None if issue is None else issue[1]
