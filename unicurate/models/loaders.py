"""One loader per model of the curate filters, each with the library the model belongs to.

Each loader is the :mod:`~unicurate.models.handlers` handler of its zoo model: it takes the
:class:`~unicurate.models.zoo.ModelSpec`, the local weights path from the resolver (None for a ``tiny://``
model, built by :mod:`unicurate.models.tiny`) and the :class:`~unicurate.models.runtime.Runtime`, and
returns a small object with batched methods. Torch models run under ``torch.inference_mode()`` on CUDA in
half precision when a GPU is present (``models.device`` / ``models.precision``), on CPU in fp32 otherwise.
Every load is counted in ``runtime.loads`` so tests can prove models load once per worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from unicurate.models import tiny
from unicurate.models.handlers import Loaded, model_record, register_handler
from unicurate.models.resolver import ModelUnavailable, file_sha256
from unicurate.models.runtime import Runtime
from unicurate.models.zoo import TINY_CLIP_ARCH, ModelSpec

log = logging.getLogger("unicurate")

NUDENET_EXPOSED = ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
                   "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")


# ------------------------------------------------------------------ device
def prepare_module(model, runtime: Runtime, channels_last: bool = False):
    """eval() on the device in the run's precision; on CUDA, convolutional nets in channels_last memory
    format (tensor-core friendly) and, with ``models.compile``, wrapped in ``torch.compile``."""
    import torch

    model = model.eval().to(device=runtime.device, dtype=runtime.dtype)
    if runtime.device == "cuda":
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if runtime.compile:
            model = torch.compile(model)
    return model


def device_batch(tensors: Sequence, runtime: Runtime, channels_last: bool = False):
    """Stack preprocessed CPU tensors and move them in one transfer: on CUDA from pinned (page-locked)
    memory, asynchronously, in the run's precision."""
    import torch

    x = torch.stack(list(tensors))
    if runtime.device == "cuda":
        x = x.pin_memory().to(runtime.device, dtype=runtime.dtype, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    return x.to(runtime.device, dtype=runtime.dtype)


def ort_session(source: Any, runtime: Runtime):
    """An onnxruntime session on the runtime's device, its threads capped by ``runtime.cpu_threads``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if runtime.cpu_threads is not None:
        opts.intra_op_num_threads = runtime.cpu_threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(source, sess_options=opts, providers=ort_providers(runtime.device))


def ort_providers(device: str) -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" in avail:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _is_safetensors(path: Path) -> bool:
    """A ``.safetensors`` name, or a safetensors header (8-byte little-endian length, then a JSON object)."""
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < (100 << 20)


def load_weights(path: Path, failure: str, allowed_globals: Sequence[Any] = ()) -> Any:
    """The contents of a weights file, read with safe loaders only; never an arbitrary pickle.

    safetensors files are read with ``safetensors``; anything else with ``torch.load(weights_only=True)``,
    whose unpickler builds tensors and plain containers only and refuses every other global (so a pickle
    that would run code on load is an error, not an execution). ``allowed_globals`` adds plain data
    classes a known checkpoint format carries (GroundingDINO's ``argparse.Namespace``). Zip checkpoints are
    memory-mapped (cheap, also as a pre-check before a library loads the file itself). Any problem raises
    one ModelUnavailable starting with ``failure`` (which names the model and the file).
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        allow: Any = contextlib.nullcontext()
        if allowed_globals:
            if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5: for this load only
                allow = torch.serialization.safe_globals(list(allowed_globals))
            else:  # torch 2.4: process-wide (the classes allowed are plain data containers)
                torch.serialization.add_safe_globals(list(allowed_globals))
        with allow:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 - wrong file, corrupt download, pickled code
        why = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, pickle.UnpicklingError):
            # torch's message goes on to suggest weights_only=False: only the unpickler's finding is kept
            text = str(exc).split("WeightsUnpickler error:", 1)[-1]
            found = next((line.strip() for line in text.splitlines() if line.strip()), "")
            why = ("refused: it is not a plain weights file (weights load only with safetensors or "
                   "torch.load(weights_only=True); pickled objects and code are never loaded): "
                   + found.split(" Please use")[0][:300])
        raise ModelUnavailable(f"{failure}: {why}") from None


def _load_state(module, path: Path, failure: str) -> None:
    """Load a plain state dict with :func:`load_weights`; any problem is one ModelUnavailable."""
    state = load_weights(path, failure)
    try:
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        module.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - wrong file, wrong architecture, corrupt download
        raise ModelUnavailable(f"{failure}: {exc}") from None


# ------------------------------------------------------------------ CLIP (open_clip)
@register_handler("clip")
class ClipModel(Loaded):
    """open_clip image/text towers; normalised embeddings as float32 numpy arrays."""

    def __init__(self, spec: ModelSpec, path: Optional[Path], runtime: Runtime):
        import open_clip

        self.spec, self.device, self.precision, self.runtime = spec, runtime.device, runtime.precision, runtime
        if spec.uri.startswith("tiny://"):
            tiny.register_clip(spec.arch)
            with tiny.seeded(int(spec.options.get("seed", 0))):
                model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=None)
            self.sha256 = tiny.state_dict_sha256(model)
        else:
            failure = f"model 'clip': cannot load {path} as open_clip {spec.arch}"
            # open_clip reads the file itself (safetensors, or torch.load with weights_only=True), but retries a
            # torch.load without weights_only when that raises TypeError: the file is checked here first with
            # the safe loaders, so only a file they accept reaches open_clip (safetensors cannot carry code: not
            # read twice)
            if not _is_safetensors(Path(path)):
                load_weights(path, failure)
            if spec.arch == TINY_CLIP_ARCH:  # a weights file for the tiny architecture (tests, the demo)
                tiny.register_clip(spec.arch)
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.arch, pretrained=str(Path(path).absolute()),
                    force_quick_gelu=bool(spec.options.get("quick_gelu")), weights_only=True)
            except Exception as exc:  # noqa: BLE001 - wrong file for the architecture, corrupt file
                raise ModelUnavailable(f"{failure}: {exc}") from None
            self.sha256 = file_sha256(path, remember=False)
        self.model = model.eval().to(device=runtime.device, dtype=runtime.dtype)
        if runtime.device == "cuda":  # the image tower runs per image: channels_last for its patch conv, compile
            self.model.visual = prepare_module(self.model.visual, runtime, channels_last=True)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(spec.arch)
        self.context_length = getattr(self.tokenizer, "context_length", 77)
        self.embed_dim = int(self.model.text_projection.shape[1]) if getattr(
            self.model, "text_projection", None) is not None else None
        runtime.loaded(spec.name)

    def image_tensor(self, pil_image):
        """CPU preprocessing of one image (run on the preprocessing threads)."""
        return self.preprocess(pil_image)

    def encode_images(self, tensors: Sequence) -> np.ndarray:
        import torch

        if not len(tensors):
            return np.zeros((0, self.embed_dim or 0), np.float32)
        with torch.inference_mode():
            x = device_batch(tensors, self.runtime, channels_last=True)
            f = self.model.encode_image(x).float()
            f = torch.nn.functional.normalize(f, dim=-1)
        out = f.cpu().numpy()
        self.embed_dim = out.shape[1]
        return out

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised text embeddings; texts longer than the context length are truncated by the tokenizer."""
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer([t or "" for t in texts]).to(self.device)
            f = self.model.encode_text(tokens).float()
            f = torch.nn.functional.normalize(f, dim=-1)
        return f.cpu().numpy()


# ------------------------------------------------------------------ LAION aesthetic predictor
def aesthetic_mlp(input_size: int):
    """The LAION improved aesthetic predictor's MLP (same layer names, so its .pth loads as is)."""
    from torch import nn

    class AestheticMLP(nn.Module):
        def __init__(self, input_size: int):
            super().__init__()
            self.input_size = input_size
            self.layers = nn.Sequential(
                nn.Linear(input_size, 1024), nn.Dropout(0.2),
                nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, x):
            return self.layers(x)

    return AestheticMLP(input_size)


