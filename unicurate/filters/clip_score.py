"""CLIP score: cosine similarity of the image and caption embeddings (open_clip).

Two modes: an absolute threshold (``min_score``; LAION-5B kept ViT-B/32
cosine >= 0.28) or keep-top-fraction over the whole run, DataComp style
(``keep_top_fraction``): the pipeline computes the run-wide quantile and passes
it to :meth:`ClipScoreFilter.decide` as ``min_score``.

The normalised image embedding is returned as the ``clip_embedding`` column so
the heads that read it (aesthetic, CLIP NSFW) run without a second CLIP pass.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from unicurate.filters._thresholds import below, merge
from unicurate.filters.base import model_image
from unicurate.schema import Reason


class ClipScoreFilter:
    name = "clip_score"
    columns = ("clip_score",)
    reasons = (Reason.LOW_CLIP_SCORE.value,)
    input_key = "clip_input"

    def __init__(self, model, min_score: Optional[float] = None, keep_top_fraction: Optional[float] = None,
                 with_text: bool = True):
        self.model = model
        self.with_text = with_text
        self.keep_top_fraction = keep_top_fraction
        self.thresholds = {"min_score": min_score}

    def prepare(self, pil_image):
        """CPU preprocessing (slivers padded, then open_clip's resize, crop, normalise) of one decoded RGB image."""
        return self.model.image_tensor(model_image(pil_image))

    def score(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, list]:
        """One batched image forward and one batched text forward for the whole batch."""
        emb = self.model.encode_images([row[self.input_key] for row in batch])
        cols: dict[str, list] = {"clip_embedding": list(emb)}
        if self.with_text:
            txt = self.model.encode_texts([row.get("caption") or "" for row in batch])
            cols["clip_score"] = [float(v) for v in np.sum(emb * txt, axis=1)]
        return cols

    def decide(self, columns, thresholds=None) -> list[list[str]]:
        t = merge(self.thresholds, thresholds)
        return [[Reason.LOW_CLIP_SCORE.value] if below(v, t["min_score"]) else [] for v in columns["clip_score"]]
