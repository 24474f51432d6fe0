"""Property tests (hypothesis): input readers, row keys, the decode/resize wrapper, and a bounded decode fuzz.

Every test is bounded (``max_examples``) and writes no example database into the repository. Examples are
derandomized so CI runs are reproducible; set ``UNICURATE_HYPOTHESIS_EXPLORE=1`` to draw new examples on each
run (a failure prints the minimal example and a ``@reproduce_failure`` blob).

What the readers normalise (unicurate.download.ingest), and so what the reading properties expect:

* the url is ``str.strip()``-ed (Unicode whitespace); a url that is empty after that becomes a row with
  ``url`` None and ``reject_reasons == ["invalid_input"]`` (the row is still there: nothing is lost);
* captions are passed through unchanged, except that csv/tsv cannot tell a missing caption from an empty one:
  a None caption written as an empty field reads back as ``""`` (jsonl and parquet keep None);
* lone surrogates become U+FFFD (not exercised here: the generated text is valid Unicode).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from unicurate.config import DownloadConfig, InputConfig, ResizeConfig
from unicurate.schema import REASON_CODES

BOUNDED = settings(database=None, deadline=None, derandomize=not os.environ.get("UNICURATE_HYPOTHESIS_EXPLORE"),
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)

# ------------------------------------------------------------------ a. the input readers
# any valid Unicode (no surrogates), with the characters that break naive csv/tsv/jsonl writers and readers
SPECIAL = st.sampled_from([",", '"', "'", "\n", "\r", "\t", " ", "\\", "\x00", "\u2028", "\ufeff",
                           "\x85", "{", "}", "#"])
TEXT = st.text(st.one_of(SPECIAL, st.characters(exclude_categories=("Cs",))), max_size=24)
URL = st.one_of(TEXT, TEXT.map(lambda s: f"https://example.org/{s}.jpg"))
ROWS = st.lists(st.tuples(URL, st.one_of(st.none(), TEXT)), min_size=1, max_size=25)


def _write(folder: Path, fmt: str, rows: list[tuple[str, str | None]], row_group: int) -> Path:
    path = folder / f"in.{fmt}"
    if fmt in ("csv", "tsv"):
        with open(path, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, delimiter="\t" if fmt == "tsv" else ",")
            w.writerow(["url", "caption"])
            w.writerows([(u, "" if c is None else c) for u, c in rows])
    elif fmt == "jsonl":
        with open(path, "w", encoding="utf-8", newline="") as fh:
            for u, c in rows:
                fh.write(json.dumps({"url": u, "caption": c}, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"url": pa.array([u for u, _ in rows], pa.string()),
                          "caption": pa.array([c for _, c in rows], pa.string())})
        pq.write_table(table, path, row_group_size=row_group)
    return path


def read_all(path: Path) -> list[dict]:
    """Read a file the way the curate pipeline does: expand, preflight, plan splits, read each split. The
    driver's count of the input rows (the run's reference) must equal what the reader yields."""
    from unicurate.download import ingest

    cfg = InputConfig(path=str(path))
    files = ingest.expand_inputs(cfg)
    ingest.preflight(files, cfg)
    splits = ingest.plan_splits(files)
    rows = [row for split in splits for row in ingest.read_split(split, cfg)]
    assert sum(ingest.count_rows(s) for s in splits) == len(rows)
    return rows


@settings(BOUNDED, max_examples=100)
@given(rows=ROWS, fmt=st.sampled_from(["csv", "tsv", "jsonl", "parquet"]), row_group=st.integers(1, 8))
def test_readers_give_back_every_row_in_order(rows, fmt, row_group):
    with tempfile.TemporaryDirectory() as d:
        got = read_all(_write(Path(d), fmt, rows, row_group))
    assert len(got) == len(rows)
    assert [r["input_row"] for r in got] == list(range(len(rows)))
    for (url, caption), row in zip(rows, got):
        want_url = url.strip() or None
        assert row["url"] == want_url
        assert row["caption"] == ("" if caption is None and fmt in ("csv", "tsv") else caption)
        if want_url is None:
            assert row["reject_reasons"] == ["invalid_input"] and row["error"]
        else:
            assert "invalid_input" not in row["reject_reasons"], row["error"]
        assert re.fullmatch(r"[0-9a-f]{20}", row["key"])


LINE = st.one_of(
    st.binary(max_size=60),  # anything, invalid UTF-8 included
    st.builds(lambda u, c: json.dumps({"url": u, "caption": c}, ensure_ascii=False).encode(), TEXT, TEXT),
    st.builds(lambda u, c: json.dumps({"url": u, "caption": c}).encode()[:-1], TEXT, TEXT),  # cut short
    st.sampled_from([b"", b"   ", b"\r", b"null", b"[1,2]", b'{"url": 5}', b'{"url": "x", "caption": {"a": 1}}',
                     b'"a,b",c', b'"unterminated', b"\xff\xfe\x00", b"a\x00b,c", b'{"url": "\\ud800x"}']),
)


@settings(BOUNDED, max_examples=150)
@given(lines=st.lists(LINE, max_size=12), fmt=st.sampled_from(["csv", "jsonl"]), final_newline=st.booleans())
def test_arbitrary_bytes_never_make_the_reader_raise(lines, fmt, final_newline):
    """Each non-blank line of a jsonl file is a row (a record or an ``invalid_input`` row); a csv file (after
    its header) gives at most one row per line. A whole-file problem is the preflight's InputError; the
    reader itself never raises."""
    from unicurate.download import ingest

    body = b"\n".join(lines) + (b"\n" if final_newline else b"")
    data = (b"url,caption\n" if fmt == "csv" else b"") + body
    assume(data)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"in.{fmt}"
        path.write_bytes(data)
        cfg = InputConfig(path=str(path))
        files = ingest.expand_inputs(cfg)
        try:
            ingest.preflight(files, cfg)
        except ingest.InputError:
            pass  # e.g. a first jsonl line that is not an object: the file is refused before any work
        rows = []
        n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        splits = ingest.plan_splits(files)
        for split in splits:
            for row in ingest.read_split(split, cfg):
                rows.append(row)
                assert len(rows) <= n_lines  # bounded: also stops a reader that would loop
        # the driver's count before a run (its reference for "every input row is one output row") agrees
        assert sum(ingest.count_rows(s) for s in splits) == len(rows)
    for row in rows:
        assert row["url"] or row["reject_reasons"] == ["invalid_input"], row
        assert set(row["reject_reasons"]) <= set(REASON_CODES)
    if fmt == "jsonl":
        raw = data.split(b"\n")
        assert len(rows) == sum(1 for line in raw if line.decode("utf-8", "replace").strip())
    else:
        assert len(rows) <= max(0, n_lines - 1)


# ------------------------------------------------------------------ c. row keys
@settings(BOUNDED, max_examples=50)
@given(items=st.lists(st.tuples(TEXT, URL, st.integers(0, 5)), min_size=1, max_size=40, unique=True))
def test_row_keys_are_stable_distinct_hex_file_names(items):
    from unicurate.download.ingest import row_key

    keys = [row_key(source, url, occ) for source, url, occ in items]
    assert keys == [row_key(source, url, occ) for source, url, occ in items]  # deterministic
    assert len(set(keys)) == len(keys)  # distinct (source, url, occurrence) -> distinct keys
    for k in keys:
        assert re.fullmatch(r"[0-9a-f]{20}", k)  # fixed length, safe as a file / tar member name
    from unicurate.manifests.export import check_key

    assert [check_key(k) for k in keys] == keys


# ------------------------------------------------------------------ b. the decode + resize wrapper
COMBOS = ([("PNG", m) for m in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")]
          + [("JPEG", m) for m in ("1", "L", "RGB", "CMYK")]
          + [("WEBP", m) for m in ("L", "RGB", "RGBA")]
          + [("GIF", m) for m in ("1", "L", "P", "RGB")]
          + [("BMP", m) for m in ("1", "L", "P", "RGB")]
          + [("TIFF", m) for m in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK")])
_BANDS = {"L": 1, "LA": 2, "P": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}


def make_image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool))
    if mode == "I;16":
        return Image.frombytes("I;16", (w, h), rng.integers(0, 65536, (h, w), dtype=np.uint16).tobytes())
    # a gradient with noise: compresses like a photo, not like white noise
    base = (np.add.outer(np.arange(h), np.arange(w)) * (255 / max(1, w + h)))[..., None]
    arr = (base + rng.integers(0, 40, (h, w, _BANDS[mode]))).clip(0, 255).astype(np.uint8)
    img = Image.frombytes(mode, (w, h), arr.tobytes())
    if mode == "P":
        img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    return img


def encode(img: Image.Image, fmt: str, orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    kw = {}
    if fmt == "JPEG" and orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def decode(data: bytes, cfg: ResizeConfig):
    """Fetcher._decode_safely, the curate pipeline's decode step (no download: the bytes are given)."""
    from unicurate.download.fetch import Fetched, Fetcher

    fetcher = Fetcher(DownloadConfig(thread_count=1), cfg)
    try:
        return fetcher._decode_safely({"url": "https://example.org/x"}, Fetched(reasons=[]), data)
    finally:
        fetcher.close()