@register_handler("aesthetic")
class AestheticModel(Loaded):
    def __init__(self, spec: ModelSpec, path: Optional[Path], runtime: Runtime):
        self.spec, self.device, self.precision = spec, runtime.device, runtime.precision
        dim = int(spec.options.get("input_dim", 768))
        with tiny.seeded(int(spec.options.get("seed", 0))):
            mlp = aesthetic_mlp(dim)
        if path is not None:
            _load_state(mlp, path, f"model 'aesthetic': cannot load {path} as the LAION aesthetic MLP ({dim}-d input)")
            self.sha256 = file_sha256(path, remember=False)
        else:
            self.sha256 = tiny.state_dict_sha256(mlp)
        self.input_dim = dim
        self.model = mlp.eval().to(runtime.device)  # tiny head: fp32 everywhere; cheap
        runtime.loaded(spec.name)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        import torch

        if embeddings.shape[1] != self.input_dim:
            raise ModelUnavailable(f"model 'aesthetic' expects {self.input_dim}-d CLIP embeddings, the recipe's "
                                   f"CLIP model gives {embeddings.shape[1]}-d; use the matching CLIP model")
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(embeddings, np.float32)).to(self.device))
        return out.float().cpu().numpy().reshape(-1)


# ------------------------------------------------------------------ LAION CLIP-based NSFW head (ONNX)
@register_handler("nsfw_clip_head")
class ClipNsfwHead(Loaded):
    """The LAION CLIP-based NSFW classifier on normalised CLIP image embeddings, run by onnxruntime."""

    def __init__(self, spec: ModelSpec, path: Optional[Path], runtime: Runtime):
        self.spec, self.device, self.precision = spec, runtime.device, "fp32"
        if path is None:
            blob = tiny.nsfw_onnx(int(spec.options.get("input_dim", 64)), spec.options.get("hidden", [32, 16]),
                                  int(spec.options.get("seed", 0)))
            self.sha256 = hashlib.sha256(blob).hexdigest()
            source: Any = blob
        else:
            self.sha256 = file_sha256(path, remember=False)
            source = str(path)
        try:
            self.session = ort_session(source, runtime)
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"model 'nsfw_clip_head': cannot load {path or spec.uri} with onnxruntime: "
                                   f"{exc}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dim = inp.shape[-1] if isinstance(inp.shape[-1], int) else None
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        runtime.loaded(spec.name)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        emb = np.ascontiguousarray(embeddings, np.float32)
        if self.input_dim is not None and emb.shape[1] != self.input_dim:
            raise ModelUnavailable(f"model 'nsfw_clip_head' expects {self.input_dim}-d CLIP embeddings, the "
                                   f"recipe's CLIP model gives {emb.shape[1]}-d; use the matching CLIP model")
        if self.fixed_batch and self.fixed_batch != len(emb):  # an export with a fixed batch size
            parts = [self.session.run(None, {self.input_name: emb[i:i + 1]})[0].reshape(-1)[:1]
                     for i in range(len(emb))]
            out = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        else:
            out = self.session.run(None, {self.input_name: emb})[0].reshape(len(emb), -1)[:, -1]
        return np.clip(out.astype(np.float32), 0.0, 1.0)


