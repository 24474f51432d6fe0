"""Mask quality checks: each threshold from ``QualityConfig``, each failure with its own reason.

Every metric is computed for every candidate (so it is recorded even when an
earlier check already failed), then all failing checks are listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unicurate.schema import SynReason


@dataclass
class MaskMetrics:
    pred_iou: float
    stability: float
    mask_area: float  # share of the image
    box_area: float  # share of the image
    largest_component: float  # share of the mask in its largest 8-connected component
    contours: int  # outer contours, specks below 0.1% of the mask ignored
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons


def mask_metrics(mask: np.ndarray, box_xyxy, pred_iou: float, stability: float) -> MaskMetrics:
    import cv2

    h, w = mask.shape[:2]
    total = float(h * w)
    m = mask.astype(np.uint8)
    area = int(m.sum())
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    box_area = max(0.0, min(x1, w) - max(x0, 0)) * max(0.0, min(y1, h) - max(y0, 0)) / total
    largest, contours = 0.0, 0
    if area:
        n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        sizes = stats[1:, cv2.CC_STAT_AREA]
        largest = float(sizes.max()) / area if n > 1 else 0.0
        cnts, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        min_speck = max(1.0, 0.001 * area)
        contours = max(1, sum(1 for c in cnts if cv2.contourArea(c) >= min_speck))
    return MaskMetrics(float(pred_iou), float(stability), area / total, box_area, largest, contours)


def check_mask(mask: np.ndarray, box_xyxy, pred_iou: float, stability: float, cfg) -> MaskMetrics:
    """Metrics of one mask and the reasons (SynReason codes) it fails ``cfg`` (a QualityConfig)."""
    mm = mask_metrics(mask, box_xyxy, pred_iou, stability)
    r = mm.reasons
    if mm.pred_iou < cfg.min_pred_iou:
        r.append(SynReason.LOW_PRED_IOU.value)
    if mm.stability < cfg.min_stability:
        r.append(SynReason.LOW_STABILITY.value)
    if mm.mask_area < cfg.min_mask_area:
        r.append(SynReason.MASK_TOO_SMALL.value)
    if mm.mask_area > cfg.max_mask_area:
        r.append(SynReason.MASK_TOO_LARGE.value)
    if mm.box_area < cfg.min_box_area:
        r.append(SynReason.BOX_TOO_SMALL.value)
    if mm.box_area > cfg.max_box_area:
        r.append(SynReason.BOX_TOO_LARGE.value)
    if mm.mask_area > 0 and mm.largest_component < cfg.min_largest_component:
        r.append(SynReason.FRAGMENTED.value)
    if mm.contours > cfg.max_contours:
        r.append(SynReason.TOO_MANY_CONTOURS.value)
    return mm
