"""Open-vocabulary grounding: GroundingDINO boxes for the caption, then SAM masks for those boxes.

* :class:`GroundingDinoDetector` wraps ``groundingdino-py``: the model is built
  from the package's own config (SwinT-OGC) with ``build_model`` and its
  checkpoint loaded the way the package's ``load_model`` does, except that the
  BERT text encoder directory comes through the weight resolver (so it works
  offline with a staged or local BERT folder). Images of a batch go through
  one forward pass (the model pads them into a ``NestedTensor``), each with
  its own caption; phrases come from the model's token map
  (``get_phrases_from_posmap``); boxes get class-agnostic NMS.
* :class:`SamSegmenter` wraps ``segment-anything``: one image-encoder pass for
  the whole batch, then the prompt encoder and mask decoder with all boxes of
  an image in one call, ``multimask_output=True``, and the mask with the best
  predicted IoU kept with its predicted IoU and stability score (the same
  steps as ``SamPredictor.predict_torch``, batched across images).

The ``tiny`` profile builds the same classes with small shapes and seeded
random weights (:mod:`unicurate.models.tiny`): a 2-layer BERT with a small
word-piece vocabulary written to the model cache, a 1-layer GroundingDINO
transformer on the SwinT backbone, and a 2-layer 256 px SAM ViT. Their outputs
are uncalibrated.

Both are the :mod:`~unicurate.models.handlers` handlers of their zoo models
(``grounding_dino``, with ``text_encoder`` as its part; ``sam``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from unicurate.models import tiny
from unicurate.models.handlers import Loaded, model_record, register_handler
from unicurate.models.loaders import load_weights
from unicurate.models.resolver import ModelUnavailable, file_sha256
from unicurate.models.runtime import Runtime
from unicurate.models.zoo import ModelSpec

log = logging.getLogger("unicurate")


@dataclass
class Detection:
    box: np.ndarray  # xyxy, pixels of the original image
    score: float
    phrase: str


@dataclass
class Segment:
    mask: np.ndarray  # bool HxW
    pred_iou: float
    stability: float


@dataclass
class GroundedObject:
    index: int
    box: np.ndarray
    score: float
    phrase: str
    mask: np.ndarray
    pred_iou: float
    stability: float


def prompt_for(caption: Optional[str]) -> str:
    """GroundingDINO's caption convention: lower case, ending in ' .'."""
    text = " ".join((caption or "").lower().split()).rstrip(" .")
    return (text + " .") if text else ""


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _autocast(device: str, precision: str):
    import torch

    if device == "cuda" and precision in ("fp16", "bf16"):
        return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------ text encoder (a BERT folder)
def text_encoder_weights(path: Path) -> Optional[Path]:
    """The weights file of a BERT folder, as transformers picks it: model.safetensors, else pytorch_model.bin."""
    return next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)


def text_encoder_files_ok(path: Path) -> bool:
    return all((path / n).is_file() for n in ("config.json", "vocab.txt")) and text_encoder_weights(path) is not None


