"""Degenerate shapes (1x1, 4x2000, 2000x4, 16000x16) get a score from every model filter, through the scorer path
the pipeline uses: the tiny profile plus the real NudeNet and RapidOCR models.

Slivers are padded for the models in one place (``filters.base.fit_for_models``); text coverage stays a share of
the stored image, and padding one image never changes another image's scores.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from unicurate.config import FiltersConfig, ModelsConfig, ResizeConfig
from unicurate.filters.base import (MAX_ASPECT, PAD_COLOUR, SLIVER_MAX_SIDE, BgrInput, Region, bgr_input,
                                    fit_for_models)
from unicurate.filters.nsfw import on_image
from unicurate.filters.scoring import ModelScorer
from unicurate.filters.text_coverage import TextCoverageFilter
from unicurate.models import loaders
from unicurate.download.fetch import Decoder, Fetched

NORMAL = (320, 240)
SHAPES = [(1, 1), (4, 2000), (2000, 4), (16000, 16)]  # width x height of the downloaded originals
COLUMNS = {
    "nudenet": ("clip_score", "aesthetic_score", "nsfw_score", "watermark_score", "text_coverage"),
    "clip_head": ("clip_score", "aesthetic_score", "nsfw_score"),
}


def pattern(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth random colour pattern of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize(size, Image.BILINEAR)


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def stored(data: bytes) -> Fetched:
    """The row's stored image as the curate pipeline makes it: header probe, then img2dataset's resizer."""
    dec = Decoder(ResizeConfig())  # the default resize settings
    out = Fetched(reasons=[])
    img = dec.probe(data, out)
    assert img is not None, out.error
    dec.resize(data, img, out)
    assert out.image is not None and not out.reasons, out.error
    return out


@pytest.fixture(scope="module")
def rows():
    """The normal image first, then the degenerate ones, each as the pipeline stores it."""
    out = []
    for i, size in enumerate([NORMAL, *SHAPES]):
        f = stored(encoded(pattern(size, i)))
        out.append({"image": f.image, "caption": "a colourful abstract pattern", "stored": (f.width, f.height)})
    return out


@pytest.fixture(scope="module")
def scorers():
    models = ModelsConfig(profile="tiny", batch_size=8, preprocess_threads=2)
    made = {
        "nudenet": ModelScorer(FiltersConfig(clip_score={}, aesthetic={}, nsfw={"backend": "nudenet"}, watermark={},
                                             text_coverage={"recognize": True}), models),
        "clip_head": ModelScorer(FiltersConfig(clip_score={}, aesthetic={}, nsfw={"backend": "clip_head"}), models),
    }
    yield made
    for s in made.values():
        s.close()


def test_the_default_resizer_stores_slivers_as_they_are(rows):
    """keep_ratio, image_size 512, resize_only_if_bigger: a short side under 512 is not resized, so a 16000x16
    original is stored (and reaches the models) as 16000x16."""
    for row, size in zip(rows, [NORMAL, *SHAPES]):
        assert row["stored"] == size
        with Image.open(io.BytesIO(row["image"])) as im:
            assert im.size == size


@pytest.mark.parametrize("backend", ["nudenet", "clip_head"])
def test_every_shape_gets_every_score(scorers, rows, backend):
    scorer = scorers[backend]
    batch = [{k: r[k] for k in ("image", "caption")} for r in rows]
    mixed = scorer.score_rows(batch)
    for size, res in zip([NORMAL, *SHAPES], mixed):
        assert res["score_error"] is None, (size, res["score_error"])
        for col in COLUMNS[backend]:
            assert res.get(col) is not None and math.isfinite(res[col]), (size, col, res.get(col))
        assert -1.0 <= res["clip_score"] <= 1.0 and 0.0 <= res["nsfw_score"] <= 1.0
        if backend == "nudenet":
            assert 0.0 <= res["watermark_score"] <= 1.0
            assert 0.0 <= res["text_coverage"] <= 1.0 and res["text_boxes"] >= 0 and res["ocr_text"] is not None
    # padding the slivers does not change the normal image's scores
    alone = scorer.score_rows(batch[:1])[0]
    assert alone["score_error"] is None
    for col in COLUMNS[backend]:
        assert alone[col] == pytest.approx(mixed[0][col], abs=1e-5), col
    if backend == "nudenet":
        assert (alone["text_boxes"], alone["ocr_text"]) == (mixed[0]["text_boxes"], mixed[0]["ocr_text"])


def test_the_shapes_the_models_receive(scorers, rows):
    scorer = scorers["nudenet"]
    for row, size in zip(rows, [NORMAL, *SHAPES]):
        with Image.open(io.BytesIO(row["image"])) as im:
            pil = im.convert("RGB")
        image, region = fit_for_models(pil)
        w, h = image.size
        assert max(w, h) <= MAX_ASPECT * min(w, h)
        # the scorer's preparation gives every model this image (one BGR array for NudeNet and RapidOCR)
        item = scorer._prepare(row)
        assert item["nsfw_input"] is item["ocr_input"] and item["ocr_input"].bgr.shape == (h, w, 3)
        assert item["ocr_input"].region == region
        assert np.array_equal(item["ocr_input"].bgr[:, :, ::-1], np.asarray(image))
        assert tuple(item["clip_input"].shape) == tuple(item["watermark_input"].shape) == (3, 64, 64)
        if max(size) <= MAX_ASPECT * min(size):  # within the limit: untouched, the same object
            assert image is pil and region == Region(0, 0, *size)
            continue
        # a sliver: its long side scaled down to SLIVER_MAX_SIDE at most (short side kept to a pixel), then
        # centred on the neutral padding
        scale = min(1.0, SLIVER_MAX_SIDE / max(size))
        assert (region.width, region.height) == tuple(max(1, round(v * scale)) for v in size)
        assert max(w, h) == max(region.width, region.height) == min(max(size), SLIVER_MAX_SIDE)
        arr = np.asarray(image)
        assert (arr[0, 0] == PAD_COLOUR).all() and (arr[-1, -1] == PAD_COLOUR).all()
        assert abs((region.left * 2 + region.width) - w) <= 1 and abs((region.top * 2 + region.height) - h) <= 1


def test_fit_for_models_geometry():
    wide = pattern((2000, 4), 7)
    image, region = fit_for_models(wide)
    assert image.size == (2000, 125) and region == Region(0, 60, 2000, 4)
    assert np.array_equal(np.asarray(image)[60:64], np.asarray(wide))  # not resampled: pasted as is
    assert fit_for_models(pattern((4, 2000), 7))[1] == Region(60, 0, 4, 2000)
    image, region = fit_for_models(pattern((16000, 16), 7))  # long side scaled down first: 4096 x 4.096
    assert image.size == (SLIVER_MAX_SIDE, 256) and region == Region(0, 126, 4096, 4)
    image, region = fit_for_models(pattern((1, 60000), 7))  # never below one pixel
    assert image.size == (256, SLIVER_MAX_SIDE) and region == Region(127, 0, 1, 4096)
    edge = pattern((16 * 20, 20), 7)  # exactly at the limit: untouched
    assert fit_for_models(edge)[0] is edge
    image, region = fit_for_models(pattern((16 * 20 + 1, 20), 7))
    assert image.size == (321, 21) and region == Region(0, 0, 321, 20)
    grey, _ = fit_for_models(Image.new("L", (400, 10), 30))  # any mode comes out RGB
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == PAD_COLOUR and grey.getpixel((0, 12)) == (30, 30, 30)
    tiny = Image.new("RGB", (1, 1), (9, 9, 9))
    assert fit_for_models(tiny) == (tiny, Region(0, 0, 1, 1))  # every model resizes small images itself


class StubOcr:
    """RapidOCR's interface with fixed boxes (in the pixels of the image it is given)."""

    recognize = True
    coverage = staticmethod(loaders.OcrModel.coverage)

    def __init__(self, boxes, texts):
        self.boxes, self.texts = boxes, texts
        self.seen = None

    def read(self, bgr):
        self.seen = bgr.shape
        return [np.asarray(b, np.float32) for b in self.boxes], list(self.texts)


