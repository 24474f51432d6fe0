"""Edit operations: one function per edit type, each returning an :class:`EditResult`.

Images are RGB ``uint8`` arrays (H, W, 3), masks ``bool`` arrays (H, W), boxes
xyxy in pixels. Nothing here imports Beam or loads models except the optional
LaMa inpainter; every function is deterministic given its arguments.

``EditResult.region`` is the area the edit is allowed to change (the dilated
object mask, plus where an object is pasted); local edits are checked against
it (``checks.change_outside``). Inpainting results are composited back into
the original outside the inpainted mask, so a local edit changes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from unicurate.synthesis import templates as tp

LOCAL_EDITS = ("remove", "add", "recolor", "move", "resize", "replace")


@dataclass
class EditResult:
    edit_type: str
    source: np.ndarray
    target: np.ndarray
    region: np.ndarray  # bool: where the edit may change pixels
    instruction: str
    template_id: str
    params: dict = field(default_factory=dict)
    partner_key: Optional[str] = None
    check_box: Optional[np.ndarray] = None  # where re-detection looks (remove/add: the object's box)


# ------------------------------------------------------------------ masks
def dilation_px(box, fraction: float, min_px: int) -> int:
    """Dilation radius scaled by object size: ``fraction`` of the box diagonal, at least ``min_px``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return max(int(min_px), int(round(fraction * float(np.hypot(x1 - x0, y1 - y0)))))


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    import cv2

    if px <= 0:
        return mask.astype(bool)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


def mask_box(mask: np.ndarray) -> Optional[np.ndarray]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def normalised_box(box, w: int, h: int) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [min(max(x0 / w, 0.0), 1.0), min(max(y0 / h, 0.0), 1.0), min(max(x1 / w, 0.0), 1.0),
            min(max(y1 / h, 0.0), 1.0)]


# ------------------------------------------------------------------ inpainters
class Inpainter(Protocol):
    name: str

    def inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


class TeleaInpainter:
    """OpenCV's Telea fast-marching inpainting (offline default, no weights)."""

    name = "telea"

    def __init__(self, radius: int = 5):
        self.radius = int(radius)

    def inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import cv2

        out = cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8) * 255, self.radius, cv2.INPAINT_TELEA)
        return np.where(mask[..., None], out, image)


