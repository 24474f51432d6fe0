"""Checks of edit triplets: re-detection, CLIP image-image similarity, change confined to the mask.

All three are batched over the triplets of a batch and record their values on
every triplet (so a threshold can be changed later); a failing triplet gets one
reason per failed check. Which checks apply to a triplet is declared by its
edit type (``EditTypeSpec.redetect`` and ``.local``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from unicurate.schema import SynReason
from unicurate.synthesis.edit_types import REGISTRY
from unicurate.synthesis.edits import EditResult
from unicurate.synthesis.grounding import box_iou, prompt_for


def change_outside(source: np.ndarray, target: np.ndarray, region: np.ndarray, tolerance: int = 8) -> float:
    """Share of the pixels outside ``region`` whose largest channel difference exceeds ``tolerance``."""
    outside = ~region
    n = int(outside.sum())
    if n == 0:
        return 0.0
    diff = np.abs(source.astype(np.int16) - target.astype(np.int16)).max(axis=-1)
    return float((diff[outside] > tolerance).sum()) / n


def redetect_scores(detector, edits: Sequence[EditResult], phrases: Sequence[str],
                    box_threshold: float, iou: float) -> list[Optional[float]]:
    """For triplets whose type re-detects (remove, add): best score of a detection of the phrase overlapping
    the object's box in the target (0.0 when none); None for other edit types."""
    idx = [i for i, e in enumerate(edits) if REGISTRY[e.edit_type].redetect and e.check_box is not None]
    out: list[Optional[float]] = [None] * len(edits)
    if not idx or detector is None:
        return out
    dets = detector.detect([edits[i].target for i in idx], [phrases[i] for i in idx], box_threshold=box_threshold)
    for i, ds in zip(idx, dets):
        box = edits[i].check_box
        scores = [d.score for d in ds if box_iou(np.asarray(d.box, np.float32), box) >= iou]
        out[i] = float(max(scores)) if scores else 0.0
    return out


def clip_similarities(clip, edits: Sequence[EditResult]) -> list[Optional[float]]:
    """Cosine of CLIP image embeddings of source and target, one batched forward for all triplets."""
    if clip is None or not edits:
        return [None] * len(edits)
    from PIL import Image

    # an image is the source of most of its edits (and remove/add swap theirs): embed each array once
    index: dict[int, int] = {}
    arrays: list[np.ndarray] = []
    for e in edits:
        for a in (e.source, e.target):
            if id(a) not in index:
                index[id(a)] = len(arrays)
                arrays.append(a)
    from unicurate.filters.base import model_image  # extreme shapes padded as for curate's CLIP score

    emb = clip.encode_images([clip.image_tensor(model_image(Image.fromarray(a))) for a in arrays])
    return [float(np.dot(emb[index[id(e.source)]], emb[index[id(e.target)]])) for e in edits]


def reasons_for(edit: EditResult, cfg, box_threshold: float, *, redetect: Optional[float],
                clip_sim: Optional[float], outside: Optional[float]) -> list[str]:
    """The failed checks of one triplet under ``cfg`` (a ChecksConfig)."""
    spec = REGISTRY[edit.edit_type]
    r: list[str] = []
    if cfg.redetect and redetect is not None:
        if spec.redetect == "gone" and redetect >= box_threshold:
            r.append(SynReason.STILL_DETECTED.value)
        if spec.redetect == "present" and redetect < box_threshold:
            r.append(SynReason.NOT_DETECTED.value)
    if clip_sim is not None:
        if cfg.min_clip_similarity is not None and clip_sim < cfg.min_clip_similarity:
            r.append(SynReason.CLIP_TOO_DIFFERENT.value)
        if cfg.max_clip_similarity is not None and clip_sim > cfg.max_clip_similarity:
            r.append(SynReason.CLIP_TOO_SIMILAR.value)
    if outside is not None and spec.local and outside > cfg.max_change_outside:
        r.append(SynReason.CHANGE_OUTSIDE_MASK.value)
    return r


def check_edits(edits: Sequence[EditResult], phrases: Sequence[str], cfg, *, detector=None, clip=None,
                box_threshold: float = 0.35) -> list[dict]:
    """Measure and judge every triplet: [{"redetect_score", "clip_similarity", "change_outside", "reasons"}]."""
    red = redetect_scores(detector if cfg.redetect else None, edits, [prompt_for(p) for p in phrases],
                          box_threshold, cfg.redetect_iou)
    sims = clip_similarities(clip, edits)
    out = []
    for e, rd, cs in zip(edits, red, sims):
        outside = change_outside(e.source, e.target, e.region, cfg.change_tolerance)
        out.append({"redetect_score": rd, "clip_similarity": cs, "change_outside": outside,
                    "reasons": reasons_for(e, cfg, box_threshold, redetect=rd, clip_sim=cs, outside=outside)})
    return out
