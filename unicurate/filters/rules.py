"""Cheap rule filters on image size, aspect ratio and caption length."""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional, Sequence

from unicurate.config import FiltersConfig
from unicurate.filters._thresholds import merge as _merge
from unicurate.filters.base import Columns
from unicurate.schema import Reason


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


class SizeFilter:
    """Rejects images smaller than ``min_width`` x ``min_height`` (original, EXIF-oriented size)."""

    name = "size"
    columns = ("original_width", "original_height")

    def __init__(self, min_width: int = 0, min_height: int = 0):
        self.thresholds = {"min_width": min_width, "min_height": min_height}

    def score(self, batch: Sequence[Mapping[str, Any]]) -> Columns:
        return {c: [row.get(c) for row in batch] for c in self.columns}

    def decide(self, columns, thresholds=None) -> list[list[str]]:
        t = _merge(self.thresholds, thresholds)
        out = []
        for w, h in zip(columns["original_width"], columns["original_height"]):
            small = w is not None and h is not None and (w < t["min_width"] or h < t["min_height"])
            out.append([Reason.TOO_SMALL.value] if small else [])
        return out


class AspectRatioFilter:
    """Rejects images whose long side / short side exceeds ``max_aspect_ratio``."""

    name = "aspect_ratio"
    columns = ("original_width", "original_height")

    def __init__(self, max_aspect_ratio: float = math.inf):
        self.thresholds = {"max_aspect_ratio": max_aspect_ratio}

    def score(self, batch):
        return {c: [row.get(c) for row in batch] for c in self.columns}

    def decide(self, columns, thresholds=None):
        t = _merge(self.thresholds, thresholds)
        out = []
        for w, h in zip(columns["original_width"], columns["original_height"]):
            bad = bool(w and h) and max(w, h) / min(w, h) > t["max_aspect_ratio"]
            out.append([Reason.ASPECT_RATIO.value] if bad else [])
        return out


class CaptionFilter:
    """Rejects captions with fewer than ``min_words`` or more than ``max_words`` words, and (``reject_invalid``)
    captions that are not clean text: undecodable bytes or control characters."""

    name = "caption"
    columns = ("caption_words",)

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
            reasons = [Reason.INVALID_CAPTION.value] if problem else []
            if n < t["min_words"]:
                reasons.append(Reason.CAPTION_TOO_SHORT.value)
            if t["max_words"] is not None and n > t["max_words"]:
                reasons.append(Reason.CAPTION_TOO_LONG.value)
            out.append(reasons)
        return out


def rule_filters(cfg: FiltersConfig) -> list:
    """The rule filters a recipe enables (a filter with neutral thresholds is left out)."""
    filters: list = []
    if cfg.min_width or cfg.min_height:
        filters.append(SizeFilter(cfg.min_width, cfg.min_height))
    if math.isfinite(cfg.max_aspect_ratio):
        filters.append(AspectRatioFilter(cfg.max_aspect_ratio))
    filters.append(CaptionFilter(cfg.caption_min_words, cfg.caption_max_words,  # always records caption_words
                                 cfg.caption_reject_invalid))
    return filters


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
