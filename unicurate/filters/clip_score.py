"""CLIP score: cosine similarity of the image and caption embeddings (open_clip).

Two modes: an absolute threshold (``min_score``; LAION-5B kept ViT-B/32
cosine >= 0.28) or keep-top-fraction over the whole run, DataComp style
(``keep_top_fraction``): the pipeline computes the run-wide quantile and passes
it to :meth:`ClipScoreFilter.decide` as ``min_score``.

The normalised image embedding is returned as the ``clip_embedding`` column so
the heads that read it (aesthetic, CLIP NSFW) run without a second CLIP pass;
a recipe with such a head but no ``clip_score`` section runs CLIP for the
embedding only. The caption's embedding is ``clip_text_embedding``; both are
kept in the units when the recipe writes embeddings or runs semantic dedup.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from unicurate.filters._thresholds import below, merge
from unicurate.filters.base import Filter, model_image
from unicurate.filters.registry import Column, FilterSpec, RejectReason, Threshold, register
from unicurate.sections import Section


class ClipScoreFilterConfig(Section):
    """CLIP image-caption cosine similarity (open_clip). Set one threshold mode, or none to only record."""

    min_score: float | None = Field(
        None, ge=-1.0, le=1.0,
        description="absolute threshold on the cosine (LAION-5B kept ViT-B/32 >= 0.28)",
    )
    keep_top_fraction: float | None = Field(
        None, gt=0.0, le=1.0,
        description="keep this top fraction of the run by clip_score, DataComp style (global quantile)",
    )

    @model_validator(mode="after")
    def _one_mode(self):
        if self.min_score is not None and self.keep_top_fraction is not None:
            raise ValueError("set either min_score (absolute) or keep_top_fraction (DataComp), not both")
        return self


LOW_CLIP_SCORE = RejectReason("low_clip_score",
                              "image-caption CLIP cosine below the threshold / outside the top fraction")


def _build(cfg: Optional[ClipScoreFilterConfig], models: Mapping[str, Any], threads: int) -> ClipScoreFilter:
    if cfg is None:  # not in the recipe: CLIP runs for the image embedding the heads read
        return ClipScoreFilter(models.get("clip"), with_text=False)
    return ClipScoreFilter(models.get("clip"), cfg.min_score, cfg.keep_top_fraction)


class ClipScoreFilter(Filter):
    spec = register(FilterSpec(
        name="clip_score", stage="score", order=10, config=ClipScoreFilterConfig, build=_build,
        models=lambda cfg: ("clip",),
        columns=(Column("clip_score", pa.float32(), "cosine(image, caption) of the recipe's CLIP model"),),
        reasons=(LOW_CLIP_SCORE,),
        thresholds=(Threshold("clip_score", ">=", "min_score", replaces=("keep_top_fraction",)),),
        provides=("clip_embedding", "clip_text_embedding"),
    ))
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
            cols["clip_text_embedding"] = list(txt)
        return cols

    def decide(self, columns, thresholds=None) -> list[list[str]]:
        t = merge(self.thresholds, thresholds)
        return [[LOW_CLIP_SCORE.code] if below(v, t["min_score"]) else [] for v in columns["clip_score"]]
