"""replace: the object is removed and another image's subject, scaled to its box, pasted in its place."""

from __future__ import annotations

import numpy as np

from unicurate.synthesis import edits as ed
from unicurate.synthesis import templates as tp
from unicurate.synthesis.edit_types._base import EditContext, EditTypeSpec, NoPartner

TEMPLATES = (
    "Replace the {phrase} with {a_other}.",
    "Swap the {phrase} for {a_other}.",
    "Turn the {phrase} into {a_other}.",
    "Put {a_other} where the {phrase} is.",
)


def replace(image: np.ndarray, mask: np.ndarray, box, phrase: str, other: np.ndarray, other_mask: np.ndarray,
            other_phrase: str, partner_key: str, inpainter: ed.Inpainter, *, dilation: float = 0.04,
            min_dilation_px: int = 3, seed_text: str = "") -> ed.EditResult:
    """Remove the object and paste another image's subject, scaled to fit its box, in its place."""
    canvas, hole, px = ed.inpaint_object(image, mask, box, inpainter, dilation, min_dilation_px)
    obj, om, _ = ed.crop_to_mask(other, other_mask)
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = max(1.0, x1 - x0), max(1.0, y1 - y0)
    scale = min(bw / om.shape[1], bh / om.shape[0])
    so, sm = ed.scaled(obj, om, scale)
    placed = ed.paste_centred(canvas, so, sm, (x0 + x1) / 2, (y0 + y1) / 2)
    tid, text = EDIT_TYPE.instruction(seed_text, phrase=phrase, other=other_phrase)
    return ed.EditResult(EDIT_TYPE.name, image, canvas, hole | placed, text, tid,
                         {"partner": partner_key, "other_phrase": other_phrase, "scale": float(scale),
                          "inpainter": inpainter.name, "dilation_px": px}, partner_key=partner_key)


def partner_for(ctx: EditContext):
    """(image index, object): an accepted object of another image with the most similar box area
    (ties broken by a seeded draw); :class:`NoPartner` when there is none."""
    box = ctx.obj.box
    area = max(1.0, float((box[2] - box[0]) * (box[3] - box[1])))
    cands = []
    for j, objs in ctx.accepted.items():
        if j == ctx.index:
            continue
        for other, _ in objs:
            a = max(1.0, float((other.box[2] - other.box[0]) * (other.box[3] - other.box[1])))
            ratio = abs(np.log(a / area))
            cands.append((ratio, tp.choose(f"{ctx.seed_text}:{ctx.rows[j]['key']}:{other.index}", 1 << 30, "rep"),
                          j, other))
    if not cands:
        raise NoPartner
    _, _, j, other = min(cands, key=lambda c: (c[0], c[1]))
    return j, other


def _make(ctx: EditContext) -> ed.EditResult:
    j, other = partner_for(ctx)
    o = ctx.obj
    return replace(ctx.image, o.mask, o.box, ctx.phrase, ctx.images[j], other.mask, tp.clean_phrase(other.phrase),
                   ctx.rows[j]["key"], ctx.inpainter, seed_text=ctx.seed_text, **ctx.dilation)


EDIT_TYPE = EditTypeSpec(name="replace", order=70, templates=TEMPLATES, make=_make, local=True)
