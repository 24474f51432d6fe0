"""Instruction templates: several phrasings per edit type and for subject samples.

A template is picked deterministically from a seed (the sample key and the
recipe seed), and its id (``"remove/2"``) is recorded on the row, so a trainer
can balance or hold out phrasings.
"""

from __future__ import annotations

import hashlib
from typing import Optional

# named hues for recolor (OpenCV hue scale 0-179) and the RGB we show them as
COLOR_HUES: dict[str, int] = {
    "red": 0, "orange": 12, "yellow": 28, "green": 60, "cyan": 88, "blue": 115, "purple": 140, "pink": 165,
}

TEMPLATES: dict[str, list[str]] = {
    "subject": [
        "Generate an image of this {phrase}: {caption}",
        "Place the {phrase} from the reference into a scene: {caption}",
        "Using the {phrase} shown in the reference image, create: {caption}",
        "Show this exact {phrase} in the following picture: {caption}",
        "Keep the {phrase} identical to the reference and render: {caption}",
    ],
    "remove": [
        "Remove the {phrase}.",
        "Delete the {phrase} from the image.",
        "Take the {phrase} out of the picture.",
        "Erase the {phrase}.",
        "Get rid of the {phrase}.",
    ],
    "add": [
        "Add a {phrase} {where}.",
        "Put a {phrase} {where}.",
        "Insert a {phrase} {where}.",
        "Place a {phrase} {where} of the image.",
    ],
    "recolor": [
        "Make the {phrase} {color}.",
        "Change the colour of the {phrase} to {color}.",
        "Turn the {phrase} {color}.",
        "Recolor the {phrase} {color}.",
        "Paint the {phrase} {color}.",
    ],
    "move": [
        "Move the {phrase} {direction}.",
        "Shift the {phrase} {direction}.",
        "Slide the {phrase} a little {direction}.",
        "Reposition the {phrase} {direction}.",
    ],
    "resize": [
        "Make the {phrase} {bigger_smaller}.",
        "Resize the {phrase} to be {bigger_smaller}.",
        "Scale the {phrase} so it is {bigger_smaller}.",
        "The {phrase} should be {bigger_smaller}.",
    ],
    "background": [
        "Change the background behind the {phrase}.",
        "Put the {phrase} in front of a different background.",
        "Replace the background, keep the {phrase}.",
        "Swap the scenery around the {phrase}.",
    ],
    "replace": [
        "Replace the {phrase} with a {other}.",
        "Swap the {phrase} for a {other}.",
        "Turn the {phrase} into a {other}.",
        "Put a {other} where the {phrase} is.",
    ],
}


def choose(seed_text: str, n: int, salt: str = "") -> int:
    """A deterministic index in range(n) from text (stable across processes and runs)."""
    digest = hashlib.sha256(f"{salt}:{seed_text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % max(1, n)


def render(kind: str, seed_text: str, **slots) -> tuple[str, str]:
    """(template_id, instruction) for ``kind`` with its slots filled."""
    bank = TEMPLATES[kind]
    i = choose(seed_text, len(bank), salt=kind)
    return f"{kind}/{i}", bank[i].format(**slots)


def where_phrase(box_norm) -> str:
    """A spatial phrase for a normalised xyxy box: 'on the left', 'in the top right', 'in the center'."""
    cx = (box_norm[0] + box_norm[2]) / 2
    cy = (box_norm[1] + box_norm[3]) / 2
    h = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else None
    v = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else None
    if h and v:
        return f"in the {v} {h}"
    if h:
        return f"on the {h}"
    if v:
        return f"at the {v}"
    return "in the center"


def direction_phrase(dx: float, dy: float) -> str:
    """'to the left', 'up and to the right' ... for a shift in pixels (y grows downwards)."""
    parts: list[str] = []
    if abs(dy) >= 1 and abs(dy) >= 0.4 * abs(dx):
        parts.append("up" if dy < 0 else "down")
    if abs(dx) >= 1 and abs(dx) >= 0.4 * abs(dy):
        parts.append("to the left" if dx < 0 else "to the right")
    return " and ".join(parts) or "slightly"


def clean_phrase(phrase: Optional[str]) -> str:
    p = " ".join((phrase or "").replace(" ##", "").replace("##", "").split()).strip(" .,")
    return p or "object"
