"""One loader per model, each with the library the model belongs to.

Loaders take a :class:`~unicurate.models.zoo.ModelSpec` and the local weights
path from the resolver, and return a small object with batched methods. Torch
models run under ``torch.inference_mode()`` on CUDA in half precision when a
GPU is present (``models.device`` / ``models.precision``), on CPU in fp32
otherwise. ``tiny://`` specs build the same classes with small shapes and
seeded random weights. Every load is counted per process (``LOAD_COUNTS``) so
tests can prove models load once per worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from unicurate.models.resolver import ModelUnavailable, file_sha256
from unicurate.models.zoo import TINY_CLIP_ARCH, TINY_CLIP_CONFIG, ModelSpec

log = logging.getLogger("unicurate")

LOAD_COUNTS: Counter = Counter()  # model name -> loads in this process
_LOCK = threading.Lock()

NUDENET_EXPOSED = ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
                   "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")


# ------------------------------------------------------------------ device
def select_device(device: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """('cuda'|'cpu', 'fp32'|'fp16'|'bf16') for the recipe's models.device / models.precision."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("models.device is 'cuda' but torch sees no CUDA device on this worker")
    dev = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if precision == "auto":
        precision = "fp16" if dev == "cuda" else "fp32"
    return dev, precision


def _dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


_COMPILE = False  # set by set_compile (models.compile): torch.compile the CUDA vision models


def set_compile(on: bool) -> None:
    global _COMPILE
    _COMPILE = bool(on)


def prepare_module(model, device: str, precision: str, channels_last: bool = False):
    """eval() on the device in the run's precision; on CUDA, convolutional nets in channels_last memory
    format (tensor-core friendly) and, with ``models.compile``, wrapped in ``torch.compile``."""
    import torch

    model = model.eval().to(device=device, dtype=_dtype(precision))
    if device == "cuda":
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if _COMPILE:
            model = torch.compile(model)
    return model


def device_batch(tensors: Sequence, device: str, precision: str, channels_last: bool = False):
    """Stack preprocessed CPU tensors and move them in one transfer: on CUDA from pinned (page-locked)
    memory, asynchronously, in the run's precision."""
    import torch

    x = torch.stack(list(tensors))
    if device == "cuda":
        x = x.pin_memory().to(device, dtype=_dtype(precision), non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    return x.to(device, dtype=_dtype(precision))


_CPU_THREADS: Optional[int] = None  # set by set_cpu_threads: a cap for this process's model threads


def set_cpu_threads(n: Optional[int]) -> None:
    """Cap the CPU threads this process's models use (torch intra-op, onnxruntime sessions, RapidOCR).

    Several worker processes on one machine each default to one thread per core, so N processes run
    N x cores threads that fight over the cores (and onnxruntime's spinning pools burn CPU while waiting).
    The pipelines give each process cores / processes. None leaves the libraries' defaults.
    """
    global _CPU_THREADS
    if n is None:
        return
    _CPU_THREADS = max(1, int(n))
    import torch

    torch.set_num_threads(_CPU_THREADS)


def _ort_session(source: Any, providers: list[str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if _CPU_THREADS is not None:
        opts.intra_op_num_threads = _CPU_THREADS
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(source, sess_options=opts, providers=providers)


def _ort_providers(device: str) -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" in avail:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def state_dict_sha256(module) -> str:
    """A stable fingerprint of a module's weights (for tiny models, which have no file)."""
    sha = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        sha.update(name.encode())
        sha.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return sha.hexdigest()


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


def _count(name: str) -> None:
    with _LOCK:
        LOAD_COUNTS[name] += 1


class Loaded:
    """Common fields of a loaded model (what the manifest records)."""

    spec: ModelSpec
    sha256: Optional[str]
    device: str = "cpu"
    precision: str = "fp32"

    def record(self) -> dict:
        return model_record(self.spec, self.sha256, self.device, self.precision)


def model_record(spec: ModelSpec, sha256: Optional[str], device: str, precision: str) -> dict:
    """What the manifest records of one loaded model."""
    return {"name": spec.name, "title": spec.title, "library": spec.library, "uri": spec.uri, "arch": spec.arch,
            "sha256": sha256, "calibrated": spec.calibrated, "device": device, "precision": precision}


# ------------------------------------------------------------------ CLIP (open_clip)
_TINY_REGISTERED = False


def _register_tiny_clip(name: str) -> None:
    global _TINY_REGISTERED
    if _TINY_REGISTERED:
        return
    import open_clip

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{name}.json"
        path.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(path)
    _TINY_REGISTERED = True


class ClipModel(Loaded):
    """open_clip image/text towers; normalised embeddings as float32 numpy arrays."""

    def __init__(self, spec: ModelSpec, path: Optional[Path], device: str, precision: str):
        import open_clip
        import torch

        self.spec, self.device, self.precision = spec, device, precision
        if spec.uri.startswith("tiny://"):
            _register_tiny_clip(spec.arch)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(spec.options.get("seed", 0)))
                model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=None)
            self.sha256 = state_dict_sha256(model)
        else:
            failure = f"model 'clip': cannot load {path} as open_clip {spec.arch}"
            # open_clip reads the file itself (safetensors, or torch.load with weights_only=True), but retries a
            # torch.load without weights_only when that raises TypeError: the file is checked here first with
            # the safe loaders, so only a file they accept reaches open_clip (safetensors cannot carry code: not
            # read twice)
            if not _is_safetensors(Path(path)):
                load_weights(path, failure)
            if spec.arch == TINY_CLIP_ARCH:  # a weights file for the tiny architecture (tests, the demo)
                _register_tiny_clip(spec.arch)
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.arch, pretrained=str(Path(path).absolute()),
                    force_quick_gelu=bool(spec.options.get("quick_gelu")), weights_only=True)
            except Exception as exc:  # noqa: BLE001 - wrong file for the architecture, corrupt file
                raise ModelUnavailable(f"{failure}: {exc}") from None
            self.sha256 = file_sha256(path, remember=False)
        self.model = model.eval().to(device=device, dtype=_dtype(precision))
        if device == "cuda":  # the image tower is what runs per image: channels_last for its patch conv, compile
            self.model.visual = prepare_module(self.model.visual, device, precision, channels_last=True)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(spec.arch)
        self.context_length = getattr(self.tokenizer, "context_length", 77)
        self.embed_dim = int(self.model.text_projection.shape[1]) if getattr(
            self.model, "text_projection", None) is not None else None
        _count(spec.name)

    def image_tensor(self, pil_image):
        """CPU preprocessing of one image (run on the preprocessing threads)."""
        return self.preprocess(pil_image)

    def encode_images(self, tensors: Sequence) -> np.ndarray:
        import torch

        if not len(tensors):
            return np.zeros((0, self.embed_dim or 0), np.float32)
        with torch.inference_mode():
            x = device_batch(tensors, self.device, self.precision, channels_last=True)
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


