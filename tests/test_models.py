"""The weight resolver, the model zoo and the `unicurate models` command. No model hub is contacted."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from unicurate.config import FiltersConfig, ModelsConfig
from unicurate.models import zoo
from unicurate.models.resolver import (ChecksumMismatch, ModelUnavailable, file_sha256, parse_uri, resolve,
                                       stage)

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = b"not really weights, but bytes with a checksum" * 100
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def weights_server():
    """An HTTP server on 127.0.0.1 serving one weights file; counts requests."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            hits.append(self.path)
            if self.path == "/models/w.pt":
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)
            else:
                self.send_response(404)
                self.end_headers()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    srv.shutdown()
    srv.server_close()


def test_parse_uri_forms():
    p = parse_uri("hf://timm/vit_large_patch14_clip_224.openai/open_clip_model.safetensors")
    assert (p.scheme, p.repo_id, p.filename, p.revision) == (
        "hf", "timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors", None)
    assert p.relpath == "hf/timm/vit_large_patch14_clip_224.openai/open_clip_model.safetensors"
    assert parse_uri("hf://org/repo@v2/sub/f.bin").revision == "v2"
    assert parse_uri("gs://bucket/a/b.pt").relpath == "gs/bucket/a/b.pt"
    assert parse_uri("https://host.org/x/../y%2Bz.pth").relpath == "https/host.org/x/y+z.pth"
    assert parse_uri("/tmp/w.pt").local == "/tmp/w.pt"
    for bad in ("hf://only-org", "ftp://h/x", "https://host-only"):
        with pytest.raises(ValueError):
            parse_uri(bad)


def test_https_download_cache_and_checksum(weights_server, tmp_path):
    base, hits = weights_server
    cache = str(tmp_path / "cache")
    path = resolve(f"{base}/models/w.pt", model="watermark", sha256=PAYLOAD_SHA, cache_dir=cache, offline=False)
    assert path.read_bytes() == PAYLOAD and str(path).startswith(cache)
    assert path.relative_to(cache).parts[:2] == ("https", base.split("//")[1])
    # the second resolve is served from the cache, even offline
    again = resolve(f"{base}/models/w.pt", model="watermark", sha256=PAYLOAD_SHA, cache_dir=cache, offline=True)
    assert again == path and len(hits) == 1
    # a wrong expected sha256 is refused with a message naming the model
    with pytest.raises(ChecksumMismatch, match="model 'watermark'.*expected " + "0" * 64):
        resolve(f"{base}/models/w.pt", model="watermark", sha256="0" * 64, cache_dir=cache)
    # a 404 names the model, the URI and the staging command
    with pytest.raises(ModelUnavailable) as exc:
        resolve(f"{base}/models/gone.pt", model="aesthetic", cache_dir=cache, offline=False)
    msg = str(exc.value)
    assert "model 'aesthetic'" in msg and f"{base}/models/gone.pt" in msg and "unicurate models fetch" in msg


def test_offline_mode_never_downloads(weights_server, tmp_path, monkeypatch):
    base, hits = weights_server
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for uri in (f"{base}/models/w.pt", "hf://org/repo/model.safetensors"):
        with pytest.raises(ModelUnavailable, match="offline mode is on") as exc:
            resolve(uri, model="clip", cache_dir=str(tmp_path))
        assert uri in str(exc.value) and "unicurate models fetch" in str(exc.value)
    assert hits == []
    # an hf:// file already in the cache resolves offline
    cached = tmp_path / "hf" / "org" / "repo" / "model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(PAYLOAD)
    assert resolve("hf://org/repo/model.safetensors", model="clip", cache_dir=str(tmp_path)) == cached


