"""The contract every filter follows. Filters never import Beam.

A filter records columns for every row (``score``) and turns columns into
reject reasons under thresholds (``decide``). Because the decision only needs
the recorded columns, thresholds can be changed later without re-scoring.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol, Sequence

import numpy as np

Columns = dict[str, list[Any]]


class Filter(Protocol):
    name: str
    columns: tuple[str, ...]

    def score(self, batch: Sequence[Mapping[str, Any]]) -> Columns:
        """Compute this filter's columns for a batch of rows (dicts)."""

    def decide(self, columns: Mapping[str, Sequence[Any]], thresholds: Optional[Mapping[str, Any]] = None) -> list[list[str]]:
        """Reject reasons per row (empty list = passes). ``thresholds`` override the configured ones."""


def bgr_array(pil_image) -> np.ndarray:
    """An RGB PIL image as the BGR uint8 array OpenCV-based models read (what cv2.imread gives them)."""
    return np.ascontiguousarray(np.asarray(pil_image)[:, :, ::-1])
