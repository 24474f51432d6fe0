"""The sample web itself: deterministic content, correct serving on 127.0.0.1."""

from __future__ import annotations

import io
import urllib.error
import urllib.request

import imagehash
import pyarrow.parquet as pq
from PIL import Image

from unicurate.sampleweb import SampleWeb, expected_counts


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_deterministic_and_distinct():
    a, b = SampleWeb(n_images=12, seed=1), SampleWeb(n_images=12, seed=1)
    assert a.cases == b.cases
    assert all(a.route(c.path).body == b.route(c.path).body for c in a.cases)
    kept = [c for c in a.cases if c.expected == "kept" and c.name.startswith("img-")]
    hashes = {str(imagehash.phash(Image.open(io.BytesIO(a.route(c.path).body)))) for c in kept}
    assert len(hashes) == len(kept)
    assert SampleWeb(n_images=12, seed=2).cases != a.cases
    counts = expected_counts(a.cases)
    assert counts["kept"] == 12 + 2 and counts["http_error"] == 2


def test_serves_cases(web, tmp_path):
    status, headers, body = _get(web.base_url + "/special/noai.jpg")
    assert status == 200 and headers["X-Robots-Tag"] == "noai"
    assert _get(web.base_url + "/special/missing.jpg")[0] == 404
    assert _get(web.base_url + "/special/error.jpg")[0] == 500
    assert _get(web.base_url + "/nowhere")[0] == 404
    status, _, body = _get(web.base_url + "/special/redirect.jpg")  # urllib follows the 302
    assert status == 200 and Image.open(io.BytesIO(body)).size == (500, 375)
    _, headers, body = _get(web.base_url + "/special/page.jpg")
    assert headers["Content-Type"] == "image/jpeg" and body.startswith(b"<!doctype html>")
    first = web.cases[0]
    assert _get(web.base_url + "/special/copy-of-first.jpg")[2] == _get(web.base_url + first.path)[2]
    rows = pq.read_table(web.write_input(tmp_path / "u.parquet")).to_pylist()
    assert len(rows) == len(web.cases) and rows[0]["url"].startswith("http://127.0.0.1:")
