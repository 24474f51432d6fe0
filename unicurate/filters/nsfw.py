"""NSFW score in [0, 1], two backends.

* ``nudenet``: NudeNet's ONNX detector (ships in the ``nudenet`` package, runs
  offline), batched through onnxruntime; the score is the highest confidence
  of an exposed-body-part detection (0 when there is none);
* ``clip_head``: LAION's CLIP-based NSFW classifier on the normalised CLIP
  image embedding the clip stage already computed.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from unicurate.filters._thresholds import above, merge
from unicurate.filters.base import bgr_array
from unicurate.schema import Reason


class NsfwFilter:
    name = "nsfw"
    columns = ("nsfw_score",)
    reasons = (Reason.NSFW.value,)

    def __init__(self, model, backend: str = "nudenet", max_score: Optional[float] = None):
        if backend not in ("nudenet", "clip_head"):
            raise ValueError(f"unknown nsfw backend {backend!r}; backends: nudenet, clip_head")
        self.model = model
        self.backend = backend
        self.thresholds = {"max_score": max_score}
        self.needs = ("clip_embedding",) if backend == "clip_head" else ()
        self.input_key = "nsfw_input" if backend == "nudenet" else None

    prepare = staticmethod(bgr_array)  # NudeNet reads OpenCV-style BGR arrays

    def score(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, list]:
        if not batch:
            return {"nsfw_score": []}
        if self.backend == "nudenet":
            detections = self.model.detect([row[self.input_key] for row in batch])
            return {"nsfw_score": [self.model.nsfw_score(d) for d in detections]}
        emb = np.stack([np.asarray(row["clip_embedding"], np.float32) for row in batch])
        return {"nsfw_score": [float(v) for v in self.model.score(emb)]}

    def decide(self, columns, thresholds=None) -> list[list[str]]:
        t = merge(self.thresholds, thresholds)
        return [[Reason.NSFW.value] if above(v, t["max_score"]) else [] for v in columns["nsfw_score"]]
