"""resize: the object is removed and pasted scaled (a factor of ``edits.resize_scales``) about its centre."""

from __future__ import annotations

import numpy as np

from unicurate.synthesis import edits as ed
from unicurate.synthesis import templates as tp
from unicurate.synthesis.edit_types._base import EditContext, EditTypeSpec

TEMPLATES = (
    "Make the {phrase} {bigger_smaller}.",
    "Resize the {phrase} to be {bigger_smaller}.",
    "Scale the {phrase} so it is {bigger_smaller}.",
    "The {phrase} should be {bigger_smaller}.",
)


def resize(image: np.ndarray, mask: np.ndarray, box, scale: float, phrase: str, inpainter: ed.Inpainter, *,
           dilation: float = 0.04, min_dilation_px: int = 3, seed_text: str = "") -> ed.EditResult:
    """Remove the object, then paste it scaled about its box centre."""
    canvas, hole, px = ed.inpaint_object(image, mask, box, inpainter, dilation, min_dilation_px)
    obj, om, (x0, y0) = ed.crop_to_mask(image, mask)
    so, sm = ed.scaled(obj, om, scale)
    placed = ed.paste_centred(canvas, so, sm, x0 + om.shape[1] / 2, y0 + om.shape[0] / 2)
    tid, text = EDIT_TYPE.instruction(seed_text, phrase=phrase, bigger_smaller="bigger" if scale > 1 else "smaller")
    return ed.EditResult(EDIT_TYPE.name, image, canvas, hole | placed, text, tid,
                         {"scale": float(scale), "inpainter": inpainter.name, "dilation_px": px})


def scale_for(image: np.ndarray, box, scales: list[float], seed_text: str) -> float:
    """A factor of ``scales`` under which the object's box still fits the image (else the smallest)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    fits = [s for s in scales if (x1 - x0) * s <= w and (y1 - y0) * s <= h]
    pool = fits or [min(scales)]
    return pool[tp.choose(seed_text, len(pool), "scale")]


def _make(ctx: EditContext) -> ed.EditResult:
    o = ctx.obj
    scale = scale_for(ctx.image, o.box, ctx.config.resize_scales, ctx.seed_text)
    return resize(ctx.image, o.mask, o.box, scale, ctx.phrase, ctx.inpainter, seed_text=ctx.seed_text,
                  **ctx.dilation)


EDIT_TYPE = EditTypeSpec(name="resize", order=50, templates=TEMPLATES, make=_make, local=True)
