"""NSFW score in [0, 1], two backends.

* ``nudenet``: NudeNet's ONNX detector (ships in the ``nudenet`` package, runs
  offline), batched through onnxruntime; the score is the highest confidence
  of an exposed-body-part detection on the image (0 when there is none; a
  sliver is padded before detection, see :func:`~unicurate.filters.base.fit_for_models`,
  and detections that lie wholly in the padding do not count);
* ``clip_head``: LAION's CLIP-based NSFW classifier on the normalised CLIP
  image embedding the clip stage already computed.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field

from unicurate.filters._thresholds import above, merge
from unicurate.filters.base import BgrInput, Filter, bgr_input
from unicurate.filters.registry import Column, FilterSpec, RejectReason, Threshold, register
from unicurate.sections import Section


class NsfwFilterConfig(Section):
    """NSFW probability in [0, 1]."""

    backend: Literal["nudenet", "clip_head"] = Field(
        "nudenet", description="nudenet = NudeNet ONNX detector (ships in its package); "
                               "clip_head = LAION CLIP-based NSFW head on the CLIP image embedding",
    )
    max_score: float | None = Field(None, ge=0.0, le=1.0, description="reject rows above this nsfw_score")


NSFW = RejectReason("nsfw", "nsfw_score above filters.nsfw.max_score")
MODEL = {"nudenet": "nudenet", "clip_head": "nsfw_clip_head"}  # backend -> zoo model


class NsfwFilter(Filter):
    spec = register(FilterSpec(
        name="nsfw", stage="score", order=30, config=NsfwFilterConfig,
        build=lambda cfg, models, threads: NsfwFilter(models.get(MODEL[cfg.backend]), cfg.backend, cfg.max_score),
        models=lambda cfg: (MODEL[cfg.backend],),
        columns=(Column("nsfw_score", pa.float32(), "[0, 1]"),),
        reasons=(NSFW,),
        thresholds=(Threshold("nsfw_score", "<=", "max_score"),),
    ))

    def __init__(self, model, backend: str = "nudenet", max_score: Optional[float] = None):
        if backend not in MODEL:
            raise ValueError(f"unknown nsfw backend {backend!r}; backends: {', '.join(MODEL)}")
        self.model = model
        self.backend = backend
        self.thresholds = {"max_score": max_score}
        self.needs = ("clip_embedding",) if backend == "clip_head" else ()
        self.input_key = "nsfw_input" if backend == "nudenet" else None

    prepare = staticmethod(bgr_input)  # NudeNet reads OpenCV-style BGR arrays (shared with text coverage)

    def score(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, list]:
        if not batch:
            return {"nsfw_score": []}
        if self.backend == "nudenet":
            inputs = [row[self.input_key] for row in batch]
            detections = self.model.detect([x.bgr for x in inputs])
            return {"nsfw_score": [self.model.nsfw_score(on_image(d, x)) for d, x in zip(detections, inputs)]}
        emb = np.stack([np.asarray(row["clip_embedding"], np.float32) for row in batch])
        return {"nsfw_score": [float(v) for v in self.model.score(emb)]}

    def decide(self, columns, thresholds=None) -> list[list[str]]:
        t = merge(self.thresholds, thresholds)
        return [[NSFW.code] if above(v, t["max_score"]) else [] for v in columns["nsfw_score"]]


def on_image(detections: list[dict], prepared: BgrInput) -> list[dict]:
    """The detections (NudeNet's ``box``: x, y, w, h in the input's pixels) that overlap the stored image's
    region of a padded input: none that lies wholly in the padding. An unpadded input keeps all of them."""
    if not prepared.padded:
        return detections
    region = prepared.region
    x0, y0, x1, y1 = region.left, region.top, region.left + region.width, region.top + region.height
    return [d for d in detections if d["box"][0] < x1 and d["box"][0] + max(d["box"][2], 1) > x0
            and d["box"][1] < y1 and d["box"][1] + max(d["box"][3], 1) > y0]
