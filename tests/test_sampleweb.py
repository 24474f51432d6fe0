"""The sample web itself: deterministic content, correct serving on 127.0.0.1 only."""

from __future__ import annotations

import http.client
import io
import itertools
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import imagehash
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from unicurate.sampleweb import Case, SampleWeb, expected_counts

SLOW = 0.5
SPECIAL_ORDER = ["exif-rotated", "redirect", "http-404", "http-500", "slow", "not-an-image", "truncated-jpeg",
                 "empty-body", "duplicate-image", "tiny", "extreme-aspect", "robots-noai", "empty-caption",
                 "duplicate-url"]
EXPECTED = {"exif-rotated": "kept", "redirect": "kept", "http-404": "http_error", "http-500": "http_error",
            "slow": "timeout", "not-an-image": "not_an_image", "truncated-jpeg": "decode_error",
            "empty-body": "empty_response", "duplicate-image": "duplicate", "tiny": "too_small",
            "extreme-aspect": "aspect_ratio", "robots-noai": "robots_disallowed",
            "empty-caption": "caption_too_short", "duplicate-url": "duplicate_url"}
N_IMAGES = 60


@pytest.fixture(scope="module")
def sw():
    with SampleWeb(n_images=N_IMAGES, seed=0, slow_seconds=SLOW) as web:
        yield web


def _case(web: SampleWeb, name: str) -> Case:
    return next(c for c in web.cases if c.name == name)


def _good(web: SampleWeb) -> list[Case]:
    return [c for c in web.cases if c.name.startswith("img-")]


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    assert urllib.parse.urlsplit(url).hostname == "127.0.0.1"
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def _fetch(web: SampleWeb, name: str) -> tuple[int, dict[str, str], bytes]:
    return _get(web.base_url + _case(web, name).path)


# ------------------------------------------------------------------ content
def test_case_list_layout(sw):
    names = [c.name for c in sw.cases]
    assert len(set(names)) == len(names)
    assert names[:N_IMAGES] == [f"img-{i:03d}" for i in range(N_IMAGES)]
    assert names[N_IMAGES:] == SPECIAL_ORDER
    assert all(c.expected == "kept" for c in sw.cases[:N_IMAGES])
    assert {c.name: c.expected for c in sw.cases[N_IMAGES:]} == EXPECTED
    counts = expected_counts(sw.cases)
    assert counts["kept"] == N_IMAGES + 2 and counts["http_error"] == 2
    assert sum(counts.values()) == len(sw.cases)
    assert all(c.note and "\n" not in c.note for c in sw.cases)
    # the duplicate url repeats the second image's path (after it), with another caption
    dup, second = _case(sw, "duplicate-url"), sw.cases[1]
    assert dup.path == second.path and dup.caption != second.caption
    assert names.index("duplicate-url") > names.index(second.name)
    paths = [c.path for c in sw.cases if c is not dup]
    assert len(set(paths)) == len(paths)
    assert _case(sw, "empty-caption").caption == ""


def test_captions_describe_and_differ(sw):
    captions = [c.caption for c in sw.cases if c.caption]
    assert len(set(captions)) == len(captions)
    assert all(len(c.caption.split()) >= 2 for c in sw.cases if c.name != "empty-caption")
    with_text = [c for c in _good(sw) if '"' in c.caption]
    assert N_IMAGES // 7 <= len(with_text) <= N_IMAGES // 3  # about one in five
    assert all("text" in c.note for c in with_text)


def test_expected_counts_helper():
    cases = [Case("a", "/a", "x y", "kept", "n"), Case("b", "/b", "x y", "kept", "n"),
             Case("c", "/c", None, "http_error", "n")]
    assert expected_counts(cases) == {"kept": 2, "http_error": 1}
    assert expected_counts([]) == {}


def test_deterministic_for_seed(sw):
    other = SampleWeb(n_images=N_IMAGES, seed=0, slow_seconds=SLOW)
    assert other.cases == sw.cases
    assert all(other.route(c.path) == sw.route(c.path) for c in sw.cases)
    assert other.route("/moved/target.jpg") == sw.route("/moved/target.jpg")
    small = [SampleWeb(n_images=4, seed=s) for s in (0, 1)]
    assert small[0].cases != small[1].cases
    assert small[0].route(small[0].cases[0].path)[2] != small[1].route(small[1].cases[0].path)[2]


def test_good_images_are_distinct(sw):
    bodies = [sw.route(c.path)[2] for c in _good(sw)]
    hashes = [hash(b) for b in bodies]
    assert len(set(hashes)) == len(hashes)
    phashes = [imagehash.phash(Image.open(io.BytesIO(b))) for b in bodies]
    assert min(a - b for a, b in itertools.combinations(phashes, 2)) > 4


