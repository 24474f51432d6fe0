"""Each model filter's batched scoring and decision: tiny profile, plus the real NudeNet and RapidOCR."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from unicurate.config import FiltersConfig, ModelsConfig
from unicurate.filters.scoring import ModelScorer, decide_rows
from unicurate.models import loaders
from unicurate.models.runtime import Runtime, select_device
from unicurate.pipelines.curate import cutoff_from_quantiles

ALL = {"clip_score": {}, "aesthetic": {}, "nsfw": {"backend": "nudenet"}, "watermark": {},
       "text_coverage": {"recognize": True}}


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def flat(size=(320, 240), colour=(90, 140, 200)) -> Image.Image:
    return Image.new("RGB", size, colour)


def with_text(size=(320, 240), text="SUMMER SALE 50%") -> Image.Image:
    img = flat(size, (245, 245, 245))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=36)
    draw.text((12, size[1] // 2 - 60), text, fill=(10, 10, 10), font=font)
    draw.text((12, size[1] // 2 + 10), "OPEN DAILY", fill=(10, 10, 10), font=font)
    return img


def scene(seed: int, size=(256, 256)) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(arr).resize(size, Image.BILINEAR)


@pytest.fixture(scope="module")
def scorer():
    s = ModelScorer(FiltersConfig(**ALL), ModelsConfig(profile="tiny", batch_size=8, preprocess_threads=2))
    yield s
    s.close()


@pytest.fixture(scope="module")
def rows():
    """A batch of mixed sizes, formats of caption, and one corrupt stored image."""
    return [
        {"image": jpeg(flat()), "caption": "a blue wall"},
        {"image": jpeg(with_text()), "caption": "a shop sign that says summer sale"},
        {"image": jpeg(scene(1, (640, 360))), "caption": "a colourful abstract pattern"},
        {"image": jpeg(scene(2, (90, 400))), "caption": "a tall narrow picture " + "very " * 300},
        {"image": b"\xff\xd8\xff\xe0 truncated garbage", "caption": "broken"},
        {"image": jpeg(scene(3, (128, 128)).convert("L").convert("RGB")), "caption": None},
    ]


@pytest.fixture(scope="module")
def scored(scorer, rows):
    return scorer.score_rows(rows)


def test_every_score_column_for_every_good_row(scored):
    for i, res in enumerate(scored):
        if i == 4:
            continue
        assert res["score_error"] is None
        assert -1.0 <= res["clip_score"] <= 1.0
        assert np.isfinite(res["aesthetic_score"])
        assert 0.0 <= res["nsfw_score"] <= 1.0
        assert 0.0 <= res["watermark_score"] <= 1.0
        assert 0.0 <= res["text_coverage"] <= 1.0 and res["text_boxes"] >= 0


def test_a_corrupt_image_is_one_rows_score_error(scored):
    bad = scored[4]
    assert bad["score_error"].startswith("cannot prepare the image")
    assert "clip_score" not in bad


def test_batched_scores_equal_one_by_one(scorer, rows, scored):
    """Batching (mixed image sizes in one forward pass) does not change any score."""
    for i in (0, 2, 3):
        alone = scorer.score_rows([rows[i]])[0]
        for col in ("clip_score", "aesthetic_score", "watermark_score", "nsfw_score", "text_coverage"):
            assert alone[col] == pytest.approx(scored[i][col], abs=1e-4), col


def test_caption_longer_than_clip_context_is_truncated(scorer, rows, scored):
    clip = scorer.models["clip"]
    long_caption = rows[3]["caption"]
    tokens = clip.tokenizer([long_caption])
    assert tokens.shape[1] == clip.context_length == 77
    assert len(long_caption.split()) > 300
    assert np.isfinite(scored[3]["clip_score"])
    # truncation keeps the first tokens: same embedding as a caption cut well past the context length
    emb = clip.encode_texts([long_caption, " ".join(long_caption.split()[:120])])
    assert np.allclose(emb[0], emb[1], atol=1e-5)


def test_clip_score_is_cosine_of_normalised_embeddings(scorer, rows, scored):
    clip = scorer.models["clip"]
    img = clip.encode_images([clip.image_tensor(Image.open(io.BytesIO(rows[0]["image"])).convert("RGB"))])
    txt = clip.encode_texts([rows[0]["caption"]])
    assert np.linalg.norm(img[0]) == pytest.approx(1.0, abs=1e-5)
    assert float(img[0] @ txt[0]) == pytest.approx(scored[0]["clip_score"], abs=1e-4)


def test_text_coverage_real_rapidocr(scored):
    assert scored[1]["text_coverage"] > 0.05 > scored[0]["text_coverage"]
    assert scored[0]["text_coverage"] == 0.0 and scored[0]["text_boxes"] == 0
    assert scored[1]["text_boxes"] >= 1
    assert "SALE" in scored[1]["ocr_text"].upper().replace(" ", "")


def test_nudenet_real_model_batched(scorer):
    nude = scorer.models["nudenet"]
    images = [np.ascontiguousarray(np.asarray(im)[:, :, ::-1]) for im in (flat(), scene(5, (500, 300)),
                                                                           with_text((200, 600)))]
    dets = nude.detect(images)
    assert len(dets) == 3 and all(isinstance(d, list) for d in dets)
    scores = [nude.nsfw_score(d) for d in dets]
    assert scores[0] == scores[2] == 0.0  # nothing exposed in a flat colour or black-on-white text
    assert 0.0 <= scores[1] <= 1.0  # (a smooth random blob can look like skin to a real detector)
    fake = [{"class": "FACE_FEMALE", "score": 0.9}, {"class": "BUTTOCKS_EXPOSED", "score": 0.7}]
    assert nude.nsfw_score(fake) == pytest.approx(0.7)


def test_decisions_from_recorded_scores(scored):
    good = [r for r in scored if r["score_error"] is None]
    cfg = FiltersConfig(clip_score={"min_score": 0.99}, aesthetic={"min_score": -1e9},
                        nsfw={"max_score": 0.5}, watermark={"max_score": 0.0},
                        text_coverage={"max_coverage": 0.05})
    reasons = decide_rows(cfg, good)
    for row, rs in zip(good, reasons):
        assert "low_clip_score" in rs  # no cosine reaches 0.99
        assert "low_aesthetic" not in rs and "nsfw" not in rs
        assert "watermark" in rs  # every probability is > 0
        assert ("too_much_text" in rs) == (row["text_coverage"] > 0.05)
    # thresholds can be overridden (what-if) without the models; unknown names are refused
    relaxed = decide_rows(cfg, good, overrides={"clip_score": {"min_score": -1.0}, "watermark": {"max_score": 1.0}})
    assert all("low_clip_score" not in rs and "watermark" not in rs for rs in relaxed)
    with pytest.raises(KeyError, match="unknown threshold"):
        decide_rows(cfg, good, overrides={"watermark": {"min_score": 1}})
    # rows without scores (never reached the models) get no model reason
    assert decide_rows(cfg, [{"clip_score": None}]) == [[]]


def test_keep_top_fraction_cutoff(scored):
    good = [r for r in scored if r["score_error"] is None]
    values = sorted(r["clip_score"] for r in good)
    cfg = FiltersConfig(clip_score={"keep_top_fraction": 0.5})
    cut = values[len(values) // 2]
    reasons = decide_rows(cfg, good, clip_min_score=cut)
    kept = [r["clip_score"] for r, rs in zip(good, reasons) if not rs]
    assert kept and min(kept) >= cut and len(kept) == sum(v >= cut for v in values)
    q = list(np.linspace(0.0, 1.0, 1001))
    assert cutoff_from_quantiles(q, 0.3) == pytest.approx(0.7)
    assert cutoff_from_quantiles(q, 1.0) == 0.0
    assert cutoff_from_quantiles([], 0.5) is None


def test_clip_nsfw_head_backend_and_embedding_shared(rows):
    cfg = FiltersConfig(aesthetic={}, nsfw={"backend": "clip_head"})
    s = ModelScorer(cfg, ModelsConfig(profile="tiny"))
    try:
        out = s.score_rows([rows[0], rows[2]])
        assert [f.name for f in s.filters] == ["clip_score", "aesthetic", "nsfw"]
        assert not s.filters[0].with_text  # CLIP runs for the embedding only: no clip_score column
        for res in out:
            assert "clip_score" not in res and 0.0 <= res["nsfw_score"] <= 1.0
        assert out[0]["nsfw_score"] != out[1]["nsfw_score"]
        assert s.runtime.loads["clip"] == 1  # one CLIP for both heads
        rec = {r["name"]: r for r in s.model_records()}
        assert set(rec) == {"clip", "aesthetic", "nsfw_clip_head"} and s.uncalibrated
        assert all(len(r["sha256"]) == 64 and r["calibrated"] is False for r in rec.values())
    finally:
        s.close()


def test_tiny_weights_are_seeded(scorer):
    again = loaders.ClipModel(scorer.models["clip"].spec, None, Runtime())
    assert again.sha256 == scorer.models["clip"].sha256
    wm = loaders.WatermarkModel(scorer.models["watermark"].spec, None, Runtime())
    assert wm.sha256 == scorer.models["watermark"].sha256


def test_tiny_watermark_depends_on_the_image(scored):
    values = {round(r["watermark_score"], 6) for r in scored if r["score_error"] is None}
    assert len(values) > 1


def test_device_selection_on_cpu():
    assert select_device("auto", "auto") in (("cpu", "fp32"), ("cuda", "fp16"))
    assert select_device("cpu", "auto") == ("cpu", "fp32")


def test_weight_files_load_through_the_resolver(scorer, rows, scored, tmp_path):
    """The real-weights path, offline: weight files (safetensors / state dicts) named by recipe overrides
    load with open_clip, torch and timm, and give the same scores as the models they were saved from."""
    import torch
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in scorer.models["clip"].model.state_dict().items()},
              str(tmp_path / "clip.safetensors"))
    torch.save(scorer.models["aesthetic"].model.state_dict(), tmp_path / "aesthetic.pth")
    torch.save(scorer.models["watermark"].model.state_dict(), tmp_path / "watermark.pt")
    mc = ModelsConfig(profile="tiny", overrides={
        "clip": {"uri": str(tmp_path / "clip.safetensors")},
        "aesthetic": {"uri": str(tmp_path / "aesthetic.pth")},
        "watermark": {"uri": f"file://{tmp_path / 'watermark.pt'}"},
    })
    s = ModelScorer(FiltersConfig(clip_score={}, aesthetic={}, watermark={}), mc)
    try:
        res = s.score_rows([rows[0], rows[2]])
        for got, want in zip(res, (scored[0], scored[2])):
            for col in ("clip_score", "aesthetic_score", "watermark_score"):
                assert got[col] == pytest.approx(want[col], abs=1e-5), col
        rec = {r["name"]: r for r in s.model_records()}
        assert rec["clip"]["calibrated"] is True  # a weights file replaced the random tiny weights
        import hashlib
        assert rec["aesthetic"]["sha256"] == hashlib.sha256((tmp_path / "aesthetic.pth").read_bytes()).hexdigest()
    finally:
        s.close()
    # a file that is not the model's weights is one clear error naming the model
    (tmp_path / "junk.pt").write_bytes(b"junk")
    bad = ModelsConfig(profile="tiny", overrides={"aesthetic": {"uri": str(tmp_path / "junk.pt")}})
    with pytest.raises(loaders.ModelUnavailable, match="model 'aesthetic': cannot load"):
        ModelScorer(FiltersConfig(aesthetic={}), bad)
