"""Cheap rule filters on image size, aspect ratio and caption length."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from unicurate.config import FiltersConfig
from unicurate.filters._thresholds import merge as _merge
from unicurate.filters.base import Columns
from unicurate.schema import Reason


def count_words(caption: Optional[str]) -> int:
    return len(caption.split()) if caption else 0


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
    """Rejects captions with fewer than ``min_words`` or more than ``max_words`` words."""

    name = "caption"
    columns = ("caption_words",)

    def __init__(self, min_words: int = 0, max_words: Optional[int] = None):
        self.thresholds = {"min_words": min_words, "max_words": max_words}

    def score(self, batch):
        return {"caption_words": [count_words(row.get("caption")) for row in batch]}

    def decide(self, columns, thresholds=None):
        t = _merge(self.thresholds, thresholds)
        out = []
        for n in columns["caption_words"]:
            reasons = []
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
    filters.append(CaptionFilter(cfg.caption_min_words, cfg.caption_max_words))  # always records caption_words
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
