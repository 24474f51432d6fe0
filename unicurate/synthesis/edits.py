"""What every edit type shares: the :class:`EditResult`, inpainters, mask and paste helpers.

The edit operations themselves live one per module in ``synthesis/edit_types/``.
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

from unicurate.models.handlers import Loaded, register_handler
from unicurate.models.resolver import ModelUnavailable, file_sha256
from unicurate.models.runtime import Runtime
from unicurate.models.zoo import ModelSpec


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
    check_box: Optional[np.ndarray] = None  # where re-detection looks (types that re-detect: the object's box)


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


def inpaint_object(image: np.ndarray, mask: np.ndarray, box, inpainter: Inpainter, dilation: float,
                   min_dilation_px: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(the image with the dilated object mask inpainted, that dilated mask, the dilation in pixels).

    Dilating first takes the object's fringe (anti-aliased edge, shadow rim) away with it."""
    px = dilation_px(box, dilation, min_dilation_px)
    hole = dilate(mask, px)
    return inpainter.inpaint(image, hole), hole, px


# ------------------------------------------------------------------ inpainters
class Inpainter(Protocol):
    name: str

    def inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


class TeleaInpainter:
    """OpenCV's Telea fast-marching inpainting (offline default, no weights)."""

    name = "telea"

    def __init__(self, radius: int = 5):
        self.radius = int(radius)

    def records(self) -> list[dict]:
        """The manifest's record of the inpainter (no weights: nothing to fingerprint)."""
        return [{"name": "inpainter", "title": "OpenCV Telea inpainting (no weights)", "library": "opencv",
                 "uri": None, "arch": "telea", "sha256": None, "calibrated": True, "device": "cpu",
                 "precision": "uint8"}]

    def inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import cv2

        out = cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8) * 255, self.radius, cv2.INPAINT_TELEA)
        return np.where(mask[..., None], out, image)


@register_handler("lama")
class LamaInpainter(Loaded):
    """big-lama (TorchScript export) through the weight resolver, on the runtime's device (fp32)."""

    name = "lama"

    def __init__(self, spec: ModelSpec, weights: Path, runtime: Runtime):
        import torch

        try:
            self.model = torch.jit.load(str(weights), map_location=runtime.device).eval()
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"model 'lama': cannot load {weights} as a TorchScript big-lama: {exc}") from None
        self.spec, self.device, self.precision = spec, runtime.device, "fp32"
        self.sha256 = file_sha256(weights, remember=False)
        runtime.loaded(spec.name)

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


# ------------------------------------------------------------------ cut and paste
def paste(canvas: np.ndarray, obj: np.ndarray, obj_mask: np.ndarray, x: int, y: int) -> np.ndarray:
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


def paste_centred(canvas: np.ndarray, obj: np.ndarray, obj_mask: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """:func:`paste` with the object's centre at (cx, cy); returns the pasted mask."""
    h, w = obj_mask.shape
    return paste(canvas, obj, obj_mask, int(round(cx - w / 2)), int(round(cy - h / 2)))


def crop_to_mask(image: np.ndarray, mask: np.ndarray):
    """(the image cropped to the mask's box, the mask cropped alike, the box's top-left (x, y))."""
    b = mask_box(mask)
    x0, y0, x1, y1 = (int(v) for v in b)
    return image[y0:y1, x0:x1], mask[y0:y1, x0:x1], (x0, y0)


def scaled(obj: np.ndarray, m: np.ndarray, scale: float):
    """``obj`` and its mask ``m`` resized by ``scale`` (area-averaged down, linear up; the mask nearest)."""
    import cv2

    h, w = m.shape
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    o = cv2.resize(obj, (nw, nh), interpolation=interp)
    mm = cv2.resize(m.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
    return o, mm
