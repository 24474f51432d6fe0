"""Cheap rule filters on image size, aspect ratio and caption length.

They run on every decoded row, before any model; their options are the flat fields of the recipe's ``filters``
(``min_width``, ``caption_min_words`` ...), so each spec selects from FiltersConfig instead of owning a section.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from unicurate.filters import registry
from unicurate.filters._thresholds import merge as _merge
from unicurate.filters.base import Columns, Filter
from unicurate.filters.registry import FilterSpec, RejectReason, register

if TYPE_CHECKING:
    from unicurate.config import FiltersConfig


def count_words(caption: Optional[str]) -> int:
    return len(caption.split()) if caption else 0


# C0 controls other than tab/newline/carriage return, DEL, and the C1 controls
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
REPLACEMENT = "\ufffd"


def caption_problem(caption: Optional[str]) -> Optional[str]:
    """Why a caption is not clean text (undecodable bytes, control characters), or None."""
    if not caption:
        return None
    problems = []
    bad = caption.count(REPLACEMENT)
    if bad:
        problems.append(f"{bad} undecodable byte sequence(s) (stored as U+FFFD; the input was not valid UTF-8)")
    first = CONTROL_CHARS.search(caption)  # clean captions (nearly all) are scanned once
    if first:
        n = len(CONTROL_CHARS.findall(caption, first.start()))
        problems.append(f"{n} control character(s), the first U+{ord(first.group()):04X} at position {first.start()}")
    return "caption has " + " and ".join(problems) if problems else None


TOO_SMALL = RejectReason("too_small", "below filters.min_width / min_height")
ASPECT_RATIO = RejectReason("aspect_ratio", "above filters.max_aspect_ratio")
CAPTION_TOO_SHORT = RejectReason("caption_too_short", "fewer words than filters.caption_min_words")
CAPTION_TOO_LONG = RejectReason("caption_too_long", "more words than filters.caption_max_words")
INVALID_CAPTION = RejectReason("invalid_caption",
                               "undecodable bytes (stored as U+FFFD) or control characters in the caption")
SIZE_COLUMNS = ("original_width", "original_height")  # what the size and aspect rules read


class SizeFilter(Filter):
    """Rejects images smaller than ``min_width`` x ``min_height`` (original, EXIF-oriented size)."""

    spec = register(FilterSpec(
        name="size", stage="filter", order=10, reasons=(TOO_SMALL,),
        select=lambda f: f if f.min_width or f.min_height else None,
        build=lambda f, models, threads: SizeFilter(f.min_width, f.min_height),
    ))

    def __init__(self, min_width: int = 0, min_height: int = 0):
        self.thresholds = {"min_width": min_width, "min_height": min_height}

    def score(self, batch: Sequence[Mapping[str, Any]]) -> Columns:
        return {c: [row.get(c) for row in batch] for c in SIZE_COLUMNS}

    def decide(self, columns, thresholds=None) -> list[list[str]]:
        t = _merge(self.thresholds, thresholds)
        out = []
        for w, h in zip(columns["original_width"], columns["original_height"]):
            small = w is not None and h is not None and (w < t["min_width"] or h < t["min_height"])
            out.append([TOO_SMALL.code] if small else [])
        return out


class AspectRatioFilter(Filter):
    """Rejects images whose long side / short side exceeds ``max_aspect_ratio``."""

    spec = register(FilterSpec(
        name="aspect_ratio", stage="filter", order=20, reasons=(ASPECT_RATIO,),
        select=lambda f: f if math.isfinite(f.max_aspect_ratio) else None,
        build=lambda f, models, threads: AspectRatioFilter(f.max_aspect_ratio),
    ))

    def __init__(self, max_aspect_ratio: float = math.inf):
        self.thresholds = {"max_aspect_ratio": max_aspect_ratio}

    def score(self, batch):
        return {c: [row.get(c) for row in batch] for c in SIZE_COLUMNS}

    def decide(self, columns, thresholds=None):
        t = _merge(self.thresholds, thresholds)
        out = []
        for w, h in zip(columns["original_width"], columns["original_height"]):
            bad = bool(w and h) and max(w, h) / min(w, h) > t["max_aspect_ratio"]
            out.append([ASPECT_RATIO.code] if bad else [])
        return out


class CaptionFilter(Filter):
    """Rejects captions with fewer than ``min_words`` or more than ``max_words`` words, and (``reject_invalid``)
    captions that are not clean text: undecodable bytes or control characters. Always runs: it records
    ``caption_words``."""

    spec = register(FilterSpec(
        name="caption", stage="filter", order=30, reasons=(CAPTION_TOO_SHORT, CAPTION_TOO_LONG, INVALID_CAPTION),
        select=lambda f: f,
        build=lambda f, models, threads: CaptionFilter(f.caption_min_words, f.caption_max_words,
                                                       f.caption_reject_invalid),
    ))

    def __init__(self, min_words: int = 0, max_words: Optional[int] = None, reject_invalid: bool = True):
        self.thresholds = {"min_words": min_words, "max_words": max_words}
        self.reject_invalid = reject_invalid

    def score(self, batch):
        cols = {"caption_words": [count_words(row.get("caption")) for row in batch]}
        if self.reject_invalid:
            cols["caption_problem"] = [caption_problem(row.get("caption")) for row in batch]
        return cols

    def decide(self, columns, thresholds=None):
        t = _merge(self.thresholds, thresholds)
        out = []
        problems = columns.get("caption_problem") or [None] * len(columns["caption_words"])
        for n, problem in zip(columns["caption_words"], problems):
            reasons = [INVALID_CAPTION.code] if problem else []
            if n < t["min_words"]:
                reasons.append(CAPTION_TOO_SHORT.code)
            if t["max_words"] is not None and n > t["max_words"]:
                reasons.append(CAPTION_TOO_LONG.code)
            out.append(reasons)
        return out


def rule_filters(cfg: FiltersConfig) -> list[Filter]:
    """The rule filters a recipe enables (a filter with neutral thresholds is left out)."""
    return [spec.build(section, {}, 1) for spec, section in registry.active(cfg, "filter")]


def apply(filters: Sequence, batch: Sequence[Mapping[str, Any]]) -> tuple[Columns, list[list[str]]]:
    """Score and decide a batch with several filters: (all columns, reasons per row)."""
    columns: Columns = {}
    reasons: list[list[str]] = [[] for _ in batch]
    for f in filters:
        cols = f.score(batch)
        columns.update(cols)
        for i, rs in enumerate(f.decide(cols)):
            reasons[i].extend(rs)
    return columns, reasons