class LamaInpainter:
    """big-lama (TorchScript export) through the weight resolver; CUDA when available."""

    name = "lama"

    def __init__(self, weights: Path, device: str = "cpu"):
        import torch

        from unicurate.models.resolver import ModelUnavailable

        try:
            self.model = torch.jit.load(str(weights), map_location=device).eval()
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"model 'lama': cannot load {weights} as a TorchScript big-lama: {exc}") from None
        self.device = device

    def inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        h, w = mask.shape
        ph, pw = (8 - h % 8) % 8, (8 - w % 8) % 8
        img = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        m = np.pad(mask, ((0, ph), (0, pw)), mode="constant")
        with torch.inference_mode():
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).to(self.device)
            mt = torch.from_numpy(m.astype(np.float32))[None, None].to(self.device)
            y = self.model(x, mt)[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().cpu().numpy()
        return np.where(mask[..., None], y[:h, :w], image)


# ------------------------------------------------------------------ helpers
def _paste(canvas: np.ndarray, obj: np.ndarray, obj_mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """Paste ``obj`` (h, w, 3) through ``obj_mask`` with its top-left at (x, y), clipped to the canvas.

    Returns the pasted mask in canvas coordinates.
    """
    H, W = canvas.shape[:2]
    h, w = obj_mask.shape
    cx0, cy0 = max(x, 0), max(y, 0)
    cx1, cy1 = min(x + w, W), min(y + h, H)
    placed = np.zeros((H, W), bool)
    if cx1 <= cx0 or cy1 <= cy0:
        return placed
    ox0, oy0 = cx0 - x, cy0 - y
    sub_m = obj_mask[oy0:oy0 + (cy1 - cy0), ox0:ox0 + (cx1 - cx0)]
    region = canvas[cy0:cy1, cx0:cx1]
    region[sub_m] = obj[oy0:oy0 + (cy1 - cy0), ox0:ox0 + (cx1 - cx0)][sub_m]
    placed[cy0:cy1, cx0:cx1] = sub_m
    return placed


def _crop(image: np.ndarray, mask: np.ndarray):
    b = mask_box(mask)
    x0, y0, x1, y1 = (int(v) for v in b)
    return image[y0:y1, x0:x1], mask[y0:y1, x0:x1], (x0, y0)


def _scaled(obj: np.ndarray, m: np.ndarray, scale: float):
    import cv2

    h, w = m.shape
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    o = cv2.resize(obj, (nw, nh), interpolation=interp)
    mm = cv2.resize(m.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
    return o, mm


# ------------------------------------------------------------------ edit types
def remove(image: np.ndarray, mask: np.ndarray, box, phrase: str, inpainter: Inpainter, *, dilation: float = 0.04,
           min_dilation_px: int = 3, seed_text: str = "") -> EditResult:
    """Inpaint the dilated object mask: the object is gone, nothing outside the dilated mask changes."""
    px = dilation_px(box, dilation, min_dilation_px)
    region = dilate(mask, px)
    target = inpainter.inpaint(image, region)
    tid, text = tp.render("remove", seed_text, phrase=phrase)
    return EditResult("remove", image, target, region, text, tid,
                      {"inpainter": inpainter.name, "dilation_px": px}, check_box=np.asarray(box, np.float32))


def add(removed: EditResult, box, phrase: str, seed_text: str = "") -> EditResult:
    """The reverse of a remove pair: source = inpainted, target = original, with a spatial phrase."""
    h, w = removed.source.shape[:2]
    where = tp.where_phrase(normalised_box(box, w, h))
    tid, text = tp.render("add", seed_text, phrase=phrase, where=where)
    return EditResult("add", removed.target, removed.source, removed.region, text, tid,
                      dict(removed.params, where=where), check_box=np.asarray(box, np.float32))


def recolor(image: np.ndarray, mask: np.ndarray, color: str, phrase: str, seed_text: str = "",
            min_saturation: int = 110) -> EditResult:
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
    tid, text = tp.render("recolor", seed_text, phrase=phrase, color=color)
    return EditResult("recolor", image, target, mask.copy(), text, tid, {"color": color, "hue": hue})


def move(image: np.ndarray, mask: np.ndarray, box, dx: int, dy: int, phrase: str, inpainter: Inpainter, *,
         dilation: float = 0.04, min_dilation_px: int = 3, seed_text: str = "") -> EditResult:
    """Remove the object, then paste it shifted by (dx, dy) pixels."""
    px = dilation_px(box, dilation, min_dilation_px)
    hole = dilate(mask, px)
    canvas = inpainter.inpaint(image, hole)
    obj, om, (x0, y0) = _crop(image, mask)
    placed = _paste(canvas, obj, om, x0 + dx, y0 + dy)
    tid, text = tp.render("move", seed_text, phrase=phrase, direction=tp.direction_phrase(dx, dy))
    return EditResult("move", image, canvas, hole | placed, text, tid,
                      {"dx": int(dx), "dy": int(dy), "inpainter": inpainter.name, "dilation_px": px})


def resize(image: np.ndarray, mask: np.ndarray, box, scale: float, phrase: str, inpainter: Inpainter, *,
           dilation: float = 0.04, min_dilation_px: int = 3, seed_text: str = "") -> EditResult:
    """Remove the object, then paste it scaled about its box centre."""
    px = dilation_px(box, dilation, min_dilation_px)
    hole = dilate(mask, px)
    canvas = inpainter.inpaint(image, hole)
    obj, om, (x0, y0) = _crop(image, mask)
    so, sm = _scaled(obj, om, scale)
    cx, cy = x0 + om.shape[1] / 2, y0 + om.shape[0] / 2
    placed = _paste(canvas, so, sm, int(round(cx - sm.shape[1] / 2)), int(round(cy - sm.shape[0] / 2)))
    tid, text = tp.render("resize", seed_text, phrase=phrase, bigger_smaller="bigger" if scale > 1 else "smaller")
    return EditResult("resize", image, canvas, hole | placed, text, tid,
                      {"scale": float(scale), "inpainter": inpainter.name, "dilation_px": px})


def cover_resize(other: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize + centre-crop ``other`` to exactly (h, w)."""
    import cv2

    oh, ow = other.shape[:2]
    s = max(h / oh, w / ow)
    r = cv2.resize(other, (max(w, int(round(ow * s))), max(h, int(round(oh * s)))), interpolation=cv2.INTER_AREA)
    y0, x0 = (r.shape[0] - h) // 2, (r.shape[1] - w) // 2
    return np.ascontiguousarray(r[y0:y0 + h, x0:x0 + w])


def background(image: np.ndarray, mask: np.ndarray, other: np.ndarray, phrase: str, partner_key: str,
               seed_text: str = "") -> EditResult:
    """Composite the masked subject onto another image of the run."""
    h, w = mask.shape
    bg = cover_resize(other, h, w)
    target = np.where(mask[..., None], image, bg)
    tid, text = tp.render("background", seed_text, phrase=phrase)
    return EditResult("background", image, target, ~mask, text, tid, {"partner": partner_key},
                      partner_key=partner_key)


def replace(image: np.ndarray, mask: np.ndarray, box, phrase: str, other: np.ndarray, other_mask: np.ndarray,
            other_phrase: str, partner_key: str, inpainter: Inpainter, *, dilation: float = 0.04,
            min_dilation_px: int = 3, seed_text: str = "") -> EditResult:
    """Remove the object and paste another image's subject, scaled to fit its box, in its place."""
    px = dilation_px(box, dilation, min_dilation_px)
    hole = dilate(mask, px)
    canvas = inpainter.inpaint(image, hole)
    obj, om, _ = _crop(other, other_mask)
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = max(1.0, x1 - x0), max(1.0, y1 - y0)
    scale = min(bw / om.shape[1], bh / om.shape[0])
    so, sm = _scaled(obj, om, scale)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    placed = _paste(canvas, so, sm, int(round(cx - sm.shape[1] / 2)), int(round(cy - sm.shape[0] / 2)))
    tid, text = tp.render("replace", seed_text, phrase=phrase, other=other_phrase)
    return EditResult("replace", image, canvas, hole | placed, text, tid,
                      {"partner": partner_key, "other_phrase": other_phrase, "scale": float(scale),
                       "inpainter": inpainter.name, "dilation_px": px}, partner_key=partner_key)