# ------------------------------------------------------------------ serving
def test_good_images_decode_with_properties(sw):
    good = _good(sw)
    with ThreadPoolExecutor(8) as pool:  # concurrent clients, as the downloader is
        answers = list(pool.map(lambda c: _get(sw.base_url + c.path), good))
    formats, modes = set(), []
    for case, (status, headers, body) in zip(good, answers):
        assert status == 200, case.name
        img = Image.open(io.BytesIO(body))
        img.load()
        formats.add(img.format)
        modes.append((img.format, img.mode))
        assert headers["Content-Type"] == Image.MIME[img.format]
        assert case.path.endswith({"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}[img.format])
        w, h = img.size
        assert 100 <= min(w, h) and max(w, h) <= 1400, (case.name, img.size)
        assert 0.5 <= w / h <= 2.0, (case.name, img.size)
        assert f"{w}x{h}" in case.note
        extrema = img.convert("L").getextrema()
        assert extrema[1] - extrema[0] > 60, case.name  # not a near-uniform image
        if img.mode == "RGBA":
            assert img.getchannel("A").getextrema()[0] < 255  # some transparency
    assert formats == {"JPEG", "PNG", "WEBP"}
    assert [m for m in modes if m[0] == "JPEG"].count(("JPEG", "L")) == 1
    assert modes.count(("PNG", "RGBA")) == 1
    assert sum(f == "JPEG" for f, _ in modes) > len(modes) / 2


def test_exif_rotated(sw):
    status, headers, body = _fetch(sw, "exif-rotated")
    img = Image.open(io.BytesIO(body))
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and img.format == "JPEG"
    assert img.getexif().get(0x0112) == 6
    assert img.size == (400, 300)
    assert ImageOps.exif_transpose(img).size == (300, 400)
    assert "300x400" in _case(sw, "exif-rotated").note


def test_http_errors_and_unknown_paths(sw):
    assert _fetch(sw, "http-404")[0] == 404
    assert _fetch(sw, "http-500")[0] == 500
    assert _get(sw.base_url + "/nowhere.jpg")[0] == 404
    assert _get(sw.base_url + "/img/")[0] == 404


def test_head_matches_get(sw):
    first = sw.cases[0]
    status, headers, body = _get(sw.base_url + first.path, method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) == len(sw.route(first.path)[2])
    assert headers["Content-Type"] == "image/jpeg"
    assert _get(sw.base_url + "/nowhere.jpg", method="HEAD")[0] == 404


def test_redirect(sw):
    host, port = urllib.parse.urlsplit(sw.base_url).hostname, urllib.parse.urlsplit(sw.base_url).port
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", _case(sw, "redirect").path)
        r = conn.getresponse()
        r.read()
        assert r.status == 302
        location = r.getheader("Location")
    finally:
        conn.close()
    assert location.startswith(sw.base_url + "/")
    status, headers, body = _fetch(sw, "redirect")  # urllib follows the 302
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    img = Image.open(io.BytesIO(body))
    img.load()
    assert img.size == (500, 375)
    assert body not in {sw.route(c.path)[2] for c in sw.cases}  # not a duplicate of a listed image


def test_not_an_image(sw):
    status, headers, body = _fetch(sw, "not-an-image")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body.lower().startswith(b"<!doctype html>")
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(body))


def test_truncated_jpeg(sw):
    status, headers, body = _fetch(sw, "truncated-jpeg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    img = Image.open(io.BytesIO(body))
    assert img.format == "JPEG" and img.size == (600, 400)  # the header is intact
    with pytest.raises(OSError):
        img.load()


def test_empty_body(sw):
    status, headers, body = _fetch(sw, "empty-body")
    assert status == 200 and body == b""
    assert headers["Content-Type"] == "image/jpeg" and headers["Content-Length"] == "0"


def test_duplicate_image_bytes(sw):
    first = sw.cases[0]
    status, _, body = _fetch(sw, "duplicate-image")
    assert status == 200 and body == _get(sw.base_url + first.path)[2]
    assert _case(sw, "duplicate-image").path != first.path
    assert _case(sw, "duplicate-image").caption != first.caption


def test_filter_cases_sizes(sw):
    assert Image.open(io.BytesIO(_fetch(sw, "tiny")[2])).size == (16, 16)
    assert Image.open(io.BytesIO(_fetch(sw, "extreme-aspect")[2])).size == (1600, 80)
    status, _, body = _fetch(sw, "empty-caption")
    Image.open(io.BytesIO(body)).load()
    assert status == 200 and body not in {sw.route(c.path)[2] for c in sw.cases if c.name != "empty-caption"}


def test_robots_header(sw):
    status, headers, body = _fetch(sw, "robots-noai")
    assert status == 200 and headers["X-Robots-Tag"] == "noai"
    Image.open(io.BytesIO(body)).load()
    assert "X-Robots-Tag" not in _get(sw.base_url + sw.cases[0].path)[1]


def test_slow_case_waits(sw):
    start = time.monotonic()
    status, _, body = _fetch(sw, "slow")
    assert time.monotonic() - start >= SLOW
    assert status == 200
    Image.open(io.BytesIO(body)).load()


def test_write_input_round_trips(sw, tmp_path):
    path = sw.write_input(tmp_path / "nested" / "dir" / "urls.parquet")
    assert path.exists() and path.name == "urls.parquet"
    table = pq.read_table(path)
    assert table.column_names == ["url", "caption", "license", "expected"]
    assert all(f.type == pa.string() for f in table.schema)
    rows = table.to_pylist()
    assert rows == sw.rows()
    assert len(rows) == len(sw.cases)
    assert [r["expected"] for r in rows] == [c.expected for c in sw.cases]
    assert all(r["url"] == sw.base_url + c.path for r, c in zip(rows, sw.cases))
    assert all(r["url"].startswith("http://127.0.0.1:") for r in rows)
    assert all(r["license"] for r in rows) and len({r["license"] for r in rows}) > 1
    assert rows[[c.name for c in sw.cases].index("empty-caption")]["caption"] == ""


# ---------------------------------------------------------------- lifecycle
def test_lifecycle_and_busy_port():
    web = SampleWeb(n_images=2, seed=3)
    with pytest.raises(RuntimeError):
        web.rows()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        busy_port = busy.getsockname()[1]
        with pytest.warns(RuntimeWarning) as record:
            web.start(port=busy_port)
        try:
            port = urllib.parse.urlsplit(web.base_url).port
            assert port != busy_port
            message = str(record[0].message)
            assert str(busy_port) in message and str(port) in message
            assert _get(web.base_url + web.cases[0].path)[0] == 200
        finally:
            web.stop()
    web.stop()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(web.base_url + web.cases[0].path, timeout=2)