class AestheticModel(Loaded):
    def __init__(self, spec: ModelSpec, path: Optional[Path], device: str, precision: str):
        import torch

        self.spec, self.device, self.precision = spec, device, precision
        dim = int(spec.options.get("input_dim", 768))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.options.get("seed", 0)))
            mlp = aesthetic_mlp(dim)
        if path is not None:
            _load_state(mlp, path, f"model 'aesthetic': cannot load {path} as the LAION aesthetic MLP ({dim}-d input)")
            self.sha256 = file_sha256(path, remember=False)
        else:
            self.sha256 = state_dict_sha256(mlp)
        self.input_dim = dim
        self.model = mlp.eval().to(device)  # tiny head: fp32 everywhere; cheap
        _count(spec.name)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        import torch

        if embeddings.shape[1] != self.input_dim:
            raise ModelUnavailable(f"model 'aesthetic' expects {self.input_dim}-d CLIP embeddings, the recipe's "
                                   f"CLIP model gives {embeddings.shape[1]}-d; use the matching CLIP model")
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(embeddings, np.float32)).to(self.device))
        return out.float().cpu().numpy().reshape(-1)


# ------------------------------------------------------------------ LAION CLIP-based NSFW head (ONNX)
def tiny_nsfw_onnx(input_dim: int, hidden: Sequence[int], seed: int) -> bytes:
    """An ONNX MLP (MatMul/Add/Relu ... Sigmoid) with seeded random weights: the tiny NSFW head."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [input_dim, *hidden, 1]
    nodes, inits = [], []
    x = "embedding"
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        w = (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        x = f"a{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Sigmoid", [x], ["nsfw"]))
    graph = helper.make_graph(nodes, "tiny_nsfw_head",
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", input_dim])],
                              [helper.make_tensor_value_info("nsfw", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="unicurate")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class ClipNsfwHead(Loaded):
    """The LAION CLIP-based NSFW classifier on normalised CLIP image embeddings, run by onnxruntime."""

    def __init__(self, spec: ModelSpec, path: Optional[Path], device: str, precision: str):
        self.spec, self.device, self.precision = spec, device, "fp32"
        if path is None:
            blob = tiny_nsfw_onnx(int(spec.options.get("input_dim", 64)), spec.options.get("hidden", [32, 16]),
                                  int(spec.options.get("seed", 0)))
            self.sha256 = hashlib.sha256(blob).hexdigest()
            source: Any = blob
        else:
            self.sha256 = file_sha256(path, remember=False)
            source = str(path)
        try:
            self.session = _ort_session(source, _ort_providers(device))
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"model 'nsfw_clip_head': cannot load {path or spec.uri} with onnxruntime: "
                                   f"{exc}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dim = inp.shape[-1] if isinstance(inp.shape[-1], int) else None
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        _count(spec.name)

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
class WatermarkModel(Loaded):
    """timm EfficientNet with LAION's MLP head; watermark probability = softmax(logits)[:, 0]."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, spec: ModelSpec, path: Optional[Path], device: str, precision: str):
        import timm
        import torch
        from torch import nn
        from torchvision import transforms as T

        self.spec, self.device, self.precision = spec, device, precision
        h1, h2 = spec.options.get("head", [625, 256])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.options.get("seed", 0)))
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
            _seed_batchnorm(model, int(spec.options.get("image_size", 64)), int(spec.options.get("seed", 0)))
            self.sha256 = state_dict_sha256(model)
        size = int(spec.options.get("image_size", 256))
        self.transform = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(self.MEAN, self.STD)])
        self.model = prepare_module(model, device, precision, channels_last=True)
        _count(spec.name)

    def image_tensor(self, pil_image):
        return self.transform(pil_image)

    def score(self, tensors: Sequence) -> np.ndarray:
        import torch

        if not len(tensors):
            return np.zeros(0, np.float32)
        with torch.inference_mode():
            x = device_batch(tensors, self.device, self.precision, channels_last=True)
            probs = torch.softmax(self.model(x).float(), dim=1)
        return probs[:, 0].cpu().numpy()


