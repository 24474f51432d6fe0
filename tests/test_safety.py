"""Weights are loaded with safe loaders only: a weights file that is a pickle carrying code is refused.

Every model a recipe can point at a user's file (``models.overrides``) is fed checkpoints whose unpickling
would run code (``open(MARKER, "w")``): a ``torch.save`` zip, a legacy ``torch.save`` file, a plain pickle,
and a pickle named ``.safetensors``. Each load must end in one ModelUnavailable that names the model and the
file, and the marker file must never appear. A control test proves the payloads are live (a plain unpickler
does create the marker), so these tests fail if a loader ever unpickles them in full.
"""

from __future__ import annotations

import argparse
import pickle
import re
import shutil
from pathlib import Path

import pytest

from conftest import syn_base_recipe
from unicurate.config import FiltersConfig, ModelsConfig, parse_recipe
from unicurate.models.resolver import ModelUnavailable


class Payload:
    """Unpickling this object creates ``marker`` (what an attacker's code execution would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


KINDS = ("torch-zip", "torch-legacy", "pickle", "pickle-named-safetensors")


def write_evil(kind: str, folder: Path, marker: Path) -> Path:
    import torch

    content = {"state_dict": {"weight": torch.zeros(2, 2), "payload": Payload(marker)}}
    if kind == "torch-zip":
        path = folder / "evil.pt"
        torch.save(content, path)
    elif kind == "torch-legacy":
        path = folder / "evil.pth"
        torch.save(content, path, _use_new_zipfile_serialization=False)
    else:
        path = folder / ("evil.pkl" if kind == "pickle" else "evil.safetensors")
        path.write_bytes(pickle.dumps({"weight": [0.0] * 4, "payload": Payload(marker)}))
    return path


@pytest.fixture
def evil(tmp_path, request):
    """(kind, path of a malicious weights file of that kind, the marker its payload would create)."""
    marker = tmp_path / "PWNED"
    folder = tmp_path / "weights"
    folder.mkdir()
    return request.param, write_evil(request.param, folder, marker), marker


def check_refused(exc: ModelUnavailable, model: str, path: Path, by_unpickler: bool) -> None:
    """One clear message naming the model and the file; ``by_unpickler``: torch's weights-only unpickler
    refused it (so it was the safe loader that stopped the file, not some earlier unrelated failure)."""
    msg = str(exc)
    assert msg.startswith("model") and re.search(rf"\b{re.escape(model)}\b", msg), msg
    assert str(path) in msg and "cannot load" in msg, msg
    if by_unpickler:
        assert "refused" in msg and "weights_only" in msg, msg


@pytest.mark.parametrize("kind", KINDS)
def test_the_payloads_are_live(tmp_path, kind):
    """Control: a full unpickler does run each payload, so the refusals below are what keeps the marker away."""
    import torch

    marker = tmp_path / "PWNED"
    path = write_evil(kind, tmp_path, marker)
    if kind.startswith("torch"):
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


# ------------------------------------------------------------------ curate: ModelScorer, as each worker builds it
CURATE = {
    "clip": {"clip_score": {}},
    "aesthetic": {"aesthetic": {}},
    "watermark": {"watermark": {}},
    "nsfw_clip_head": {"nsfw": {"backend": "clip_head"}},
    "nudenet": {"nsfw": {"backend": "nudenet"}},
    "ocr_det": {"text_coverage": {}},
    "ocr_rec": {"text_coverage": {"recognize": True}},
}
ONNX = {"nsfw_clip_head", "nudenet", "ocr_det", "ocr_rec"}


@pytest.mark.parametrize("evil", KINDS, indirect=True)
@pytest.mark.parametrize("model", sorted(CURATE))
def test_curate_models_refuse_pickled_code(evil, model):
    from unicurate.filters.scoring import ModelScorer

    kind, path, marker = evil
    mc = ModelsConfig(profile="tiny", offline=True, overrides={model: {"uri": str(path)}})
    with pytest.raises(ModelUnavailable) as info:
        ModelScorer(FiltersConfig(**CURATE[model]), mc)
    assert not marker.exists()
    # ONNX models are protobuf graphs parsed by onnxruntime; a .safetensors name is read by safetensors
    check_refused(info.value, model, path, model not in ONNX and kind != "pickle-named-safetensors")


# ------------------------------------------------------------------ synthesize: load_models, as each worker does
def syn_recipe(models: dict, **sections):
    return parse_recipe(syn_base_recipe("in", "out", models={"offline": True, **models}, **sections))


def bert_folder(tmp_path: Path, weights: Path) -> Path:
    """A BERT folder (the tiny profile's config and vocab) whose only weights file is ``weights``."""
    from unicurate.models import tiny, zoo

    tiny = tiny.bert_dir(zoo.profile_specs("tiny")["text_encoder"])
    folder = tmp_path / "bert"
    folder.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copy(tiny / name, folder / name)
    shutil.copy(weights, folder / "pytorch_model.bin")
    return folder


SYNTH = ("grounding_dino", "text_encoder", "sam", "lama", "clip")


@pytest.mark.parametrize("evil", ["torch-zip", "pickle"], indirect=True)
@pytest.mark.parametrize("model", SYNTH)
def test_synthesis_models_refuse_pickled_code(evil, model, tmp_path):
    from unicurate.synthesis.synthesizer import load_models

    kind, path, marker = evil
    sections: dict = {}
    override = {"uri": str(path)}
    if model == "text_encoder":
        override = {"uri": str(bert_folder(tmp_path, path))}
        path = Path(override["uri"]) / "pytorch_model.bin"
    elif model == "sam":
        override["arch"] = "vit_b"  # a real SAM architecture: the file is read before the (big) model is built
    elif model == "lama":
        sections["edits"] = {"inpainter": "lama"}
    elif model == "clip":
        sections["checks"] = {"clip_similarity": True}
    recipe = syn_recipe({"overrides": {model: override}}, **sections)
    with pytest.raises(ModelUnavailable) as info:
        load_models(recipe)
    assert not marker.exists()
    # big-lama is a TorchScript archive, read by torch.jit.load's own (C++, non-Python-object) unpickler
    check_refused(info.value, model, path, model != "lama")


# ------------------------------------------------------------------ the loader itself
def test_load_weights_reads_safe_formats_and_refuses_code(tmp_path):
    import torch
    from safetensors.torch import save_file

    from unicurate.models.loaders import load_weights

    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    save_file(state, str(tmp_path / "w.safetensors"))
    shutil.copy(tmp_path / "w.safetensors", tmp_path / "w-no-suffix.bin")  # recognised by its header
    torch.save(state, tmp_path / "w.pt")
    torch.save(state, tmp_path / "w-legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("w.safetensors", "w-no-suffix.bin", "w.pt", "w-legacy.pth"):
        got = load_weights(tmp_path / name, f"model 'x': cannot load {name}")
        assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state), name
    # GroundingDINO's checkpoint carries its training args (argparse.Namespace): allowed only when asked for
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "gdino.pth")
    with pytest.raises(ModelUnavailable, match="model 'x'.*refused.*Namespace"):
        load_weights(tmp_path / "gdino.pth", "model 'x': cannot load gdino.pth")
    ck = load_weights(tmp_path / "gdino.pth", "model 'x'", allowed_globals=[argparse.Namespace])
    assert ck["args"].lr == 1e-4 and torch.equal(ck["model"]["w"], state["w"])
    marker = tmp_path / "PWNED"
    torch.save({"model": state, "args": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ModelUnavailable, match="refused"):  # the allowlist is that one class, nothing more
        load_weights(tmp_path / "evil.pth", "model 'x'", allowed_globals=[argparse.Namespace])
    assert not marker.exists()
    with pytest.raises(ModelUnavailable, match=r"model 'x': cannot load junk"):
        load_weights(_write(tmp_path / "junk.pt", b"junk"), "model 'x': cannot load junk")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_weight_uris_cannot_climb_out_of_the_cache(tmp_path):
    """hf:// parts and URL hosts become cache (and mirror) paths: '..' there is refused, not resolved."""
    from unicurate.models.resolver import cache_path, parse_uri, resolve

    cache = tmp_path / "cache"
    for uri in ("hf://org/repo/../../../../escaped.pt", "hf://../repo/w.pt", "hf://org/./w.pt",
                "hf://org/repo/a\\..\\..\\w.pt", "gs://../escaped.pt", "https://../escaped.pt",
                "https://host/a%00b.pt"):
        with pytest.raises(ValueError, match="malformed"):
            parse_uri(uri)
        with pytest.raises(ModelUnavailable, match="model 'clip'"):
            resolve(uri, model="clip", cache_dir=str(cache), offline=True)
    assert not (tmp_path / "escaped.pt").exists() and not cache.exists()
    # '..' in an http(s)/gs path is dropped, so the cache path stays under the scheme's folder of the cache
    for uri in ("https://host/a/../../../x.pt", "gs://bucket/%2e%2e/%2e%2e/x.pt"):
        p = cache_path(uri, str(cache))
        assert p.resolve().is_relative_to(cache.resolve()) and ".." not in p.parts, (uri, p)


def test_a_plain_bert_state_dict_still_loads(tmp_path):
    """The safe pre-check does not refuse real weights: a BERT folder with pytorch_model.bin (a plain state dict)
    builds GroundingDINO's text encoder with those exact weights."""
    import torch
    from safetensors.torch import load_file

    from unicurate.models import tiny, zoo
    from unicurate.models.runtime import Runtime
    from unicurate.synthesis.grounding import GroundingDinoDetector

    specs = zoo.profile_specs("tiny")
    state = load_file(str(tiny.bert_dir(specs["text_encoder"]) / "model.safetensors"))
    torch.save(state, tmp_path / "state.bin")
    folder = bert_folder(tmp_path, tmp_path / "state.bin")
    det = GroundingDinoDetector(specs["grounding_dino"], None, Runtime(),
                                parts={"text_encoder": (specs["text_encoder"], folder)})
    bert = det.model.bert.state_dict()
    key = next(k for k in state if k.endswith("word_embeddings.weight"))
    assert torch.equal(bert[key.removeprefix("bert.")], state[key])
