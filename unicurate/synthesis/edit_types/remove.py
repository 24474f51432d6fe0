"""remove: the object is inpainted away; nothing outside its dilated mask changes."""

from __future__ import annotations

import numpy as np

from unicurate.synthesis import edits as ed
from unicurate.synthesis.edit_types._base import EditContext, EditTypeSpec

TEMPLATES = (
    "Remove the {phrase}.",
    "Delete the {phrase} from the image.",
    "Take the {phrase} out of the picture.",
    "Erase the {phrase}.",
    "Get rid of the {phrase}.",
)


def remove(image: np.ndarray, mask: np.ndarray, box, phrase: str, inpainter: ed.Inpainter, *,
           dilation: float = 0.04, min_dilation_px: int = 3, seed_text: str = "") -> ed.EditResult:
    """Inpaint the dilated object mask: the object is gone, nothing outside the dilated mask changes."""
    target, region, px = ed.inpaint_object(image, mask, box, inpainter, dilation, min_dilation_px)
    tid, text = EDIT_TYPE.instruction(seed_text, phrase=phrase)
    return ed.EditResult(EDIT_TYPE.name, image, target, region, text, tid,
                         {"inpainter": inpainter.name, "dilation_px": px}, check_box=np.asarray(box, np.float32))


def removal(ctx: EditContext) -> ed.EditResult:
    """The object removed, made once per object: the remove triplet, and reversed, the add triplet."""
    o = ctx.obj
    return ctx.once(EDIT_TYPE.name, lambda: remove(ctx.image, o.mask, o.box, ctx.phrase, ctx.inpainter,
                                                   seed_text=ctx.seed_text, **ctx.dilation))


EDIT_TYPE = EditTypeSpec(name="remove", order=10, templates=TEMPLATES, make=removal, local=True, redetect="gone")
