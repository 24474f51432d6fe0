"""The contract every filter follows. Filters never import Beam.

A filter records columns for every row (``score``) and turns columns into
reject reasons under thresholds (``decide``). Because the decision only needs
the recorded columns, thresholds can be changed later without re-scoring.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, NamedTuple, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from unicurate.filters.registry import FilterSpec

Columns = dict[str, list[Any]]


class Filter:
    """What the scorer, the decider and the rule stage rely on, with the defaults most filters keep.

    A filter class sets ``spec`` to the :class:`~unicurate.filters.registry.FilterSpec` its module registers;
    its name, recorded columns and reason codes are read from there, never repeated. ``thresholds`` (the bounds
    ``decide`` applies unless told others) is set by the constructor.
    """

    spec: ClassVar[FilterSpec]
    input_key: Optional[str] = None
    """Key of this filter's prepared image in a scored item; None: it reads no image (only ``needs`` and the
    caption), and no image is decoded for it."""
    needs: tuple[str, ...] = ()
    """Transient columns another filter ``provides`` that ``score`` reads (CLIP's ``clip_embedding``)."""
    keep_top_fraction: Optional[float] = None
    """Set when the lower bound is a run-wide quantile the pipeline computes and passes to ``decide``."""
    thresholds: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns it records in curated rows."""
        return tuple(c.name for c in self.spec.columns)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.spec.reasons)

    def prepare(self, pil_image) -> Any:
        """CPU preprocessing of one decoded RGB image into what ``score`` reads under ``input_key``."""
        raise NotImplementedError(f"filter {self.name!r} has an input_key but no prepare")

    def score(self, batch: Sequence[Mapping[str, Any]]) -> Columns:
        """Compute this filter's columns for a batch of rows (dicts)."""
        raise NotImplementedError

    def decide(self, columns: Mapping[str, Sequence[Any]], thresholds: Optional[Mapping[str, Any]] = None) -> list[list[str]]:
        """Reject reasons per row (empty list = passes). ``thresholds`` override the configured ones."""
        raise NotImplementedError


def bgr_array(pil_image) -> np.ndarray:
    """An RGB PIL image as the BGR uint8 array OpenCV-based models read (what cv2.imread gives them)."""
    return np.ascontiguousarray(np.asarray(pil_image)[:, :, ::-1])


# ------------------------------------------------------------------ the shapes the models receive
MAX_ASPECT = 16
"""Longest side / shortest side of any image a model receives. Slivers beyond it (a 2000x4 banner, a 1x16000
line) are padded: RapidOCR's resize fails on them (its short side rounds to 0 px) or blows them up (a 30 px
minimum side, then a letterbox), NudeNet pads every image to a square of its long side, and CLIP's shortest-side
resize makes a 224 x (224 x aspect) image. Every image within the limit reaches the models untouched."""

SLIVER_MAX_SIDE = 4096
"""A sliver's long side is first scaled down to this (area averaging), so its padded canvas stays small (at most
4096 x 256) however long the sliver is. No model looks at more: the canvas's short side is 1/MAX_ASPECT of this,
and the models bring it to 256 px at most (the watermark detector's square input; CLIP 224, NudeNet 320 for the
long side, RapidOCR 2000 for the long side), so the scale-down never costs a model a pixel it would have used."""

PAD_COLOUR = (128, 128, 128)  # neutral mid-grey: no text, no skin, no edges of its own


class Region(NamedTuple):
    """Where the stored image lies in the image a model receives (that image's pixels)."""

    left: int
    top: int
    width: int
    height: int


def fit_for_models(pil_image):
    """``(image, region)``: an RGB PIL image as every model receives it, and where the stored image lies in it.

    The one place where extreme shapes are made scorable: an image whose long side is more than
    :data:`MAX_ASPECT` times its short side is scaled down to a long side of at most :data:`SLIVER_MAX_SIDE`,
    then padded, centred, on a :data:`PAD_COLOUR` canvas to that aspect ratio. Any other image (1x1 included:
    every model resizes small inputs itself) is returned as is, the same object, with a region covering all
    of it. Scores that measure a share of the image (text coverage) are taken over ``region``, never over the
    padding.
    """
    from PIL import Image

    w, h = pil_image.size
    if max(w, h) <= MAX_ASPECT * min(w, h):
        return pil_image, Region(0, 0, w, h)
    if pil_image.mode != "RGB":
        pil_image = pil_image.convert("RGB")
    if max(w, h) > SLIVER_MAX_SIDE:
        scale = SLIVER_MAX_SIDE / max(w, h)
        w, h = max(1, min(SLIVER_MAX_SIDE, round(w * scale))), max(1, min(SLIVER_MAX_SIDE, round(h * scale)))
        pil_image = pil_image.resize((w, h), Image.Resampling.BOX)
    short = math.ceil(max(w, h) / MAX_ASPECT)
    size = (w, max(h, short)) if w >= h else (max(w, short), h)
    canvas = Image.new("RGB", size, PAD_COLOUR)
    region = Region((size[0] - w) // 2, (size[1] - h) // 2, w, h)
    canvas.paste(pil_image, (region.left, region.top))
    return canvas, region


def model_image(pil_image):
    """The RGB PIL image a model receives (:func:`fit_for_models` without the region)."""
    return fit_for_models(pil_image)[0]


class BgrInput(NamedTuple):
    """What the OpenCV-based models (NudeNet, RapidOCR) receive: the BGR array and where the stored image lies in it."""

    bgr: np.ndarray
    region: Region

    @property
    def padded(self) -> bool:
        """Whether the array holds more than the stored image (a padded sliver)."""
        return (self.region.width, self.region.height) != self.bgr.shape[1::-1]


def bgr_input(pil_image) -> BgrInput:
    """CPU preprocessing shared by NudeNet and RapidOCR: the shape-fitted image as a BGR array, with its region."""
    image, region = fit_for_models(pil_image)
    return BgrInput(bgr_array(image), region)