def check_result(out, cfg: ResizeConfig) -> None:
    """Either a stored image whose bytes decode to the recorded size, or reasons from the closed set."""
    assert set(out.reasons) <= set(REASON_CODES), out.reasons
    if out.image is None:
        assert out.reasons and out.error, out
        return
    assert out.reasons == [] and out.error is None
    with Image.open(io.BytesIO(out.image)) as im:
        im.load()
        assert im.size == (out.width, out.height)
        assert im.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[cfg.encode_format]
    assert out.original_width * out.original_height <= cfg.max_image_pixels
    assert out.width * out.height <= cfg.max_image_pixels


ENCODER_MAX_SIDE = {"jpg": 65500, "webp": 16383, "png": 2**31 - 1}  # libjpeg, libwebp, PNG limits


def resized_size(cfg: ResizeConfig, ow: int, oh: int) -> tuple[float, float]:
    """About the size the Resizer makes (before rounding), to tell which outputs an encoder can write."""
    s, mode = cfg.image_size, cfg.resize_mode
    side = min(ow, oh) if mode in ("keep_ratio", "center_crop") else max(ow, oh)
    if mode == "no" or (cfg.resize_only_if_bigger and side <= s):
        return float(ow), float(oh)
    if mode in ("center_crop", "border"):
        return float(s), float(s)
    return ow * s / side, oh * s / side


