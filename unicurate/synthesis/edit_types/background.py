"""background: the masked subject composited onto another image of the run (a global edit)."""

from __future__ import annotations

import numpy as np

from unicurate.synthesis import edits as ed
from unicurate.synthesis import templates as tp
from unicurate.synthesis.edit_types._base import EditContext, EditTypeSpec, NoPartner

TEMPLATES = (
    "Change the background behind the {phrase}.",
    "Put the {phrase} in front of a different background.",
    "Replace the background, keep the {phrase}.",
    "Swap the scenery around the {phrase}.",
)


def cover_resize(other: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize + centre-crop ``other`` to exactly (h, w)."""
    import cv2

    oh, ow = other.shape[:2]
    s = max(h / oh, w / ow)
    r = cv2.resize(other, (max(w, int(round(ow * s))), max(h, int(round(oh * s)))), interpolation=cv2.INTER_AREA)
    y0, x0 = (r.shape[0] - h) // 2, (r.shape[1] - w) // 2
    return np.ascontiguousarray(r[y0:y0 + h, x0:x0 + w])


def background(image: np.ndarray, mask: np.ndarray, other: np.ndarray, phrase: str, partner_key: str,
               seed_text: str = "") -> ed.EditResult:
    """Composite the masked subject onto another image of the run."""
    h, w = mask.shape
    bg = cover_resize(other, h, w)
    target = np.where(mask[..., None], image, bg)
    tid, text = EDIT_TYPE.instruction(seed_text, phrase=phrase)
    return ed.EditResult(EDIT_TYPE.name, image, target, ~mask, text, tid, {"partner": partner_key},
                         partner_key=partner_key)


def _make(ctx: EditContext) -> ed.EditResult:
    """Any other image of the batch or of recent batches, chosen by the seed among them sorted by key."""
    others = [j for j in ctx.images if j != ctx.index]
    if not others:
        raise NoPartner
    j = sorted(others, key=lambda j: ctx.rows[j]["key"])[tp.choose(ctx.seed_text, len(others), "bg")]
    return background(ctx.image, ctx.obj.mask, ctx.images[j], ctx.phrase, ctx.rows[j]["key"], ctx.seed_text)


EDIT_TYPE = EditTypeSpec(name="background", order=60, templates=TEMPLATES, make=_make, local=False)