# ------------------------------------------------------------------ LAION-5B watermark detector (timm)
@register_handler("watermark")
class WatermarkModel(Loaded):
    """timm EfficientNet with LAION's MLP head; watermark probability = softmax(logits)[:, 0]."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, spec: ModelSpec, path: Optional[Path], runtime: Runtime):
        import timm
        from torch import nn
        from torchvision import transforms as T

        self.spec, self.device, self.precision, self.runtime = spec, runtime.device, runtime.precision, runtime
        h1, h2 = spec.options.get("head", [625, 256])
        with tiny.seeded(int(spec.options.get("seed", 0))):
            model = timm.create_model(spec.arch, pretrained=False, num_classes=2)
            model.classifier = nn.Sequential(
                nn.Linear(model.num_features, h1), nn.ReLU(), nn.Dropout(p=0.3),
                nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 2),
            )
        if path is not None:
            _load_state(model, path, f"model 'watermark': cannot load {path} as timm {spec.arch} with the "
                                     f"LAION watermark head")
            self.sha256 = file_sha256(path, remember=False)
        else:
            tiny.seed_batchnorm(model, int(spec.options.get("image_size", 64)), int(spec.options.get("seed", 0)),
                                self.MEAN, self.STD)
            self.sha256 = tiny.state_dict_sha256(model)
        size = int(spec.options.get("image_size", 256))
        self.transform = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(self.MEAN, self.STD)])
        self.model = prepare_module(model, runtime, channels_last=True)
        runtime.loaded(spec.name)

    def image_tensor(self, pil_image):
        return self.transform(pil_image)

    def score(self, tensors: Sequence) -> np.ndarray:
        import torch

        if not len(tensors):
            return np.zeros(0, np.float32)
        with torch.inference_mode():
            x = device_batch(tensors, self.runtime, channels_last=True)
            probs = torch.softmax(self.model(x).float(), dim=1)
        return probs[:, 0].cpu().numpy()


# ------------------------------------------------------------------ NudeNet (ONNX in its package)
@register_handler("nudenet")
class NudeNetModel(Loaded):
    """NudeNet's detector, batched through onnxruntime; nsfw_score = max confidence of an exposed class."""

    def __init__(self, spec: ModelSpec, path: Optional[Path], runtime: Runtime):
        from nudenet import NudeDetector

        self.spec, self.device, self.precision = spec, runtime.device, "fp32"
        try:  # an ONNX file (onnxruntime parses a protobuf graph: no code is loaded)
            self.detector = NudeDetector(model_path=str(path))
            if ort_providers(runtime.device)[0] != "CPUExecutionProvider" or runtime.cpu_threads is not None:
                # NudeDetector itself always builds a CPU session with default threads
                self.detector.onnx_session = ort_session(str(path), runtime)
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"model '{spec.name}': cannot load {path} as the NudeNet ONNX detector: "
                                   f"{type(exc).__name__}: {exc}") from None
        self.sha256 = file_sha256(path, remember=False)
        runtime.loaded(spec.name)

    def detect(self, bgr_images: Sequence[np.ndarray]) -> list[list[dict]]:
        if not len(bgr_images):
            return []
        return self.detector.detect_batch(list(bgr_images), batch_size=len(bgr_images))

    @staticmethod
    def nsfw_score(detections: list[dict]) -> float:
        return max((float(d["score"]) for d in detections if d["class"] in NUDENET_EXPOSED), default=0.0)