def expected_size(cfg: ResizeConfig, ow: int, oh: int) -> tuple[int, int] | None:
    """The stored size img2dataset's Resizer gives for an (oriented) ow x oh image; None: 'one side is
    image_size and the ratio is kept' (checked separately, as rounding of the other side may vary)."""
    s, mode = cfg.image_size, cfg.resize_mode
    if mode == "no":
        return ow, oh
    side = min(ow, oh) if mode in ("keep_ratio", "center_crop") else max(ow, oh)
    if cfg.resize_only_if_bigger and side <= s:
        return ow, oh
    return (s, s) if mode in ("center_crop", "border") else None


@pytest.mark.parametrize("fmt,img_mode", COMBOS)
@settings(BOUNDED, max_examples=8)
@given(w=st.integers(1, 600), h=st.integers(1, 600), seed=st.integers(0, 2**16), orientation=st.integers(1, 8),
       mode=st.sampled_from(["keep_ratio", "center_crop", "no", "border", "keep_ratio_largest"]),
       only_bigger=st.booleans(), size=st.sampled_from([8, 31, 64, 256, 512]),
       encode_format=st.sampled_from(["jpg", "png", "webp"]))
def test_decoder_stores_valid_images_at_the_configured_size(fmt, img_mode, w, h, seed, orientation, mode,
                                                           only_bigger, size, encode_format):
    """Every mode/format Pillow writes, any size, EXIF orientation (JPEG), every resize mode of ResizeConfig."""
    if fmt != "JPEG":
        orientation = 1  # EXIF orientation is written for JPEG only
    cfg = ResizeConfig(image_size=size, resize_mode=mode, resize_only_if_bigger=only_bigger,
                       encode_format=encode_format, encode_quality=5 if encode_format == "png" else 90)
    rw, rh = resized_size(cfg, *((h, w) if orientation in (5, 6, 7, 8) else (w, h)))
    out = decode(encode(make_image(img_mode, w, h, seed), fmt, orientation), cfg)
    check_result(out, cfg)
    event(f"{mode}{' only_if_bigger' if only_bigger else ''}")
    if rw * rh > cfg.max_image_pixels * 1.01 or max(rw, rh) > ENCODER_MAX_SIDE[encode_format] * 1.01:
        # upscaling a thin image past what can be stored: refused before resizing, saying why
        assert out.image is None and out.reasons in (["decompression_bomb"], ["decode_error"]), out.reasons
        assert "would give" in out.error
        return
    assert out.image is not None, (out.reasons, out.error)  # a valid image is stored, whatever its mode/format
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    assert (out.original_width, out.original_height) == (ow, oh)
    want = expected_size(cfg, ow, oh)
    if want is not None:
        assert (out.width, out.height) == want
    else:  # one side scaled to image_size, the ratio kept to within rounding
        got_side = min(out.width, out.height) if mode == "keep_ratio" else max(out.width, out.height)
        assert got_side == size
        assert abs(out.width * oh - out.height * ow) <= max(ow, oh)


# ------------------------------------------------------------------ d. bounded fuzz of the decode path
def _seed_files() -> list[bytes]:
    img = make_image("RGB", 40, 28, 1)
    frames = [make_image("P", 24, 16, s) for s in (1, 2)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return [encode(img, "PNG"), encode(img, "JPEG", orientation=6), gif.getvalue(), encode(img, "WEBP"),
            encode(make_image("RGBA", 20, 30, 3), "PNG"), encode(make_image("I;16", 18, 12, 4), "TIFF"),
            encode(img, "BMP")]


SEEDS = _seed_files()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite-header"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:  # big numbers where headers keep sizes and lengths (the first 64 bytes)
            j = min(i, 63)
            data[j:j + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"]))
    return bytes(data)


FUZZ_CFG = ResizeConfig(image_size=64, max_image_pixels=250_000)


@pytest.mark.timeout(120)
@settings(BOUNDED, max_examples=600)
@given(data=st.one_of(st.binary(max_size=512), mutated()))
def test_decode_fuzz_never_raises_and_respects_the_pixel_limit(data):
    start = time.monotonic()
    out = decode(data, FUZZ_CFG)
    assert time.monotonic() - start < 10, "one decode took more than 10 s"
    check_result(out, FUZZ_CFG)
    event("stored" if out.image is not None else "rejected: " + ", ".join(out.reasons))
