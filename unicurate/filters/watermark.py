"""LAION-5B watermark detector (timm EfficientNet + MLP head): watermark probability in [0, 1]."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from unicurate.filters._thresholds import above, merge
from unicurate.filters.base import model_image
from unicurate.schema import Reason


class WatermarkFilter:
    name = "watermark"
    columns = ("watermark_score",)
    reasons = (Reason.WATERMARK.value,)
    input_key = "watermark_input"

    def __init__(self, model, max_score: Optional[float] = None):
        self.model = model
        self.thresholds = {"max_score": max_score}

    def prepare(self, pil_image):
        """CPU preprocessing: slivers padded, then resize to the detector's square input, ImageNet normalisation."""
        return self.model.image_tensor(model_image(pil_image))

    def score(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, list]:
        probs = self.model.score([row[self.input_key] for row in batch])
        return {"watermark_score": [float(v) for v in probs]}

    def decide(self, columns, thresholds=None) -> list[list[str]]:
        t = merge(self.thresholds, thresholds)
        return [[Reason.WATERMARK.value] if above(v, t["max_score"]) else [] for v in columns["watermark_score"]]
