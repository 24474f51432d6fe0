"""Instruction templates: how one is chosen and filled, and the phrases several kinds share.

The templates themselves live with what they describe: each edit type's in
its module (``synthesis/edit_types/<type>.py``), the subject samples' in
``synthesis/subject.py``. A template is picked deterministically from a seed
(the sample key and the recipe seed), and its id (``"remove/2"``) is recorded
on the row, so a trainer can balance or hold out phrasings.
"""

from __future__ import annotations

import hashlib
import re
import string
from typing import Optional, Sequence

# named hues for recolor (OpenCV hue scale 0-179) and the RGB we show them as
COLOR_HUES: dict[str, int] = {
    "red": 0, "orange": 12, "yellow": 28, "green": 60, "cyan": 88, "blue": 115, "purple": 140, "pink": 165,
}


def choose(seed_text: str, n: int, salt: str = "") -> int:
    """A deterministic index in range(n) from text (stable across processes and runs)."""
    digest = hashlib.sha256(f"{salt}:{seed_text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % max(1, n)


def render(kind: str, bank: Sequence[str], seed_text: str, **slots) -> tuple[str, str]:
    """(template_id, instruction): a template of ``kind``'s ``bank`` chosen by ``seed_text``, slots filled. Every
    text slot also comes with its indefinite article, ``a_<slot>`` ("a red car", "an apple"): a template writes
    ``{a_phrase}``, never "a {phrase}"."""
    i = choose(seed_text, len(bank), salt=kind)
    return f"{kind}/{i}", bank[i].format(**with_articles(slots))


def with_articles(slots: dict) -> dict:
    """The slots and, for each text slot, ``a_<name>``: the text with its indefinite article."""
    return {**slots, **{f"a_{k}": with_article(v) for k, v in slots.items() if isinstance(v, str)}}


def renderings(bank: Sequence[str], template_id: Optional[str], instruction: str, **known) -> list[str]:
    """``instruction`` and every other template of ``bank`` filled with the same slots (the alternative phrasings).

    The inverse of :func:`render`: the slots are read back by matching ``instruction`` against the template
    ``template_id`` names (``"remove/2"``: ``bank[2]``), with the ``known`` slots (the row's phrase) fixed, so
    one other slot per template is read back exactly. Only ``[instruction]`` when the id names no template of
    the bank or the instruction is not that template's rendering (the bank changed since the run).
    """
    try:
        template = bank[int((template_id or "").rpartition("/")[2])]
    except (IndexError, ValueError):
        return [instruction]
    known = with_articles(known)
    pattern, read = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern.append(re.escape(literal))
        if name in known:
            pattern.append(re.escape(str(known[name])))
        elif name is not None:
            if not name.isidentifier():  # positional or indexed fields are not read back
                return [instruction]
            pattern.append(f"(?P={name})" if name in read else f"(?P<{name}>.*)")
            read.add(name)
    m = re.fullmatch("".join(pattern), instruction, re.DOTALL)
    slots = {**known, **(m.groupdict() if m else {})}
    if m is None or template.format(**slots) != instruction:
        return [instruction]
    out = [instruction]
    for t in bank:
        try:
            text = t.format(**slots)
        except KeyError:  # a template naming a slot the chosen one does not have
            continue
        if text not in out:
            out.append(text)
    return out


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


DETERMINERS = frozenset({"a", "an", "the", "this", "that", "these", "those", "some", "any", "my", "your", "his",
                         "her", "its", "our", "their"})
# words a noun phrase does not end with: what is left of a cut-off caption ("a cat on a", "bread and")
_DANGLING = DETERMINERS | frozenset({"and", "or", "of", "on", "in", "at", "with", "to", "for", "from", "by", "over",
                                     "under", "near", "behind", "next", "is", "are"})
_QUANTITIES = frozenset({"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "many",
                         "few", "some", "multiple", "no"})
_WORD = re.compile(r"[^\W\d_]", re.UNICODE)  # a letter


def normalise_phrase(phrase: Optional[str]) -> Optional[str]:
    """The noun phrase an instruction names, cleaned: wordpiece marks joined, punctuation trimmed from each word,
    leading determiners dropped ("the a red car" -> "red car"), a word seen earlier in the phrase dropped
    ("a line and a triangle" -> "line and triangle"), dangling words at the end dropped ("a cat on a" -> "cat"). None
    when no word with a letter is left (the object is rejected: ``bad_phrase``)."""
    text = (phrase or "").replace(" ##", "").replace("##", "")
    words = [w.strip(".,;:!?\"'()[]{}") for w in text.split()]
    words = [w for w in words if w]
    seen: set[str] = set()  # a word is named once: later repeats (leading determiners included) are dropped
    while words and words[0].lower() in DETERMINERS:
        seen.add(words.pop(0).lower())
    unique = []
    for w in words:
        if w.lower() not in seen:
            seen.add(w.lower())
            unique.append(w)
    while unique and unique[-1].lower() in _DANGLING:
        unique.pop()
    if not any(_WORD.search(w) for w in unique):
        return None
    return " ".join(unique)


def with_article(phrase: str) -> str:
    """The phrase with "a" or "an" ("an apple", "a unicorn"); none before a number or a quantity word."""
    first = phrase.split()[0].lower() if phrase.split() else ""
    if not first or first[0].isdigit() or first in _QUANTITIES:
        return phrase
    vowel_sound = first[0] in "aeiou" and not first.startswith(("uni", "use", "usu", "one", "eu", "ewe")) \
        or first.startswith(("hour", "honest", "heir", "honour", "honor"))
    return f"{'an' if vowel_sound else 'a'} {phrase}"


def clean_phrase(phrase: Optional[str]) -> str:
    """:func:`normalise_phrase`, or "object" for a phrase with nothing left (objects with such a phrase are
    rejected before any instruction names them; this keeps a partner's phrase safe)."""
    return normalise_phrase(phrase) or "object"
