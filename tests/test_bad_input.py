"""The whole bad-input corpus (tests/hostileweb.py) through the curate pipeline, in one run.

The run is the real CLI in a subprocess whose DNS is the corpus's stand-in (see hostileweb's launcher), so
its peak memory is measured on its own. Every case must end as exactly one row with exactly its expected
reasons, or kept and correctly decoded; nothing may escape as an exception.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

import hostileweb as hw
from conftest import output_frame
from unicurate.manifests.validate import validate
from unicurate.schema import KEPT, REASON_CODES, REASON_STAGE, Reason, Stage

# Peak RSS of the whole run (one in-memory Beam worker: driver and worker are this one process). It holds the
# Python runtime, Beam, img2dataset's resizer, the one 8200x8200 JPEG decoded at full size by OpenCV (202 MB)
# and one response capped at max_bytes (16 MiB), one at a time; without the size cap the endless chunked
# response alone would take it past any bound.
PEAK_RSS_BOUND = 1536 * 1024 * 1024
FENCE_FILE = "fence-attempts.json"  # the launcher's record of connections it refused (beyond loopback)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    with hw.HostileWeb() as web:
        folder = tmp_path_factory.mktemp("badinput")
        inputs = web.write_inputs(folder / "in")
        out = folder / "out"
        recipe = {
            "pipeline": "curate",
            "input": {"path": [str(p) for p in inputs]},
            "output": {"path": str(out), "rows_per_shard": 16},
            "download": {"timeout": hw.TIMEOUT, "max_seconds": hw.MAX_SECONDS, "max_bytes": hw.MAX_BYTES,
                         "thread_count": 16, "retries": 0, "allowed_networks": ["127.0.0.1/32"]},
            "resize": {"image_size": hw.IMAGE_SIZE, "encode_quality": 95},
            "filters": {"min_width": hw.MIN_SIDE, "min_height": hw.MIN_SIDE, "max_aspect_ratio": hw.MAX_ASPECT,
                        "caption_min_words": 1, "caption_max_words": hw.MAX_WORDS},
            "models": {"profile": "tiny"},
            "runner": {"direct_num_workers": 1},
        }
        recipe_path = folder / "recipe.yaml"
        recipe_path.write_text(json.dumps(recipe))
        rss_file = folder / "peak-rss"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
        proc = subprocess.run(
            [sys.executable, str(Path(hw.__file__)), "--hosts", json.dumps(web.hosts), "--rss-file", str(rss_file),
             "--fence-file", str(folder / FENCE_FILE), "--", "run", str(recipe_path)],
            capture_output=True, text=True, timeout=240, env=env)
        yield web, out, proc, int(rss_file.read_text()) if rss_file.exists() else None


@pytest.fixture(scope="module")
def rows(corpus) -> tuple[pl.DataFrame, dict[str, dict]]:
    """The run's rows (kept, then rejected) and each row by its case's name."""
    df = output_frame(corpus[1])
    return df, {json.loads(r["metadata"])["case"]: r for r in df.iter_rows(named=True)}


def test_run_finishes_without_an_exception(corpus):
    _, out, proc, _ = corpus
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert validate(str(out)).ok


def test_inputs_equal_kept_plus_rejected(corpus, rows):
    web, out, _, _ = corpus
    manifest = json.loads((out / "manifest.json").read_text())
    df, _ = rows
    counts = manifest["counts"]
    assert counts["inputs"] == len(web.cases) == df.height
    assert counts["inputs"] == counts["kept"] + counts["rejected"]
    assert df.filter(pl.col("status") == KEPT).height == counts["kept"]
    assert df["key"].n_unique() == df.height
    cases = [json.loads(m)["case"] for m in df["metadata"]]
    assert sorted(cases) == sorted(c.name for c in web.cases)  # each case exactly once


def test_every_case_has_its_expected_outcome(corpus, rows):
    web = corpus[0]
    _, by_case = rows
    wrong = {}
    for case in web.cases:
        row = by_case[case.name]
        got = frozenset(row["reject_reasons"])
        if got != case.expected:
            wrong[case.name] = (sorted(case.expected) or "kept", sorted(got) or "kept", row["error"])
    assert not wrong, json.dumps(wrong, indent=1, default=str)


def test_rejections_explain_themselves(rows):
    """A rejected download or decode names what went wrong; nobody has to guess from a reason code alone."""
    df, by_case = rows
    for row in df.iter_rows(named=True):
        stages = {REASON_STAGE[Reason(r)] for r in row["reject_reasons"]}
        assert all(r in REASON_CODES for r in row["reject_reasons"])
        if stages & {Stage.DOWNLOAD, Stage.DECODE} or Reason.INVALID_CAPTION.value in row["reject_reasons"]:
            assert row["error"] and len(row["error"]) > 10, row
        if Reason.INVALID_INPUT.value in row["reject_reasons"]:
            assert row["error"]
    assert "10.0.0.1" in by_case["redirect-to-private-ip"]["error"]
    assert "127.0.0.3" in by_case["name-resolving-to-loopback"]["error"]
    assert "Content-Length" in by_case["content-length-more-than-body"]["error"]
    assert "U+FFFD" in by_case["caption-invalid-utf8"]["error"]
    for name, address in (("cloud-metadata-ip", "169.254.169.254"), ("redirect-to-cloud-metadata", "169.254.169.254"),
                          ("name-resolving-to-cloud-metadata", "169.254.169.254"),
                          ("redirect-to-name-on-cloud-metadata", "169.254.169.254"),
                          ("decimal-metadata-ip", "169.254.169.254"), ("ipv4-mapped-metadata-ip", "169.254.169.254"),
                          ("aws-ipv6-metadata-ip", "fd00:ec2::254"),
                          ("name-resolving-to-aws-ipv6-metadata", "fd00:ec2::254")):
        error = by_case[name]["error"]
        assert address in error and "metadata" in error, (name, error)
    assert "once decoded" in by_case["gzip-bomb"]["error"]
    assert "'br'" in by_case["brotli-encoded"]["error"]
    assert "not valid gzip" in by_case["gzip-label-on-plain-jpeg"]["error"]
    assert "control character" in by_case["caption-control-chars"]["error"]


def test_blocked_urls_were_never_requested(corpus):
    """The SSRF guard refuses before connecting: no request for the refused targets reached any server."""
    web, _, _, _ = corpus
    # redirect hops to refused targets were served (the first hop), the refused target never was
    assert web.hits.get("/r/to-private") == 1 and web.hits.get("/r/to-rebind") == 1
    assert "/img.jpg" not in web.hits and "/x.jpg" not in web.hits
    # a name resolving to another loopback address is refused: the chain target was fetched once, by its case
    assert web.hits.get("/final/chain.jpg") == 1
    assert web.hits.get("/r/to-metadata-name") == 1 and "/latest/meta-data/" not in web.hits


def test_nothing_was_sent_beyond_loopback(corpus):
    """The stand-in DNS hands out 169.254.169.254, fd00:ec2::254, 10.9.8.7 and a public address; the launcher
    refuses (and records) any connection beyond loopback, and the guard must never have tried one."""
    out = corpus[1]
    assert json.loads((out.parent / FENCE_FILE).read_text()) == []


def test_kept_images_are_correctly_decoded_and_oriented(corpus, rows):
    web = corpus[0]
    _, by_case = rows
    kept = [c for c in web.cases if not c.expected]
    assert len(kept) >= 10
    for case in kept:
        row = by_case[case.name]
        assert row["status"] == KEPT, case.name
        assert (row["original_width"], row["original_height"]) == case.original_size, case.name
        stored = Image.open(io.BytesIO(row["image"]))
        assert stored.size == (row["width"], row["height"]) and min(stored.size) <= hw.IMAGE_SIZE, case.name  # keep_ratio: the short side
        ow, oh = case.original_size
        assert abs(stored.size[0] / stored.size[1] - ow / oh) < 0.05, case.name  # aspect kept, not rotated
        if case.body_sha256 is not None:  # served with a Content-Encoding: the row holds the decoded body
            assert row["sha256"] == case.body_sha256, case.name
        ref = case.reference.resize(stored.size, Image.Resampling.BOX)
        diff = np.abs(np.asarray(stored.convert("RGB"), np.int16) - np.asarray(ref, np.int16)).mean()
        assert diff < 12, f"{case.name}: mean abs difference {diff:.1f} from the reference picture"


def test_peak_memory_is_bounded(corpus):
    _, _, proc, peak = corpus
    assert proc.returncode == 0
    assert peak is not None and peak < PEAK_RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MB"


def test_docs_document_every_reason_code():
    page = (Path(__file__).parent.parent / "docs" / "reasons.md").read_text(encoding="utf-8")
    table = page.split("## Curate reason codes", 1)[1].split("\n## ", 1)[0]
    documented = {code for line in table.splitlines() if line.startswith("| `")
                  for code in re.findall(r"`([a-z_]+)`", line.split("|")[1])}
    assert documented == set(REASON_CODES)


SHAPES = {"1x1": (1, 1), "4x2000": (4, 2000), "2000x4": (2000, 4), "16000x16": (16000, 16), "normal": (640, 480)}
MODEL_FILTERS = {"clip_score": {}, "aesthetic": {}, "nsfw": {}, "watermark": {}, "text_coverage": {}}


def test_degenerate_shapes_get_every_models_score_through_the_pipeline(tmp_path, make_recipe):
    """A 2000x4 sliver got score_error from RapidOCR (ResizeImgError) on top of its rule reasons. Through a whole
    run with every model filter and the rejected images kept (so rule-rejected rows are scored too): each shape
    gets only its rule reasons, and a value in every score column."""
    import http.server
    import threading
    from functools import partial

    import pyarrow as pa
    import pyarrow.parquet as pq

    site = tmp_path / "site"
    site.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in SHAPES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(site / f"{name}.png")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler, directory=str(site)))
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        urls = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": [f"{base}/{n}.png" for n in SHAPES],
                                 "caption": [f"a picture shaped {n}" for n in SHAPES]}), urls)
        from unicurate.run.execute import run_curate

        out = tmp_path / "out"
        run_curate(make_recipe(urls, out, filters=MODEL_FILTERS, output={"keep_rejected_images": True},
                               download={"timeout": 10, "max_seconds": 60}),  # a 16000x16 PNG takes a while
                   say=lambda _m: None)
    finally:
        server.shutdown()
        server.server_close()
    got = {r["url"].rsplit("/", 1)[1][:-4]: r for r in output_frame(out).iter_rows(named=True)}
    assert set(got) == set(SHAPES)
    for name, row in got.items():
        assert Reason.SCORE_ERROR.value not in row["reject_reasons"], (name, row["error"])
        # downloaded and decoded: only rule and model-filter reasons
        assert {REASON_STAGE[Reason(r)] for r in row["reject_reasons"]} <= {Stage.FILTER, Stage.SCORE}, \
            (name, row["reject_reasons"])
        for col in ("clip_score", "aesthetic_score", "nsfw_score", "watermark_score", "text_coverage"):
            assert row[col] is not None and np.isfinite(row[col]), (name, col)
        assert 0.0 <= row["text_coverage"] <= 1.0
    assert {"too_small", "aspect_ratio"} <= set(got["2000x4"]["reject_reasons"])
    assert not {"too_small", "aspect_ratio"} & set(got["normal"]["reject_reasons"])
