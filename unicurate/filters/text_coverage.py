"""Text coverage: the share of the image covered by RapidOCR text boxes, optionally the text itself.

RapidOCR's detector takes one image per call (its input size follows the
image), so a batch is spread over a small thread pool: onnxruntime releases
the GIL, and each call already uses several intra-op threads.

The coverage is a share of the stored image: a sliver padded for the models
(:func:`~unicurate.filters.base.fit_for_models`) is measured over its own
pixels only; the padding holds no text boxes and is not in the denominator.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from unicurate.filters._thresholds import above, below, merge
from unicurate.filters.base import BgrInput, Filter, Region, bgr_input
from unicurate.filters.registry import Column, FilterSpec, RejectReason, Threshold, register
from unicurate.sections import Section


class TextCoverageFilterConfig(Section):
    """RapidOCR text detection: share of the image area covered by text boxes."""

    max_coverage: float | None = Field(None, ge=0.0, le=1.0, description="reject images with more text")
    min_coverage: float | None = Field(
        None, ge=0.0, le=1.0, description="reject images with less text (text-rendering data sets)"
    )
    recognize: bool = Field(False, description="also run OCR recognition and store the text in `ocr_text`")
    max_side: int = Field(960, ge=64, le=4096, description="longest image side fed to the text detector")

    @model_validator(mode="after")
    def _bounds(self):
        if self.max_coverage is not None and self.min_coverage is not None and self.min_coverage > self.max_coverage:
            raise ValueError("min_coverage must be <= max_coverage")
        return self


TOO_MUCH_TEXT = RejectReason("too_much_text", "text_coverage above filters.text_coverage.max_coverage")
TOO_LITTLE_TEXT = RejectReason("too_little_text", "text_coverage below filters.text_coverage.min_coverage")


class TextCoverageFilter(Filter):
    spec = register(FilterSpec(
        name="text_coverage", stage="score", order=50, config=TextCoverageFilterConfig,
        build=lambda cfg, models, threads: TextCoverageFilter(models.get("ocr"), cfg.max_coverage, cfg.min_coverage,
                                                              threads=threads),
        # the loaders combine the ocr_* files into one RapidOCR model, "ocr"
        models=lambda cfg: ("ocr_det", "ocr_cls", "ocr_rec") if cfg.recognize else ("ocr_det",),
        model_options=lambda cfg: {"ocr": {"max_side": cfg.max_side}},
        columns=(Column("text_coverage", pa.float32(), "[0, 1], share of the image covered by OCR text boxes"),
                 Column("text_boxes", pa.int32(), "number of OCR text boxes"),
                 Column("ocr_text", pa.string(), "recognised text (filters.text_coverage.recognize)")),
        reasons=(TOO_MUCH_TEXT, TOO_LITTLE_TEXT),
        thresholds=(Threshold("text_coverage", "<=", "max_coverage"), Threshold("text_coverage", ">=", "min_coverage")),
    ))
    input_key = "ocr_input"

    def __init__(self, model, max_coverage: Optional[float] = None, min_coverage: Optional[float] = None,
                 threads: int = 2):
        self.model = model
        self.thresholds = {"max_coverage": max_coverage, "min_coverage": min_coverage}
        self.threads = max(1, threads)
        self._pool: Optional[ThreadPoolExecutor] = None

    prepare = staticmethod(bgr_input)  # RapidOCR reads OpenCV-style BGR arrays (shared with NudeNet)

    def _one(self, prepared: BgrInput) -> tuple[float, int, Optional[str]]:
        boxes, texts = self.model.read(prepared.bgr)
        region = prepared.region
        if prepared.padded:
            boxes, texts = in_region(boxes, texts, region)
        cov = self.model.coverage(boxes, region.height, region.width)
        text = "\n".join(texts) if self.model.recognize else None
        return cov, len(boxes), text

    def score(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, list]:
        images = [row[self.input_key] for row in batch]
        if self.threads > 1 and len(images) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="unicurate-ocr")
            results = list(self._pool.map(self._one, images))
        else:
            results = [self._one(img) for img in images]
        return {"text_coverage": [r[0] for r in results], "text_boxes": [r[1] for r in results],
                "ocr_text": [r[2] for r in results]}

    def decide(self, columns, thresholds=None) -> list[list[str]]:
        t = merge(self.thresholds, thresholds)
        out = []
        for v in columns["text_coverage"]:
            reasons = []
            if above(v, t["max_coverage"]):
                reasons.append(TOO_MUCH_TEXT.code)
            if below(v, t["min_coverage"]):
                reasons.append(TOO_LITTLE_TEXT.code)
            out.append(reasons)
        return out


def in_region(boxes: Sequence[np.ndarray], texts: Sequence[str], region: Region) -> tuple[list[np.ndarray], list[str]]:
    """Text boxes moved into ``region``'s own pixels (a padded input's stored image), keeping those that cover at
    least one of its pixels (and their texts, when recognised); what lies outside is clipped by the coverage."""
    import cv2

    kept_boxes: list[np.ndarray] = []
    kept_texts: list[str] = []
    shift = np.array([region.left, region.top], np.float32)
    mask: Optional[np.ndarray] = None
    for i, box in enumerate(boxes):
        moved = np.asarray(box, np.float32).reshape(-1, 2) - shift
        points = np.round(moved).astype(np.int32)
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        if x1 < 0 or y1 < 0 or x0 >= region.width or y0 >= region.height:
            continue  # wholly in the padding
        if x0 < 0 or y0 < 0 or x1 >= region.width or y1 >= region.height:  # across an edge: rasterise it
            if mask is None:
                mask = np.zeros((region.height, region.width), np.uint8)
            mask[:] = 0
            cv2.fillPoly(mask, [points.reshape(-1, 1, 2)], 1)
            if not mask.any():
                continue
        kept_boxes.append(moved)
        if i < len(texts):
            kept_texts.append(texts[i])
    return kept_boxes, kept_texts
