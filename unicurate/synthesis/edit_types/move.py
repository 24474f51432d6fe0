"""move: the object is removed and pasted shifted by ``edits.move_fraction`` of the image."""

from __future__ import annotations

import numpy as np

from unicurate.synthesis import edits as ed
from unicurate.synthesis import templates as tp
from unicurate.synthesis.edit_types._base import EditContext, EditTypeSpec

TEMPLATES = (
    "Move the {phrase} {direction}.",
    "Shift the {phrase} {direction}.",
    "Slide the {phrase} a little {direction}.",
    "Reposition the {phrase} {direction}.",
)

# unit shifts tried, from a seeded start: left, right, up, down, then the diagonals
DIRECTIONS = [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1)]


def move(image: np.ndarray, mask: np.ndarray, box, dx: int, dy: int, phrase: str, inpainter: ed.Inpainter, *,
         dilation: float = 0.04, min_dilation_px: int = 3, seed_text: str = "") -> ed.EditResult:
    """Remove the object, then paste it shifted by (dx, dy) pixels."""
    canvas, hole, px = ed.inpaint_object(image, mask, box, inpainter, dilation, min_dilation_px)
    obj, om, (x0, y0) = ed.crop_to_mask(image, mask)
    placed = ed.paste(canvas, obj, om, x0 + dx, y0 + dy)
    tid, text = EDIT_TYPE.instruction(seed_text, phrase=phrase, direction=tp.direction_phrase(dx, dy))
    return ed.EditResult(EDIT_TYPE.name, image, canvas, hole | placed, text, tid,
                         {"dx": int(dx), "dy": int(dy), "inpainter": inpainter.name, "dilation_px": px})


def shift_for(image: np.ndarray, box, fraction: float, seed_text: str) -> tuple[int, int]:
    """A shift of ``fraction`` of the image that keeps most of the object in frame."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)

    def inside(d):
        dx, dy = d[0] * fraction * w, d[1] * fraction * h
        iw = max(0.0, min(x1 + dx, w) - max(x0 + dx, 0))
        ih = max(0.0, min(y1 + dy, h) - max(y0 + dy, 0))
        return iw * ih / max(1e-6, (x1 - x0) * (y1 - y0))

    start = tp.choose(seed_text, len(DIRECTIONS), "move")
    order = DIRECTIONS[start:] + DIRECTIONS[:start]
    best = max(order, key=inside)  # first of the best in the seeded order
    return int(round(best[0] * fraction * w)), int(round(best[1] * fraction * h))


def _make(ctx: EditContext) -> ed.EditResult:
    o = ctx.obj
    dx, dy = shift_for(ctx.image, o.box, ctx.config.move_fraction, ctx.seed_text)
    return move(ctx.image, o.mask, o.box, dx, dy, ctx.phrase, ctx.inpainter, seed_text=ctx.seed_text,
                **ctx.dilation)


EDIT_TYPE = EditTypeSpec(name="move", order=40, templates=TEMPLATES, make=_make, local=True)
