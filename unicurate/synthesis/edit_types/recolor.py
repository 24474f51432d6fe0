"""recolor: the object takes a named hue (from ``edits.colors``) far from its own, keeping its shading."""

from __future__ import annotations

import numpy as np

from unicurate.synthesis import edits as ed
from unicurate.synthesis import templates as tp
from unicurate.synthesis.edit_types._base import EditContext, EditTypeSpec

TEMPLATES = (
    "Make the {phrase} {color}.",
    "Change the colour of the {phrase} to {color}.",
    "Turn the {phrase} {color}.",
    "Recolor the {phrase} {color}.",
    "Paint the {phrase} {color}.",
)


def recolor(image: np.ndarray, mask: np.ndarray, color: str, phrase: str, seed_text: str = "",
            min_saturation: int = 110) -> ed.EditResult:
    """Set the hue of the masked pixels to the named colour (keeping their brightness)."""
    import cv2

    hue = tp.COLOR_HUES[color]
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hs = hsv[..., 0]
    hs[mask] = hue
    sat = hsv[..., 1]
    sat[mask] = np.maximum(sat[mask], min_saturation)
    val = hsv[..., 2]
    val[mask] = np.clip(val[mask], 60, 245)  # black/white objects cannot show a hue
    target = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    target = np.where(mask[..., None], target, image)
    tid, text = EDIT_TYPE.instruction(seed_text, phrase=phrase, color=color)
    return ed.EditResult(EDIT_TYPE.name, image, target, mask.copy(), text, tid, {"color": color, "hue": hue})


def color_for(image: np.ndarray, mask: np.ndarray, colors: list[str], seed_text: str) -> str:
    """A colour of ``colors`` whose hue is far from the object's current median hue (seeded choice)."""
    import cv2

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    cur = float(np.median(hsv[..., 0][mask])) if mask.any() else 0.0
    far = [c for c in colors if min(abs(tp.COLOR_HUES[c] - cur), 180 - abs(tp.COLOR_HUES[c] - cur)) >= 20]
    pool = far or list(colors)
    return pool[tp.choose(seed_text, len(pool), "color")]


def _make(ctx: EditContext) -> ed.EditResult:
    color = color_for(ctx.image, ctx.obj.mask, ctx.config.colors, ctx.seed_text)
    return recolor(ctx.image, ctx.obj.mask, color, ctx.phrase, ctx.seed_text)


EDIT_TYPE = EditTypeSpec(name="recolor", order=30, templates=TEMPLATES, make=_make, local=True)
