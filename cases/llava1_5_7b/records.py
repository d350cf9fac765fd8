"""The record validator shared by the case (`LlavaDataset`) and the host (`kit check-host --deep`).

Standard library only: the host side imports it without torch, numpy or Pillow.
"""

from __future__ import annotations

from typing import Any

IMAGE_TOKEN = "<image>"


def record_problem(rec: Any, template: str) -> str | None:
    """Why a record cannot be used (schema, turn order, `<image>` placement), or None when it is fine."""
    if not isinstance(rec, dict):
        return f"a record must be a JSON object, got {type(rec).__name__}"
    if not isinstance(rec.get("id"), (str, int)) or isinstance(rec.get("id"), bool):
        return "missing or invalid 'id' (a string)"
    image = rec.get("image")
    if "image" in rec and (not isinstance(image, str) or not image):
        return f"'image' must be a non-empty relative path, got {image!r}"
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        return "missing 'conversations' (a non-empty list of {from, value} turns)"
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in ("human", "gpt"):
            return f"turn {j} must be {{'from': 'human'|'gpt', 'value': string}}, got {str(turn)[:80]}"
        if not turn["value"].strip():
            return f"turn {j} ({turn['from']}) has an empty value"
        want = "human" if j % 2 == 0 else "gpt"
        if turn["from"] != want:
            return (
                f"turns must alternate human, gpt, ... starting with human; turn {j} is {turn['from']}"
                + (" (LLaVA would silently drop a leading gpt turn)" if j == 0 else "")
            )
        if turn["from"] == "gpt" and IMAGE_TOKEN in turn["value"]:
            return f"turn {j} (gpt) contains {IMAGE_TOKEN}; only human turns may hold the image"
    if len(conv) % 2:
        return f"{len(conv)} turns: the last human turn has no gpt answer"
    placeholders = sum(t["value"].count(IMAGE_TOKEN) for t in conv)
    if "image" in rec and placeholders != 1:
        return f"an image record needs exactly one {IMAGE_TOKEN} placeholder, found {placeholders}"
    if "image" not in rec and placeholders:
        return f"a text-only record (no 'image') contains {IMAGE_TOKEN}"
    if template == "plain" and ("image" not in rec or len(conv) != 2):
        return "the plain template needs an image and exactly one human and one gpt turn"
    return None