def _seed_batchnorm(model, size: int, seed: int) -> None:
    """Tiny models: set BatchNorm running statistics from seeded noise images.

    With untouched running stats (mean 0, var 1) a random EfficientNet's output
    is the same for every input; seeded statistics keep the tiny model
    input-dependent (still random, still uncalibrated).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand((16, 3, size, size), generator=gen)
    noise = (noise - torch.tensor(WatermarkModel.MEAN).view(1, 3, 1, 1)) / torch.tensor(WatermarkModel.STD).view(1, 3, 1, 1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for chunk in noise.split(4):
            model(chunk)
    model.eval()


# ------------------------------------------------------------------ NudeNet (ONNX in its package)
class NudeNetModel(Loaded):
    """NudeNet's detector, batched through onnxruntime; nsfw_score = max confidence of an exposed class."""

    def __init__(self, spec: ModelSpec, path: Optional[Path], device: str, precision: str):
        from nudenet import NudeDetector

        self.spec, self.device, self.precision = spec, device, "fp32"
        try:  # an ONNX file (onnxruntime parses a protobuf graph: no code is loaded)
            self.detector = NudeDetector(model_path=str(path))
            providers = _ort_providers(device)
            if providers[0] != "CPUExecutionProvider" or _CPU_THREADS is not None:
                # NudeDetector itself always builds a CPU session with default threads
                self.detector.onnx_session = _ort_session(str(path), providers)
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"model '{spec.name}': cannot load {path} as the NudeNet ONNX detector: "
                                   f"{type(exc).__name__}: {exc}") from None
        self.sha256 = file_sha256(path, remember=False)
        _count(spec.name)

    def detect(self, bgr_images: Sequence[np.ndarray]) -> list[list[dict]]:
        if not len(bgr_images):
            return []
        return self.detector.detect_batch(list(bgr_images), batch_size=len(bgr_images))

    @staticmethod
    def nsfw_score(detections: list[dict]) -> float:
        return max((float(d["score"]) for d in detections if d["class"] in NUDENET_EXPOSED), default=0.0)


# ------------------------------------------------------------------ RapidOCR (ONNX in its package)
class OcrModel(Loaded):
    """RapidOCR text detection (and optionally direction classification + recognition)."""

    def __init__(self, specs: dict[str, ModelSpec], paths: dict[str, Path], device: str, max_side: int):
        from rapidocr_onnxruntime import RapidOCR

        self.spec = specs["ocr_det"]
        self.device, self.precision = device, "fp32"
        kw: dict[str, Any] = {"det_model_path": str(paths["ocr_det"]), "det_limit_type": "max",
                              "det_limit_side_len": int(max_side), "print_verbose": False}
        if "ocr_rec" in paths:
            kw["rec_model_path"] = str(paths["ocr_rec"])
        if "ocr_cls" in paths:
            kw["cls_model_path"] = str(paths["ocr_cls"])
        if device == "cuda":
            kw.update(det_use_cuda=True, rec_use_cuda=True, cls_use_cuda=True)
        if _CPU_THREADS is not None:
            kw.update(intra_op_num_threads=_CPU_THREADS, inter_op_num_threads=1)
        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        try:  # ONNX files (onnxruntime parses protobuf graphs: no code is loaded)
            self.engine = RapidOCR(**kw)
        except Exception as exc:  # noqa: BLE001
            files = ", ".join(f"{n}={p}" for n, p in sorted(paths.items()))
            raise ModelUnavailable(f"model(s) {', '.join(sorted(paths))}: cannot load RapidOCR's ONNX models "
                                   f"({files}): {type(exc).__name__}: {exc}") from None
        self.recognize = "ocr_rec" in paths
        self.sha256 = file_sha256(paths["ocr_det"], remember=False)
        self.extra = {name: (specs[name], file_sha256(p, remember=False)) for name, p in paths.items() if name != "ocr_det"}
        _count(self.spec.name)

    def records(self) -> list[dict]:
        out = [self.record()]
        for spec, sha in self.extra.values():
            rec = dict(self.record())
            rec.update(name=spec.name, title=spec.title, uri=spec.uri, sha256=sha, calibrated=spec.calibrated)
            out.append(rec)
        return out

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

