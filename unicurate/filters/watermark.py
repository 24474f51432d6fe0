"""LAION-5B watermark detector (timm EfficientNet + MLP head): watermark probability in [0, 1]."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import pyarrow as pa
from pydantic import Field

from unicurate.filters._thresholds import above, merge
from unicurate.filters.base import Filter, model_image
from unicurate.filters.registry import Column, FilterSpec, RejectReason, Threshold, register
from unicurate.sections import Section


class WatermarkFilterConfig(Section):
    """LAION-5B watermark detector (timm EfficientNet), probability in [0, 1]."""

    max_score: float | None = Field(None, ge=0.0, le=1.0, description="reject rows above this watermark_score")


WATERMARK = RejectReason("watermark", "watermark_score above filters.watermark.max_score")


class WatermarkFilter(Filter):
    spec = register(FilterSpec(
        name="watermark", stage="score", order=40, config=WatermarkFilterConfig,
        build=lambda cfg, models, threads: WatermarkFilter(models.get("watermark"), cfg.max_score),
        models=lambda cfg: ("watermark",),
        columns=(Column("watermark_score", pa.float32(), "[0, 1], LAION-5B watermark detector"),),
        reasons=(WATERMARK,),
        thresholds=(Threshold("watermark_score", "<=", "max_score"),),
    ))
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
        return [[WATERMARK.code] if above(v, t["max_score"]) else [] for v in columns["watermark_score"]]
