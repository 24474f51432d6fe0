"""Edit operations, mask checks, subject references and edit checks on drawn images with known masks."""

from __future__ import annotations

import numpy as np
import pytest

from unicurate.config import ChecksConfig, QualityConfig
from unicurate.schema import SynReason
from unicurate.synthesis import checks as ck
from unicurate.synthesis import edits as ed
from unicurate.synthesis import quality, subject, templates
from unicurate.synthesis.edit_types import REGISTRY
from unicurate.synthesis.edit_types.add import add
from unicurate.synthesis.edit_types.background import background
from unicurate.synthesis.edit_types.move import move
from unicurate.synthesis.edit_types.recolor import recolor
from unicurate.synthesis.edit_types.remove import remove
from unicurate.synthesis.edit_types.replace import replace
from unicurate.synthesis.edit_types.resize import resize
from unicurate.synthesis.grounding import Detection

RED = (230, 20, 20)


def scene(h=200, w=300, box=(40, 60, 110, 130), seed=0):
    """A textured background with a red square; returns (image, mask, box xyxy)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 90)], -1).astype(np.int16)
    img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = RED
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return img, mask, np.array(box, np.float32)


def hue_of(rgb_pixels: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb_pixels.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV)[:, 0, 0].astype(int)


def test_remove_changes_only_pixels_inside_the_dilated_mask():
    img, mask, box = scene()
    res = remove(img, mask, box, "red square", ed.TeleaInpainter(5), dilation=0.04, min_dilation_px=3)
    changed = np.any(res.target != res.source, axis=-1)
    assert changed.any()
    assert not changed[~res.region].any(), "remove touched pixels outside the dilated mask"
    assert res.region[mask].all() and res.region.sum() > mask.sum()  # dilated
    px = res.params["dilation_px"]
    assert px == max(3, round(0.04 * np.hypot(70, 70)))
    # the red object is gone: inpainted pixels look like the background, not red
    inside = res.target[mask].astype(int)
    assert np.mean(inside[:, 0] - inside[:, 1]) < 100
    assert ck.change_outside(res.source, res.target, res.region) == 0.0
    assert "red square" in res.instruction and res.template_id.startswith("remove/")


def test_dilation_scales_with_object_size():
    small = ed.dilation_px((0, 0, 20, 20), 0.05, 1)
    big = ed.dilation_px((0, 0, 200, 200), 0.05, 1)
    assert big > small >= 1
    assert ed.dilation_px((0, 0, 2, 2), 0.05, 3) == 3


def test_add_is_the_exact_reverse_of_remove():
    img, mask, box = scene(box=(10, 70, 60, 120))
    removed = remove(img, mask, box, "red square", ed.TeleaInpainter(5))
    added = add(removed, box, "red square")
    assert added.edit_type == "add"
    assert np.array_equal(added.source, removed.target)
    assert np.array_equal(added.target, removed.source)
    assert np.array_equal(added.region, removed.region)
    assert "on the left" in added.instruction


@pytest.mark.parametrize("color", ["red", "green", "blue", "yellow", "purple"])
def test_recolor_lands_on_the_named_hue(color):
    img, mask, box = scene()
    img[mask] = (120, 120, 200)  # a bluish-grey square, so red is a change too
    res = recolor(img, mask, color, "square")
    hues = hue_of(res.target[mask])
    want = templates.COLOR_HUES[color]
    dist = np.minimum(np.abs(hues - want), 180 - np.abs(hues - want))
    assert np.median(dist) <= 3, f"{color}: median hue {np.median(hues)} vs {want}"
    assert np.array_equal(res.target[~mask], img[~mask])
    assert color in res.instruction and res.params["color"] == color


def test_move_leaves_the_object_at_the_new_offset():
    img, mask, box = scene()
    dx, dy = 100, 50
    res = move(img, mask, box, dx, dy, "red square", ed.TeleaInpainter(5))
    moved = np.zeros_like(mask)
    moved[60 + dy:130 + dy, 40 + dx:110 + dx] = True
    assert np.array_equal(res.target[moved], img[mask]), "the object's pixels are not at the new offset"
    old_only = mask & ~moved
    assert not np.all(res.target[old_only] == RED, axis=-1).any(), "the old place still shows the object"
    assert not np.any(res.target != res.source, axis=-1)[~res.region].any()
    assert res.params["dx"] == dx and res.params["dy"] == dy
    assert "right" in res.instruction and "down" in res.instruction


def test_resize_scales_the_object_about_its_centre():
    img, mask, box = scene()
    res = resize(img, mask, box, 1.4, "red square", ed.TeleaInpainter(5))
    red = np.all(res.target == RED, axis=-1)
    b = ed.mask_box(red)
    assert b is not None
    assert abs((b[2] - b[0]) - 98) <= 2 and abs((b[3] - b[1]) - 98) <= 2  # 70 px * 1.4
    assert abs((b[0] + b[2]) / 2 - 75) <= 1.5 and abs((b[1] + b[3]) / 2 - 95) <= 1.5
    assert not np.any(res.target != res.source, axis=-1)[~res.region].any()
    assert "bigger" in res.instruction


def test_background_keeps_the_subject_and_swaps_the_rest():
    img, mask, box = scene()
    other = np.full((100, 150, 3), (10, 200, 10), np.uint8)
    res = background(img, mask, other, "red square", "partner-key")
    assert np.array_equal(res.target[mask], img[mask])
    assert np.all(res.target[~mask] == (10, 200, 10))
    assert res.partner_key == "partner-key"


def test_replace_pastes_the_partner_subject_inside_the_box():
    img, mask, box = scene()
    other, omask, _ = scene(h=120, w=120, box=(20, 30, 60, 110))
    other[omask] = (20, 20, 230)
    res = replace(img, mask, box, "red square", other, omask, "blue bar", "p", ed.TeleaInpainter(5))
    blue = np.all(res.target == (20, 20, 230), axis=-1)
    b = ed.mask_box(blue)
    assert b is not None and b[0] >= 40 - 1 and b[2] <= 110 + 1 and b[1] >= 60 - 1 and b[3] <= 130 + 1
    assert not np.any(res.target != res.source, axis=-1)[~res.region].any()
    assert "blue bar" in res.instruction


def test_quality_rejects_a_mask_covering_95_percent():
    img, _, _ = scene()
    h, w = img.shape[:2]
    mask = np.ones((h, w), bool)
    mask[: int(h * 0.05) + 1] = False
    m = quality.check_mask(mask, (0, 0, w, h), 0.99, 0.99, QualityConfig())
    assert m.mask_area > 0.9
    assert SynReason.MASK_TOO_LARGE.value in m.reasons and not m.ok
    _, good, box = scene()
    assert quality.check_mask(good, box, 0.95, 0.97, QualityConfig()).ok


def test_quality_reasons_each_check():
    h, w = 200, 300
    frag = np.zeros((h, w), bool)
    for k in range(8):  # 8 separate blobs of equal size
        frag[20:40, 10 + 35 * k:30 + 35 * k] = True
    m = quality.check_mask(frag, (10, 20, 290, 40), 0.5, 0.5, QualityConfig(max_contours=5))
    assert {SynReason.LOW_PRED_IOU.value, SynReason.LOW_STABILITY.value, SynReason.FRAGMENTED.value,
            SynReason.TOO_MANY_CONTOURS.value} <= set(m.reasons)
    assert m.contours == 8 and m.largest_component == pytest.approx(1 / 8)
    tiny = np.zeros((h, w), bool)
    tiny[0:3, 0:3] = True
    t = quality.check_mask(tiny, (0, 0, 3, 3), 0.99, 0.99, QualityConfig())
    assert {SynReason.MASK_TOO_SMALL.value, SynReason.BOX_TOO_SMALL.value} <= set(t.reasons)


def test_subject_reference_is_the_cut_out_on_a_neutral_background():
    img, mask, box = scene()
    ref = subject.reference_image(img, mask, box, margin=0.1, background=(127, 127, 127))
    assert ref.shape[:2] == (70 + 14, 70 + 14)
    assert np.all(ref[7:-7, 7:-7] == RED)
    assert np.all(ref[:7] == 127) and np.all(ref[:, :7] == 127)


def test_subject_augmentations_are_recorded_and_deterministic():
    from unicurate.config import AugmentConfig

    img, mask, box = scene()
    ref = subject.reference_image(img, mask, box)
    cfg = AugmentConfig(flip=1.0, scale=(1.2, 1.2), rotate_degrees=0, color_jitter=0)
    out, applied = subject.augment(ref, np.random.default_rng(0), cfg)
    ops = [a["op"] for a in applied]
    assert ops == ["hflip", "scale_rotate"] and out.shape[0] == round(ref.shape[0] * 1.2)
    out2, applied2 = subject.augment(ref, np.random.default_rng(0), cfg)
    assert applied == applied2 and np.array_equal(out, out2)


class StubDetector:
    """Test-only detector: returns the given detections for every image."""

    def __init__(self, detections):
        self.detections = detections
        self.calls = []

    def detect(self, images, captions, box_threshold=None):
        self.calls.append(list(captions))
        return [list(self.detections) for _ in images]


def test_redetection_rejects_a_remove_whose_object_is_still_detected():
    img, mask, box = scene()
    removed = remove(img, mask, box, "red square", ed.TeleaInpainter(5))
    cfg = ChecksConfig(min_clip_similarity=None, max_clip_similarity=None)
    still = StubDetector([Detection(box + 2, 0.9, "red square")])
    v = ck.check_edits([removed], ["red square"], cfg, detector=still, box_threshold=0.35)[0]
    assert SynReason.STILL_DETECTED.value in v["reasons"] and v["redetect_score"] == pytest.approx(0.9)
    assert still.calls == [["red square ."]]
    elsewhere = StubDetector([Detection(np.array([200, 0, 290, 50], np.float32), 0.9, "red square")])
    v = ck.check_edits([removed], ["red square"], cfg, detector=elsewhere, box_threshold=0.35)[0]
    assert v["reasons"] == [] and v["redetect_score"] == 0.0
    added = add(removed, box, "red square")
    v = ck.check_edits([added], ["red square"], cfg, detector=elsewhere, box_threshold=0.35)[0]
    assert v["reasons"] == [SynReason.NOT_DETECTED.value]
    v = ck.check_edits([added], ["red square"], cfg, detector=still, box_threshold=0.35)[0]
    assert v["reasons"] == []


def test_change_outside_and_clip_bounds_reject():
    img, mask, box = scene()
    res = recolor(img, mask, "green", "square")
    tampered = ed.EditResult(res.edit_type, res.source, res.target.copy(), res.region, res.instruction,
                             res.template_id)
    tampered.target[0:50, 200:300] = 0  # outside the mask
    cfg = ChecksConfig(redetect=False, max_change_outside=0.01, min_clip_similarity=None, max_clip_similarity=None)
    v = ck.check_edits([res, tampered], ["square", "square"], cfg)
    assert v[0]["reasons"] == [] and v[0]["change_outside"] == 0.0
    assert v[1]["reasons"] == [SynReason.CHANGE_OUTSIDE_MASK.value] and v[1]["change_outside"] > 0.05
    bounds = ChecksConfig(min_clip_similarity=0.7, max_clip_similarity=0.99)
    assert ck.reasons_for(res, bounds, 0.35, redetect=None, clip_sim=0.5, outside=0.0) == [
        SynReason.CLIP_TOO_DIFFERENT.value]
    assert ck.reasons_for(res, bounds, 0.35, redetect=None, clip_sim=0.999, outside=0.0) == [
        SynReason.CLIP_TOO_SIMILAR.value]


def test_spatial_and_direction_phrases():
    assert templates.where_phrase([0.0, 0.0, 0.2, 0.2]) == "in the top left"
    assert templates.where_phrase([0.8, 0.4, 0.95, 0.6]) == "on the right"
    assert templates.where_phrase([0.4, 0.4, 0.6, 0.6]) == "in the center"
    assert templates.direction_phrase(-30, 0) == "to the left"
    assert templates.direction_phrase(0, -30) == "up"
    tid, text = REGISTRY["recolor"].instruction("k", phrase="cup", color="red")
    assert tid.startswith("recolor/") and "cup" in text and "red" in text
    assert REGISTRY["recolor"].instruction("k", phrase="cup", color="red") == (tid, text)
