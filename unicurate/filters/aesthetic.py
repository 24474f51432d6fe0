"""LAION improved aesthetic predictor: an MLP on the normalised CLIP ViT-L/14 image embedding (1-10)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from unicurate.filters._thresholds import below, merge
from unicurate.schema import Reason


class AestheticFilter:
    name = "aesthetic"
    columns = ("aesthetic_score",)
    reasons = (Reason.LOW_AESTHETIC.value,)
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
        return [[Reason.LOW_AESTHETIC.value] if below(v, t["min_score"]) else [] for v in columns["aesthetic_score"]]