# ------------------------------------------------------------------ RapidOCR (ONNX in its package)
@register_handler("ocr_det", key="ocr", parts=("ocr_cls", "ocr_rec"))
class OcrModel(Loaded):
    """RapidOCR text detection (``ocr_det``) and optionally direction classification + recognition (the parts
    ``ocr_cls``, ``ocr_rec``), loaded as one engine; ``max_side``: the longest side fed to the detector."""

    def __init__(self, spec: ModelSpec, path: Path, runtime: Runtime, *, max_side: int,
                 parts: Optional[Mapping[str, tuple[ModelSpec, Path]]] = None):
        from rapidocr_onnxruntime import RapidOCR

        parts = parts or {}
        self.spec, self.device, self.precision = spec, runtime.device, "fp32"
        paths = {spec.name: path, **{name: p for name, (_, p) in parts.items()}}
        kw: dict[str, Any] = {"det_model_path": str(path), "det_limit_type": "max",
                              "det_limit_side_len": int(max_side), "print_verbose": False}
        if "ocr_rec" in parts:
            kw["rec_model_path"] = str(parts["ocr_rec"][1])
        if "ocr_cls" in parts:
            kw["cls_model_path"] = str(parts["ocr_cls"][1])
        if runtime.device == "cuda":
            kw.update(det_use_cuda=True, rec_use_cuda=True, cls_use_cuda=True)
        if runtime.cpu_threads is not None:
            kw.update(intra_op_num_threads=runtime.cpu_threads, inter_op_num_threads=1)
        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        try:  # ONNX files (onnxruntime parses protobuf graphs: no code is loaded)
            self.engine = RapidOCR(**kw)
        except Exception as exc:  # noqa: BLE001
            files = ", ".join(f"{n}={p}" for n, p in sorted(paths.items()))
            raise ModelUnavailable(f"model(s) {', '.join(sorted(paths))}: cannot load RapidOCR's ONNX models "
                                   f"({files}): {type(exc).__name__}: {exc}") from None
        self.recognize = "ocr_rec" in parts
        self.sha256 = file_sha256(path, remember=False)
        self.parts = {name: (part, file_sha256(p, remember=False)) for name, (part, p) in parts.items()}
        runtime.loaded(spec.name)

    def records(self) -> list[dict]:
        return [self.record()] + [model_record(part, sha, self.device, self.precision)
                                  for part, sha in self.parts.values()]

    def read(self, bgr: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
        """Text boxes (4x2 polygons in image pixels) and, when recognising, their text."""
        if self.recognize:
            result, _ = self.engine(bgr, use_det=True, use_cls=True, use_rec=True)
            if not result:
                return [], []
            return [np.asarray(r[0], np.float32) for r in result], [str(r[1]) for r in result]
        result, _ = self.engine(bgr, use_det=True, use_cls=False, use_rec=False)
        return [np.asarray(b, np.float32) for b in (result or [])], []

    @staticmethod
    def coverage(boxes: Sequence[np.ndarray], height: int, width: int) -> float:
        """Share of the image covered by the union of the text polygons."""
        import cv2

        if not boxes or height <= 0 or width <= 0:
            return 0.0
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(b).astype(np.int32).reshape(-1, 1, 2) for b in boxes], 1)
        return float(mask.mean())

