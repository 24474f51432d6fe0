"""From curated rows to subject samples, edit triplets, rejections and one accounting row per image.

:class:`Synthesizer` is plain batched Python (no Beam): the pipeline holds one
per worker process and feeds it batches of curated rows. Per batch it decodes
the images, grounds every caption (GroundingDINO boxes, SAM masks: one forward
each for the batch), checks each mask, cuts subject references, runs the
edits, checks all triplets (re-detection and CLIP: one forward each), and
encodes the outputs. Every input image ends in exactly one ``images`` row:
``produced``, ``no_object``, ``all_rejected`` or ``image_error``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from unicurate.schema import SynReason
from unicurate.synthesis import checks as ck
from unicurate.synthesis import edits as ed
from unicurate.synthesis import quality
from unicurate.synthesis import subject as sj
from unicurate.synthesis import templates as tp
from unicurate.synthesis.edit_types import REGISTRY, EditContext, NoPartner
from unicurate.synthesis.grounding import GroundedObject, prompt_for

log = logging.getLogger("unicurate")


@dataclass
class ImageResult:
    image: dict
    subject: list[dict] = field(default_factory=list)
    edit: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------ encoding
def encode_image(img: np.ndarray, fmt: str = "png", quality_: int = 95) -> bytes:
    import cv2

    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if fmt == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality_)])
    elif fmt == "webp":
        ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, int(quality_)])
    else:
        ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"could not encode a {img.shape} image as {fmt}")
    return buf.tobytes()


def encode_mask(mask: np.ndarray) -> bytes:
    """A 1-bit PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(bool)).convert("1").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 127


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _seed(text: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")


# ------------------------------------------------------------------ models
def load_models(recipe, runtime=None) -> dict[str, Any]:
    """Load every model a synthesize recipe needs (once per worker) with their handlers: grounder, clip,
    inpainter (big-lama, or OpenCV's Telea), and their manifest records. ``runtime``: a
    :class:`~unicurate.models.runtime.Runtime` (default: the one the recipe's ``models`` section asks for)."""
    from unicurate.models import handlers, zoo
    from unicurate.models.runtime import Runtime
    from unicurate.synthesis.grounding import Grounder

    m, g = recipe.models, recipe.grounding
    located = zoo.locate_all(zoo.synthesis_specs(recipe), m)
    options = {"grounding_dino": {"cache_dir": m.cache_dir, "image_size": g.image_size,
                                  "box_threshold": g.box_threshold, "text_threshold": g.text_threshold,
                                  "nms_iou": g.nms_iou, "max_objects": g.max_objects}}
    models = handlers.load_models(located, runtime or Runtime.for_models(m), options)
    inpainter = models.pop("lama", None) or ed.TeleaInpainter(recipe.edits.inpaint_radius)
    return {"grounder": Grounder(models["grounding_dino"], models["sam"]), "clip": models.get("clip"),
            "inpainter": inpainter, "records": handlers.model_records({**models, "inpainter": inpainter})}


# ------------------------------------------------------------------ the synthesizer
class Synthesizer:
    """Batched synthesis for one recipe. Models can be injected (tests use a stub detector); otherwise they load
    with ``runtime`` (default: the one the recipe's ``models`` section asks for), kept as :attr:`runtime`."""

    def __init__(self, recipe, grounder=None, clip=None, inpainter=None, records: Optional[list] = None,
                 runtime=None):
        self.recipe = recipe
        self.runtime = runtime
        if grounder is None:
            from unicurate.models.runtime import Runtime

            self.runtime = runtime or Runtime.for_models(recipe.models)
            loaded = load_models(recipe, self.runtime)
            grounder, clip, inpainter, records = (loaded["grounder"], loaded["clip"], loaded["inpainter"],
                                                  loaded["records"])
        self.grounder = grounder
        self.clip = clip
        self.inpainter = inpainter or ed.TeleaInpainter(recipe.edits.inpaint_radius)
        self.records = records or []
        # images and accepted objects of earlier batches: partners for background/replace when a batch is small
        from collections import deque

        self._pool: deque = deque(maxlen=max(4, 2 * recipe.models.batch_size))

    def reset_partners(self) -> None:
        """Forget the earlier batches' images: a work unit starts with none, so its edits do not depend on the unit
        this process ran before it (a resumed run writes what an uninterrupted one does)."""
        self._pool.clear()

    # ---------------------------------------------------------------- per batch
    def process(self, rows: Sequence[dict]) -> list[ImageResult]:
        r = self.recipe
        self._encoded: dict = {}
        results: list[ImageResult] = []
        images: list[Optional[np.ndarray]] = []
        for row in rows:
            res = ImageResult(image={"source_key": row["key"], "status": "produced", "reject_reasons": [],
                                     "error": None, "caption": row.get("caption"),
                                     "prompt": prompt_for(row.get("caption")), "detections": 0,
                                     "objects_accepted": 0, "subjects": 0, "edits": 0, "rejected": 0})
            try:
                if row.get("image") is None:
                    raise ValueError("the curated row has no image bytes")
                images.append(decode_image(row["image"]))
            except Exception as exc:  # noqa: BLE001 - one bad image never fails the batch
                images.append(None)
                res.image.update(status="image_error", reject_reasons=[SynReason.IMAGE_ERROR.value],
                                 error=f"cannot decode the image: {exc}")
            results.append(res)

        ok = [i for i, im in enumerate(images) if im is not None]
        grounded = self.grounder.ground([images[i] for i in ok], [rows[i].get("caption") or "" for i in ok])
        objects: dict[int, list[GroundedObject]] = {i: objs for i, objs in zip(ok, grounded)}

        accepted: dict[int, list[tuple[GroundedObject, quality.MaskMetrics]]] = {i: [] for i in ok}
        for i in ok:
            res, img = results[i], images[i]
            res.image["detections"] = len(objects[i])
            for obj in objects[i]:
                mm = quality.check_mask(obj.mask, obj.box, obj.pred_iou, obj.stability, r.quality)
                if tp.normalise_phrase(obj.phrase) is None:  # no instruction could name it
                    mm.reasons.append(SynReason.BAD_PHRASE.value)
                if mm.ok:
                    accepted[i].append((obj, mm))
                else:
                    res.rejected.append(self._rejected_object(rows[i], img, obj, mm))
            res.image["objects_accepted"] = len(accepted[i])

        if r.subject.enabled:
            for i in ok:
                for obj, mm in accepted[i]:
                    results[i].subject.append(self._subject(rows[i], images[i], obj, mm))

        # partners for background/replace: this batch's other images, then earlier batches' (negative indices)
        rows_x: dict = {i: rows[i] for i in ok}
        images_x: dict = {i: images[i] for i in ok}
        accepted_x: dict = dict(accepted)
        for k, (prow, pimg, pobjs) in enumerate(self._pool):
            rows_x[-(k + 1)], images_x[-(k + 1)], accepted_x[-(k + 1)] = prow, pimg, pobjs
        pending: list[tuple[int, GroundedObject, ed.EditResult]] = []
        for i in ok:
            for obj, _ in accepted[i]:
                for edit in self._edits_for(i, obj, rows_x, images_x, accepted_x, results[i]):
                    pending.append((i, obj, edit))
        if pending:
            verdicts = ck.check_edits([e for _, _, e in pending], [tp.clean_phrase(o.phrase) for _, o, _ in pending],
                                      r.checks, detector=self.grounder.detector, clip=self.clip,
                                      box_threshold=r.grounding.box_threshold)
            for (i, obj, edit), v in zip(pending, verdicts):
                if v["reasons"]:
                    results[i].rejected.append(self._rejected_edit(rows[i], obj, edit, v["reasons"], v))
                else:
                    results[i].edit.append(self._edit_row(rows[i], obj, edit, v))

        for i in ok:
            res = results[i]
            produced = len(res.subject) + len(res.edit)
            if not produced:
                code = SynReason.NO_OBJECT if not objects[i] else SynReason.ALL_REJECTED
                child = sorted({c for rr in res.rejected for c in rr["reject_reasons"]})
                res.image.update(status=code.value, reject_reasons=[code.value] + child)
        for res in results:
            res.image.update(subjects=len(res.subject), edits=len(res.edit), rejected=len(res.rejected))
        self._encoded = {}
        for i in ok:
            self._pool.appendleft(({"key": rows[i]["key"]}, images[i], [(o, None) for o, _ in accepted[i]]))
        return results

    # ---------------------------------------------------------------- rows
    def _box_norm(self, obj, img) -> list[float]:
        h, w = img.shape[:2]
        return ed.normalised_box(obj.box, w, h)

    def _cached(self, arr: np.ndarray, kind: str, encode) -> bytes:
        """Encode each array once per batch: an image is the source of most of its edits and the target of
        its subject samples, and remove/add share their images and mask. Entries hold the array, so its
        id cannot be reused while the batch runs."""
        key = (id(arr), kind)
        hit = self._encoded.get(key)
        if hit is None:
            hit = self._encoded[key] = (arr, encode(arr))
        return hit[1]

    def _enc(self, img: np.ndarray) -> bytes:
        o = self.recipe.output
        return self._cached(img, "image", lambda a: encode_image(a, o.image_format, o.jpeg_quality))

    def _mask(self, mask: np.ndarray) -> bytes:
        return self._cached(mask, "mask", encode_mask)

    def _rejected_object(self, row, img, obj: GroundedObject, mm: quality.MaskMetrics) -> dict:
        return {"key": f"{row['key']}-o{obj.index}", "source_key": row["key"], "object_index": obj.index,
                "kind": "object", "edit_type": None, "reject_reasons": list(mm.reasons), "error": None,
                "phrase": tp.clean_phrase(obj.phrase), "box": self._box_norm(obj, img), "mask": self._mask(obj.mask),
                "source_image": None, "target_image": None, "instruction": None, "params": None,
                "detection_score": obj.score, "pred_iou": mm.pred_iou, "stability_score": mm.stability,
                "mask_area": mm.mask_area, "box_area": mm.box_area, "largest_component": mm.largest_component,
                "contours": mm.contours, "clip_similarity": None, "change_outside": None, "redetect_score": None}

    def _subject(self, row, img, obj: GroundedObject, mm: quality.MaskMetrics) -> dict:
        s = self.recipe.subject
        key = f"{row['key']}-s{obj.index}"
        ref = sj.reference_image(img, obj.mask, obj.box, s.margin, s.background)
        applied: list = []
        if s.augment is not None:
            rng = np.random.default_rng(_seed(key, self.recipe.seed))
            ref, applied = sj.augment(ref, rng, s.augment, s.background)
        tid, text = sj.instruction(obj.phrase, row.get("caption") or "", f"{self.recipe.seed}:{key}")
        h, w = img.shape[:2]
        return {"key": key, "source_key": row["key"], "object_index": obj.index,
                "phrase": tp.clean_phrase(obj.phrase), "box": self._box_norm(obj, img), "mask": self._mask(obj.mask),
                "reference_image": self._enc(ref), "target_image": self._enc(img),
                "image_format": self.recipe.output.image_format, "width": w, "height": h, "instruction": text,
                "template_id": tid, "caption": row.get("caption"), "augmentations": json.dumps(applied),
                "detection_score": obj.score, "pred_iou": obj.pred_iou, "stability_score": obj.stability,
                "mask_area": mm.mask_area, "largest_component": mm.largest_component}

    def _edit_row(self, row, obj: GroundedObject, e: ed.EditResult, v: dict) -> dict:
        h, w = e.source.shape[:2]
        return {"key": f"{row['key']}-e{obj.index}-{e.edit_type}", "source_key": row["key"],
                "object_index": obj.index, "edit_type": e.edit_type, "instruction": e.instruction,
                "template_id": e.template_id, "source_image": self._enc(e.source), "target_image": self._enc(e.target),
                "mask": self._mask(e.region), "image_format": self.recipe.output.image_format, "width": w,
                "height": h, "phrase": tp.clean_phrase(obj.phrase), "box": ed.normalised_box(obj.box, w, h),
                "caption": row.get("caption"), "params": json.dumps(e.params, sort_keys=True),
                "partner_key": e.partner_key, "detection_score": obj.score, "pred_iou": obj.pred_iou,
                "stability_score": obj.stability, "clip_similarity": v.get("clip_similarity"),
                "change_outside": v.get("change_outside"), "redetect_score": v.get("redetect_score")}

    def _rejected_edit(self, row, obj: GroundedObject, e, reasons: list[str], v: Optional[dict] = None,
                       error: Optional[str] = None, edit_type: Optional[str] = None) -> dict:
        v = v or {}
        keep = self.recipe.output.keep_rejected_images and e is not None
        etype = e.edit_type if e is not None else edit_type
        # the box in the source image's size (an edit that never ran, e.g. no partner, has the row's size): a null
        # in the fixed-size box column would make the Parquet file unreadable (pyarrow rejects it on read)
        img_shape = e.source.shape[:2] if e is not None else (row.get("height"), row.get("width"))
        box = ed.normalised_box(obj.box, img_shape[1], img_shape[0]) if all(img_shape) else [0.0, 0.0, 0.0, 0.0]
        return {"key": f"{row['key']}-e{obj.index}-{etype}", "source_key": row["key"], "object_index": obj.index,
                "kind": "edit", "edit_type": etype, "reject_reasons": list(reasons), "error": error,
                "phrase": tp.clean_phrase(obj.phrase), "box": box,
                "mask": self._mask(e.region) if e is not None else None,
                "source_image": self._enc(e.source) if keep else None,
                "target_image": self._enc(e.target) if keep else None,
                "instruction": e.instruction if e is not None else None,
                "params": json.dumps(e.params, sort_keys=True) if e is not None else None,
                "detection_score": obj.score, "pred_iou": obj.pred_iou, "stability_score": obj.stability,
                "mask_area": float(obj.mask.mean()), "box_area": None, "largest_component": None, "contours": None,
                "clip_similarity": v.get("clip_similarity"), "change_outside": v.get("change_outside"),
                "redetect_score": v.get("redetect_score")}

    # ---------------------------------------------------------------- edits
    def types_for(self, key: str, obj_index: int) -> list[str]:
        types = list(self.recipe.edits.types)
        n = min(self.recipe.edits.per_object, len(types))
        start = tp.choose(f"{self.recipe.seed}:{key}:{obj_index}", len(types), salt="types")
        return [types[(start + j) % len(types)] for j in range(n)]

    def _edits_for(self, i: int, obj: GroundedObject, rows, images, accepted, res: ImageResult):
        """The triplets of one accepted object: each of its edit types (``types_for``) made by the type's
        module; a type that fails or finds no partner becomes a rejected row instead."""
        r = self.recipe
        key = rows[i]["key"]
        ctx = EditContext(index=i, obj=obj, phrase=tp.clean_phrase(obj.phrase), seed_text=f"{r.seed}:{key}:{obj.index}",
                          config=r.edits, inpainter=self.inpainter, rows=rows, images=images, accepted=accepted)
        out = []
        for etype in self.types_for(key, obj.index):
            try:
                out.append(REGISTRY[etype].make(ctx))
            except NoPartner:
                res.rejected.append(self._rejected_edit(rows[i], obj, None, [SynReason.NO_PARTNER.value],
                                                        edit_type=etype))
            except Exception as exc:  # noqa: BLE001 - one failing edit is a recorded rejection, not a crash
                log.debug("edit %s of %s failed", etype, key, exc_info=True)
                res.rejected.append(self._rejected_edit(rows[i], obj, None, [SynReason.EDIT_ERROR.value],
                                                        error=f"{type(exc).__name__}: {exc}", edit_type=etype))
        return out