def test_local_path_and_mirror(tmp_path):
    local = tmp_path / "w.pt"
    local.write_bytes(PAYLOAD)
    assert resolve(str(local), model="x", sha256=PAYLOAD_SHA) == local
    with pytest.raises(ModelUnavailable, match="does not exist"):
        resolve(str(tmp_path / "nope.pt"), model="x")
    # `models fetch --to DIR` writes the cache layout; DIR then serves as models.mirror, offline
    mirror = tmp_path / "mirror"
    staged = stage(str(local), str(mirror), model="x")
    assert Path(staged).read_bytes() == PAYLOAD
    target = mirror / "gs" / "bucket" / "w.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    got = resolve("gs://bucket/w.pt", model="x", cache_dir=str(tmp_path / "cache"), mirror=str(mirror),
                  offline=True, sha256=PAYLOAD_SHA)
    assert got.read_bytes() == PAYLOAD and str(got).startswith(str(tmp_path / "cache"))


def test_file_sha256_sidecar(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(PAYLOAD)
    assert file_sha256(f) == PAYLOAD_SHA
    assert (tmp_path / "w.bin.sha256").read_text().split()[1] == PAYLOAD_SHA
    f.write_bytes(PAYLOAD + b"x")  # changed file: the sidecar is stale and ignored
    assert file_sha256(f) == hashlib.sha256(PAYLOAD + b"x").hexdigest()


def test_profiles_have_the_same_models_and_tiny_is_uncalibrated():
    default, tiny = zoo.profile_specs("default"), zoo.profile_specs("tiny")
    assert set(default) == set(tiny)
    for name, spec in default.items():
        assert spec.calibrated, name
        assert spec.library == tiny[name].library, name
    assert not tiny["clip"].calibrated and tiny["clip"].uri.startswith("tiny://")
    assert default["clip"].arch == "ViT-L-14" and default["clip"].uri.startswith("hf://")
    assert tiny["nudenet"] == default["nudenet"] and tiny["ocr_det"] == default["ocr_det"]  # real in both
    with pytest.raises(ValueError, match="profiles"):
        zoo.profile_specs("huge")


def test_every_zoo_model_has_a_handler():
    from unicurate.models import handlers

    registered = handlers.handlers()
    parts = {p for h in registered.values() for p in h.parts}
    assert set(zoo.profile_specs("default")) <= set(registered) | parts
    assert registered["ocr_det"].key == "ocr" and set(registered["ocr_det"].parts) == {"ocr_cls", "ocr_rec"}


def test_a_module_registers_the_handler_of_its_model(monkeypatch):
    """What a new model's module does: register a handler; load_models then loads it with its options and the
    runtime, counts the load and records it. Unhandled models and orphaned parts are errors."""
    from unicurate.models import handlers
    from unicurate.models.runtime import Runtime

    monkeypatch.setattr(handlers, "_HANDLERS", dict(handlers._HANDLERS))
    spec = zoo.ModelSpec("echo", "a test model", "none", "tiny://test/echo", calibrated=False)

    @handlers.register_handler("echo")
    class Echo(handlers.Loaded):
        def __init__(self, spec, path, runtime, *, factor=1):
            self.spec, self.sha256, self.device, self.factor = spec, None, runtime.device, factor
            runtime.loaded(spec.name)

    runtime = Runtime()
    models = handlers.load_models([(spec, None)], runtime, {"echo": {"factor": 3}})
    assert models["echo"].factor == 3 and runtime.loads == {"echo": 1}
    assert handlers.model_records(models) == [{
        "name": "echo", "title": "a test model", "library": "none", "uri": "tiny://test/echo", "arch": None,
        "sha256": None, "calibrated": False, "device": "cpu", "precision": "fp32"}]
    with pytest.raises(ValueError, match="already has a handler"):
        handlers.register_handler("echo", lambda *a, **k: None)
    with pytest.raises(LookupError, match="no handler loads model 'other'"):
        handlers.load_models([(zoo.ModelSpec("other", "x", "none", "tiny://x"), None)], runtime)
    ocr_cls = zoo.profile_specs("tiny")["ocr_cls"]
    with pytest.raises(LookupError, match="only together with 'ocr_det'"):
        handlers.load_models([(ocr_cls, zoo.locate(ocr_cls))], runtime)


def test_needed_models_follow_the_filters():
    f = FiltersConfig(aesthetic={}, nsfw={"backend": "clip_head"})
    assert zoo.needed_models(f) == ["clip", "aesthetic", "nsfw_clip_head"]
    f = FiltersConfig(nsfw={}, text_coverage={"recognize": True})
    assert zoo.needed_models(f) == ["nudenet", "ocr_det", "ocr_cls", "ocr_rec"]
    assert zoo.needed_models(FiltersConfig()) == []
    mc = ModelsConfig(profile="tiny", overrides={"watermark": {"uri": "/w.pt", "arch": "efficientnet_b0"}})
    specs = zoo.recipe_specs(FiltersConfig(watermark={}), mc)
    assert specs[0].uri == "/w.pt" and specs[0].arch == "efficientnet_b0" and specs[0].calibrated
    with pytest.raises(ValueError, match="unknown model"):
        zoo.recipe_specs(FiltersConfig(), ModelsConfig(overrides={"clipp": {"uri": "/x"}}))


def test_shipped_models_resolve_from_their_packages():
    for name in ("nudenet", "ocr_det", "ocr_rec", "ocr_cls"):
        path = zoo.locate(zoo.profile_specs("default")[name])
        assert path.is_file() and path.suffix == ".onnx" and path.stat().st_size > 100_000


def cli(*args, timeout=120, env_extra=None, cwd=None):
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "unicurate.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def test_models_list_default_profile(tmp_path):
    res = cli("models", "list", "--profile", "default", env_extra={"UNICURATE_MODEL_CACHE": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    for spec in zoo.profile_specs("default").values():
        assert spec.name in res.stdout and spec.uri in res.stdout
    assert "missing" in res.stdout and "in package" in res.stdout
    assert "unicurate models fetch --profile default --to DIR" in res.stdout
    tiny = cli("models", "list", "--profile", "tiny")
    assert tiny.returncode == 0 and "[uncalibrated]" in tiny.stdout and "built-in" in tiny.stdout


def test_laion_recipe_without_weights_fails_fast_before_reading_input(tmp_path):
    """configs/laion-style.yaml on a machine without the weights: one staging message, nothing read."""
    start = time.monotonic()
    res = cli("run", str(ROOT / "configs" / "laion-style.yaml"), "--output", str(tmp_path / "out"),
              env_extra={"UNICURATE_MODEL_CACHE": str(tmp_path / "cache")}, cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert res.returncode == 2, res.stdout + res.stderr
    assert elapsed < 30
    err = res.stderr
    assert "model 'clip'" in err and "hf://timm/vit_large_patch14_clip_224.openai" in err
    assert "unicurate models fetch" in err and "nothing was read" in err
    # the input (data/urls.parquet) does not exist: the models were checked first, and no output was made
    assert "urls.parquet" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_models_fetch_stages_for_a_recipe(weights_server, tmp_path):
    base, _ = weights_server
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "pipeline: curate\ninput: {path: in.csv}\noutput: {path: out}\n"
        "filters: {watermark: {}, nsfw: {}}\n"
        f"models: {{profile: tiny, cache_dir: {tmp_path / 'cache'}, offline: false,\n"
        f"  overrides: {{watermark: {{uri: '{base}/models/w.pt', sha256: {PAYLOAD_SHA}}}}}}}\n")
    res = cli("models", "fetch", "--recipe", str(recipe), "--to", str(tmp_path / "stage"))
    assert res.returncode == 0, res.stderr
    staged = tmp_path / "stage" / "https" / base.split("//")[1] / "models" / "w.pt"
    assert staged.read_bytes() == PAYLOAD
    assert "nudenet: ships in its Python package" in res.stdout
