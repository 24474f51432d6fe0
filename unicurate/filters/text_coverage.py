"""Text coverage: the share of the image covered by RapidOCR text boxes, optionally the text itself.

RapidOCR's detector takes one image per call (its input size follows the
image), so a batch is spread over a small thread pool: onnxruntime releases
the GIL, and each call already uses several intra-op threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from unicurate.filters._thresholds import above, below, merge
from unicurate.filters.base import bgr_array
from unicurate.schema import Reason


class TextCoverageFilter:
    name = "text_coverage"
    columns = ("text_coverage", "text_boxes", "ocr_text")
    reasons = (Reason.TOO_MUCH_TEXT.value, Reason.TOO_LITTLE_TEXT.value)
    input_key = "ocr_input"

    def __init__(self, model, max_coverage: Optional[float] = None, min_coverage: Optional[float] = None,
                 threads: int = 2):
        self.model = model
        self.thresholds = {"max_coverage": max_coverage, "min_coverage": min_coverage}
        self.threads = max(1, threads)
        self._pool: Optional[ThreadPoolExecutor] = None

    prepare = staticmethod(bgr_array)  # RapidOCR reads OpenCV-style BGR arrays

    def _one(self, bgr: np.ndarray) -> tuple[float, int, Optional[str]]:
        boxes, texts = self.model.read(bgr)
        cov = self.model.coverage(boxes, bgr.shape[0], bgr.shape[1])
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
                reasons.append(Reason.TOO_MUCH_TEXT.value)
            if below(v, t["min_coverage"]):
                reasons.append(Reason.TOO_LITTLE_TEXT.value)
            out.append(reasons)
        return out