def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_text_coverage_is_a_share_of_the_stored_image():
    """A 400x10 sliver is padded to 400x25 (rows 7-16 hold the image): a box wholly in the padding does not exist,
    a box across the edge counts for its part on the image, and the denominator is the image's 400x10 pixels."""
    prepared = bgr_input(Image.new("RGB", (400, 10), (240, 240, 240)))
    assert prepared.padded and prepared.region == Region(0, 7, 400, 10) and prepared.bgr.shape == (25, 400, 3)
    model = StubOcr([rect(0, 0, 99, 5), rect(0, 7, 99, 16), rect(200, 2, 299, 11)], ["PAD", "IN", "EDGE"])
    f = TextCoverageFilter(model, threads=1)
    cols = f.score([{f.input_key: prepared}])
    assert model.seen == (25, 400, 3)
    assert cols["text_coverage"] == [pytest.approx((100 * 10 + 100 * 5) / (400 * 10))]
    assert cols["text_boxes"] == [2] and cols["ocr_text"] == ["IN\nEDGE"]
    # a box over the whole padded canvas covers the whole image, never more: also for a scaled-down sliver
    for size in ((400, 10), (16000, 16), (4, 2000)):
        prepared = bgr_input(Image.new("RGB", size))
        h, w = prepared.bgr.shape[:2]
        cols = TextCoverageFilter(StubOcr([rect(0, 0, w - 1, h - 1)], ["ALL"]), threads=1).score(
            [{f.input_key: prepared}])
        assert cols["text_coverage"] == [1.0] and cols["text_boxes"] == [1]
    # an image that needs no padding is measured as before: over all of it
    prepared = bgr_input(Image.new("RGB", (100, 50)))
    assert not prepared.padded
    cols = TextCoverageFilter(StubOcr([rect(0, 0, 49, 49)], ["HALF"]), threads=1).score([{f.input_key: prepared}])
    assert cols["text_coverage"] == [0.5]


