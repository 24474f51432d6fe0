"""add: the reverse of a remove triplet; the object appears where it was, named with a spatial phrase."""

from __future__ import annotations

import numpy as np

from unicurate.synthesis import edits as ed
from unicurate.synthesis import templates as tp
from unicurate.synthesis.edit_types._base import EditContext, EditTypeSpec
from unicurate.synthesis.edit_types.remove import removal

TEMPLATES = (
    "Add {a_phrase} {where}.",
    "Put {a_phrase} {where}.",
    "Insert {a_phrase} {where}.",
    "Place {a_phrase} {where} of the image.",
)


def add(removed: ed.EditResult, box, phrase: str, seed_text: str = "") -> ed.EditResult:
    """The reverse of a remove triplet: source = inpainted, target = original, with a spatial phrase."""
    h, w = removed.source.shape[:2]
    where = tp.where_phrase(ed.normalised_box(box, w, h))
    tid, text = EDIT_TYPE.instruction(seed_text, phrase=phrase, where=where)
    return ed.EditResult(EDIT_TYPE.name, removed.target, removed.source, removed.region, text, tid,
                         dict(removed.params, where=where), check_box=np.asarray(box, np.float32))


def _make(ctx: EditContext) -> ed.EditResult:
    return add(removal(ctx), ctx.obj.box, ctx.phrase, ctx.seed_text)


EDIT_TYPE = EditTypeSpec(name="add", order=20, templates=TEMPLATES, make=_make, local=True, redetect="present")
