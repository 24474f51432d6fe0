"""LAION improved aesthetic predictor: an MLP on the normalised CLIP ViT-L/14 image embedding (1-10)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field

from unicurate.filters._thresholds import below, merge
from unicurate.filters.base import Filter
from unicurate.filters.registry import Column, FilterSpec, RejectReason, Threshold, register
from unicurate.sections import Section


class AestheticFilterConfig(Section):
    """LAION improved aesthetic predictor on the CLIP image embedding (1-10 scale)."""

    min_score: float | None = Field(None, description="LAION-Aesthetics used 5, 6 and 6.5")


LOW_AESTHETIC = RejectReason("low_aesthetic", "LAION aesthetic score below filters.aesthetic.min_score")


class AestheticFilter(Filter):
    spec = register(FilterSpec(
        name="aesthetic", stage="score", order=20, config=AestheticFilterConfig,
        build=lambda cfg, models, threads: AestheticFilter(models.get("aesthetic"), cfg.min_score),
        models=lambda cfg: ("aesthetic",),  # and CLIP, through the clip_embedding it needs
        columns=(Column("aesthetic_score", pa.float32(), "LAION improved aesthetic predictor, ~1-10"),),
        reasons=(LOW_AESTHETIC,),
        thresholds=(Threshold("aesthetic_score", ">=", "min_score"),),
    ))
    needs = ("clip_embedding",)

    def __init__(self, model, min_score: Optional[float] = None):
        self.model = model
        self.thresholds = {"min_score": min_score}

    def score(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, list]:
        if not batch:
            return {"aesthetic_score": []}
        emb = np.stack([np.asarray(row["clip_embedding"], np.float32) for row in batch])
        return {"aesthetic_score": [float(v) for v in self.model.score(emb)]}

    def decide(self, columns, thresholds=None) -> list[list[str]]:
        t = merge(self.thresholds, thresholds)
        return [[LOW_AESTHETIC.code] if below(v, t["min_score"]) else [] for v in columns["aesthetic_score"]]