def test_real_rapidocr_reads_a_padded_text_sliver(scorers):
    """A 1500x60 text banner (aspect 25) is padded for RapidOCR; the coverage is over the banner's own pixels and
    agrees with RapidOCR run on the unpadded banner (which it can still read at this size)."""
    banner = Image.new("RGB", (1500, 60), (245, 245, 245))
    ImageDraw.Draw(banner).text((10, 6), "SUMMER SALE OPEN DAILY", fill=(10, 10, 10),
                                font=ImageFont.load_default(size=40))
    res = scorers["nudenet"].score_rows([{"image": encoded(banner), "caption": "a shop banner"}])[0]
    assert res["score_error"] is None and res["text_boxes"] >= 1
    assert "SALE" in res["ocr_text"].upper().replace(" ", "")
    prepared = bgr_input(banner)
    assert prepared.padded and prepared.bgr.shape == (94, 1500, 3) and prepared.region == Region(0, 17, 1500, 60)
    assert 0.1 < res["text_coverage"] <= 1.0  # over the canvas it would be 60/94 of this
    ocr = scorers["nudenet"].models["ocr"]
    boxes, _ = ocr.read(np.ascontiguousarray(np.asarray(banner)[:, :, ::-1]))
    assert res["text_coverage"] == pytest.approx(ocr.coverage(boxes, 60, 1500), abs=0.03)


def test_nudenet_detections_in_the_padding_do_not_count():
    prepared = BgrInput(np.zeros((125, 2000, 3), np.uint8), Region(0, 60, 2000, 4))
    dets = [{"class": "BUTTOCKS_EXPOSED", "score": 0.9, "box": [10, 0, 50, 40]},  # wholly above the image
            {"class": "FEMALE_BREAST_EXPOSED", "score": 0.6, "box": [10, 50, 50, 12]},  # across its top edge
            {"class": "ANUS_EXPOSED", "score": 0.8, "box": [10, 64, 50, 50]}]  # wholly below it
    kept = on_image(dets, prepared)
    assert [d["score"] for d in kept] == [0.6]
    assert loaders.NudeNetModel.nsfw_score(kept) == pytest.approx(0.6)
    whole = BgrInput(np.zeros((40, 30, 3), np.uint8), Region(0, 0, 30, 40))
    assert not whole.padded and on_image(dets, whole) == dets