# ------------------------------------------------------------------ GroundingDINO
@register_handler("grounding_dino", parts=("text_encoder",))
class GroundingDinoDetector(Loaded):
    """Batched GroundingDINO (groundingdino-py) with the caption as prompt.

    ``parts["text_encoder"]`` is the BERT folder it builds its text encoder from (a tiny:// one is written to
    ``cache_dir``, models.cache_dir, on first use); it is recorded in the manifest beside the detector.
    """

    def __init__(self, spec: ModelSpec, weights: Optional[Path], runtime: Runtime, *,
                 parts: Mapping[str, tuple[ModelSpec, Optional[Path]]], cache_dir: Optional[str] = None,
                 image_size: Optional[int] = None, box_threshold: float = 0.35, text_threshold: float = 0.25,
                 nms_iou: float = 0.7, max_objects: int = 4):
        with _quiet_stdout():
            from groundingdino.models import build_model
            from groundingdino.util.misc import clean_state_dict
            from groundingdino.util.slconfig import SLConfig

        text_spec, text_dir = parts["text_encoder"]
        if text_dir is None:  # tiny://: built in code, on disk because transformers reads a folder
            text_dir = tiny.bert_dir(text_spec, cache_dir)
        device = runtime.device
        self.spec, self.device, self.precision = spec, device, runtime.precision
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.nms_iou, self.max_objects = nms_iou, max_objects
        self.image_size = int(image_size or spec.options.get("image_size", 800))
        cfg_path = Path(__import__("groundingdino").__file__).parent / "config" / spec.options.get(
            "config", "GroundingDINO_SwinT_OGC.py")
        args = SLConfig.fromfile(str(cfg_path))
        is_tiny = spec.uri.startswith("tiny://")
        if is_tiny and not spec.options.get("full_size"):  # full_size: the real architecture, random (benchmarks)
            for k, v in tiny.GROUNDING_DINO_ARGS.items():
                setattr(args, k, v)
        args.text_encoder_type = str(text_dir)
        args.device = device
        if not text_encoder_files_ok(Path(text_dir)):
            raise ModelUnavailable(f"model 'text_encoder': {text_dir} is not a BERT folder (needs config.json, "
                                   "vocab.txt and model.safetensors or pytorch_model.bin)")
        text_weights = text_encoder_weights(Path(text_dir))
        if text_weights.suffix != ".safetensors":
            # transformers reads pytorch_model.bin with torch.load(weights_only=True) itself; checked here with
            # the same safe loader first, so a bad or pickled-code file is one clear error naming the model
            load_weights(text_weights, f"model 'text_encoder': cannot load {text_weights} as BERT weights")
        ckpt = None
        if not is_tiny:  # read (safely) before the costly build: a wrong file fails fast
            # the official checkpoint is {"model": state dict, ...}; its training args are an argparse.Namespace,
            # a plain attribute container, the only non-tensor class allowed
            ckpt = load_weights(weights, f"model 'grounding_dino': cannot load {weights} as GroundingDINO "
                                         f"{spec.arch}", allowed_globals=[argparse.Namespace])
        import transformers

        transformers.logging.set_verbosity_error()
        with _quiet_stdout(), tiny.seeded(int(spec.options.get("seed", 0))):
            model = build_model(args)
        if is_tiny:
            self.sha256 = tiny.state_dict_sha256(model)
        else:
            try:
                state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
                missing, unexpected = model.load_state_dict(clean_state_dict(state), strict=False)
            except Exception as exc:  # noqa: BLE001
                raise ModelUnavailable(f"model 'grounding_dino': cannot load {weights} as GroundingDINO "
                                       f"{spec.arch}: {exc}") from None
            del ckpt
            if len(missing) > 10:
                raise ModelUnavailable(f"model 'grounding_dino': {weights} does not fit GroundingDINO {spec.arch} "
                                       f"({len(missing)} missing weights, e.g. {missing[:3]})")
            self.sha256 = file_sha256(weights, remember=False)
        self.model = model.eval().to(device)
        self.tokenizer = model.tokenizer
        self._special = set(self.tokenizer.all_special_ids) | set(self.tokenizer.convert_tokens_to_ids(["."]))
        import groundingdino.datasets.transforms as T

        self.transform = T.Compose([T.RandomResize([self.image_size], max_size=int(self.image_size * 1333 / 800)),
                                    T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        self.text_record = model_record(text_spec, file_sha256(text_weights, remember=False), device,
                                        runtime.precision)
        runtime.loaded(spec.name)

    def records(self) -> list[dict]:
        return [self.record(), self.text_record]

    def _truncate(self, prompt: str, max_tokens: int = 250) -> str:
        toks = self.tokenizer.tokenize(prompt)
        if len(toks) <= max_tokens:
            return prompt
        return self.tokenizer.convert_tokens_to_string(toks[: max_tokens - 1]).rstrip(" .") + " ."

    def detect(self, images: Sequence[np.ndarray], captions: Sequence[str],
               box_threshold: Optional[float] = None) -> list[list[Detection]]:
        """Boxes per image (RGB uint8 arrays), each prompted with its own caption."""
        import torch
        from groundingdino.util.misc import nested_tensor_from_tensor_list
        from groundingdino.util.utils import get_phrases_from_posmap
        from PIL import Image
        from torchvision.ops import nms

        bt = self.box_threshold if box_threshold is None else box_threshold
        out: list[list[Detection]] = [[] for _ in images]
        todo = [i for i, c in enumerate(captions) if prompt_for(c)]
        if not todo:
            return out
        prompts = [self._truncate(prompt_for(captions[i])) for i in todo]
        tensors = [self.transform(Image.fromarray(images[i]), None)[0] for i in todo]
        with torch.inference_mode(), _autocast(self.device, self.precision), _quiet_stdout():
            res = self.model(nested_tensor_from_tensor_list([t.to(self.device) for t in tensors]), captions=prompts)
        logits = res["pred_logits"].float().sigmoid().cpu()  # (B, nq, 256)
        boxes = res["pred_boxes"].float().cpu()  # (B, nq, 4) cxcywh, normalised
        for b, i in enumerate(todo):
            h, w = images[i].shape[:2]
            best = logits[b].max(dim=1)[0]
            keep = best > bt
            if not bool(keep.any()):
                continue
            lg, bx, sc = logits[b][keep], boxes[b][keep], best[keep]
            cx, cy, bw, bh = bx.unbind(-1)
            xyxy = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
            valid = ((xyxy[:, 2] - xyxy[:, 0]) >= 1) & ((xyxy[:, 3] - xyxy[:, 1]) >= 1)
            lg, xyxy, sc = lg[valid], xyxy[valid], sc[valid]
            kept = nms(xyxy, sc, self.nms_iou)[: self.max_objects]
            tokenized = self.tokenizer(prompts[b])
            ids = tokenized["input_ids"]
            # [CLS], [SEP] and '.' carry no words: leave them out of the phrase
            words = torch.zeros(lg.shape[1], dtype=torch.bool)
            words[: len(ids)] = torch.tensor([t not in self._special for t in ids], dtype=torch.bool)
            for k in kept.tolist():
                phrase = get_phrases_from_posmap((lg[k] > self.text_threshold) & words, tokenized, self.tokenizer)
                out[i].append(Detection(xyxy[k].numpy().astype(np.float32), float(sc[k]),
                                        phrase.replace(".", "").strip()))
        return out


@contextlib.contextmanager
def _quiet_stdout():
    """groundingdino prints and warns (deprecated torch calls) on build and forward; keep the terminal
    for progress and the funnel."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


# ------------------------------------------------------------------ SAM
@register_handler("sam")
class SamSegmenter(Loaded):
    """Batched SAM: one encoder pass per batch, all boxes of an image in one decoder call."""

    def __init__(self, spec: ModelSpec, weights: Optional[Path], runtime: Runtime):
        from segment_anything import sam_model_registry
        from segment_anything.utils.transforms import ResizeLongestSide

        self.spec, self.device, self.precision = spec, runtime.device, runtime.precision
        if spec.uri.startswith("tiny://") and spec.options.get("full_size"):  # real architecture, random
            with tiny.seeded(int(spec.options.get("seed", 0))):
                sam = sam_model_registry[spec.arch](checkpoint=None)
            self.sha256 = None
        elif spec.uri.startswith("tiny://"):
            sam = tiny.sam(int(spec.options.get("seed", 0)))
            self.sha256 = tiny.state_dict_sha256(sam)
        else:
            arch = spec.arch or "vit_h"
            if arch not in sam_model_registry:
                raise ModelUnavailable(f"model 'sam': unknown SAM architecture {arch!r}; "
                                       f"known: {sorted(sam_model_registry)}")
            # read with the safe loaders before the costly build (segment_anything's own checkpoint= path
            # would torch.load without weights_only)
            state = load_weights(weights, f"model 'sam': cannot load {weights} as SAM {arch}")
            try:
                sam = sam_model_registry[arch](checkpoint=None)
                sam.load_state_dict(state)
            except Exception as exc:  # noqa: BLE001
                raise ModelUnavailable(f"model 'sam': cannot load {weights} as SAM {arch}: {exc}") from None
            self.sha256 = file_sha256(weights, remember=False)
        self.model = sam.eval().to(runtime.device)
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        runtime.loaded(spec.name)

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[np.ndarray]]) -> list[list[Segment]]:
        """Per image (RGB uint8), the best-of-3 mask for each of its boxes (xyxy pixels)."""
        import torch
        from segment_anything.utils.amg import calculate_stability_score

        out: list[list[Segment]] = [[] for _ in images]
        todo = [i for i, bs in enumerate(boxes) if len(bs)]
        if not todo:
            return out
        sam = self.model
        inputs, sizes = [], []
        for i in todo:
            x = self.transform.apply_image(images[i])
            t = torch.as_tensor(x, device=self.device).permute(2, 0, 1).contiguous()[None].float()
            sizes.append(tuple(t.shape[-2:]))
            inputs.append(sam.preprocess(t))
        with torch.inference_mode(), _autocast(self.device, self.precision):
            emb = sam.image_encoder(torch.cat(inputs, 0))
            for b, i in enumerate(todo):
                orig = images[i].shape[:2]
                bt = torch.as_tensor(np.stack(boxes[i]).astype(np.float32), device=self.device)
                bt = self.transform.apply_boxes_torch(bt, orig)
                sparse, dense = sam.prompt_encoder(points=None, boxes=bt, masks=None)
                low, iou = sam.mask_decoder(image_embeddings=emb[b:b + 1], image_pe=sam.prompt_encoder.get_dense_pe(),
                                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                            multimask_output=True)
                logits = sam.postprocess_masks(low.float(), sizes[b], orig)  # (n, 3, H, W)
                best = iou.float().argmax(dim=1)
                ar = torch.arange(len(best), device=best.device)
                chosen = logits[ar, best]
                stab = calculate_stability_score(chosen, sam.mask_threshold, 1.0)
                masks = (chosen > sam.mask_threshold).cpu().numpy()
                ious = iou.float()[ar, best].cpu().numpy()
                for k in range(len(best)):
                    out[i].append(Segment(masks[k], float(ious[k]), float(stab[k])))
        return out


class Grounder:
    """Detector + segmenter: caption -> objects with boxes, phrases, masks and scores."""

    def __init__(self, detector, segmenter):
        self.detector, self.segmenter = detector, segmenter

    def ground(self, images: Sequence[np.ndarray], captions: Sequence[str]) -> list[list[GroundedObject]]:
        dets = self.detector.detect(images, captions)
        segs = self.segmenter.segment(images, [[d.box for d in ds] for ds in dets])
        out = []
        for ds, ss in zip(dets, segs):
            out.append([GroundedObject(k, d.box, d.score, d.phrase, s.mask, s.pred_iou, s.stability)
                        for k, (d, s) in enumerate(zip(ds, ss))])
        return out
