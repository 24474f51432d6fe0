"""Subject-driven samples: a reference image of one object, the full image as target.

The reference is the object cut out by its mask onto a neutral background and
cropped to its box plus a margin. Optional augmentations (flip, scale, small
rotation, colour jitter) make the reference differ from its appearance in the
target, so a model cannot learn to copy-paste; what was applied is recorded.
"""

from __future__ import annotations

import numpy as np

from unicurate.synthesis import templates as tp

TEMPLATES: tuple[str, ...] = (
    "Generate an image of this {phrase}: {caption}",
    "Place the {phrase} from the reference into a scene: {caption}",
    "Using the {phrase} shown in the reference image, create: {caption}",
    "Show this exact {phrase} in the following picture: {caption}",
    "Keep the {phrase} identical to the reference and render: {caption}",
)


def reference_image(image: np.ndarray, mask: np.ndarray, box, margin: float = 0.1,
                    background=(127, 127, 127)) -> np.ndarray:
    """The masked object on ``background``, cropped to ``box`` grown by ``margin`` of its size."""
    h, w = mask.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    cx0, cy0 = max(0, int(np.floor(x0 - mx))), max(0, int(np.floor(y0 - my)))
    cx1, cy1 = min(w, int(np.ceil(x1 + mx))), min(h, int(np.ceil(y1 + my)))
    if cx1 <= cx0 or cy1 <= cy0:
        cx0, cy0, cx1, cy1 = 0, 0, w, h
    bg = np.empty_like(image)
    bg[:] = np.asarray(background, np.uint8)
    cut = np.where(mask[..., None], image, bg)
    return np.ascontiguousarray(cut[cy0:cy1, cx0:cx1])


def augment(ref: np.ndarray, rng: np.random.Generator, cfg, background=(127, 127, 127)) -> tuple[np.ndarray, list]:
    """Apply the configured augmentations (an AugmentConfig) with ``rng``; returns (image, what was applied)."""
    import cv2

    applied: list = []
    out = ref
    if cfg.flip > 0 and rng.random() < cfg.flip:
        out = np.ascontiguousarray(out[:, ::-1])
        applied.append({"op": "hflip"})
    lo, hi = cfg.scale
    scale = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    angle = float(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees)) if cfg.rotate_degrees > 0 else 0.0
    if abs(scale - 1.0) > 1e-3 or abs(angle) > 1e-3:
        h, w = out.shape[:2]
        nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        m[0, 2] += (nw - w) / 2
        m[1, 2] += (nh - h) / 2
        out = cv2.warpAffine(out, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=tuple(int(c) for c in background))
        applied.append({"op": "scale_rotate", "scale": round(scale, 4), "degrees": round(angle, 2)})
    if cfg.color_jitter > 0:
        b = float(rng.uniform(1 - cfg.color_jitter, 1 + cfg.color_jitter))
        s = float(rng.uniform(1 - cfg.color_jitter, 1 + cfg.color_jitter))
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1] = np.clip(hsv[..., 1] * s, 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] * b, 0, 255)
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
        applied.append({"op": "color_jitter", "brightness": round(b, 4), "saturation": round(s, 4)})
    return out, applied


def instruction(phrase: str, caption: str, seed_text: str) -> tuple[str, str]:
    """(template_id, instruction) naming the phrase and carrying the caption."""
    return tp.render("subject", TEMPLATES, seed_text, phrase=tp.clean_phrase(phrase), caption=(caption or "").strip())
