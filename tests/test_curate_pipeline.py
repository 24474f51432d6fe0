"""End to end: the Beam curate pipeline against the sample web on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import first_shard, output_frame
from unicurate.manifests import manifest as mf
from unicurate.manifests.validate import validate
from unicurate.run.execute import run_curate
from unicurate.schema import CURATED_SCHEMA, REASON_CODES


def _digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.glob("*/part-*.parquet"))}


def test_every_case_ends_as_one_row_with_expected_outcome(web, curated):
    out, manifest = curated
    df = output_frame(out)
    assert df.height == len(web.cases) == manifest["counts"]["inputs"]
    assert df["key"].n_unique() == df.height
    by_url = {r["url"]: r for r in df.iter_rows(named=True)}
    urls = [web.base_url + c.path for c in web.cases]
    dup_url_case = next(c for c in web.cases if c.expected == "duplicate_url")
    for case in web.cases:
        url = web.base_url + case.path
        if case is dup_url_case:
            row = df.filter((pl.col("url") == url) & (pl.col("caption") == case.caption)).row(0, named=True)
        elif urls.count(url) > 1:
            row = df.filter((pl.col("url") == url) & (pl.col("caption") == case.caption)).row(0, named=True)
        else:
            row = by_url[url]
        if case.expected == "kept":
            assert row["status"] == "kept", (case.name, row["reject_reasons"], row["error"])
            assert row["reject_reasons"] == [] and row["image"] is not None
        else:
            assert row["status"] == "rejected", case.name
            assert case.expected in row["reject_reasons"], (case.name, row["reject_reasons"], row["error"])
            assert all(r in REASON_CODES for r in row["reject_reasons"])
    # download/decode failures carry a readable message; filter rejections keep their measurements
    slow = by_url[web.base_url + "/special/slow.jpg"]
    assert "timed out" in slow["error"]
    banner = by_url[web.base_url + "/special/banner.jpg"]
    assert (banner["original_width"], banner["original_height"]) == (1600, 80) and banner["error"] is None
    assert banner["image"] is None  # rejected rows keep no image bytes by default


def test_invariant_and_manifest(curated):
    out, manifest = curated
    c = manifest["counts"]
    assert c["inputs"] == c["kept"] + c["rejected"]
    assert manifest["schema_version"] == "curated/2"
    assert manifest["recipe"]["resize"]["image_size"] == 256
    assert len(manifest["recipe_hash"]) == 64
    stages = {s["stage"]: s["rows"] for s in manifest["funnel"]["stages"]}
    assert stages["dedup"] == c["kept"]
    assert stages["input"] >= stages["download"] >= stages["decode"] >= stages["filter"] >= stages["dedup"]
    for shard in manifest["shards"]["kept"] + manifest["shards"]["rejected"]:
        p = out / shard["path"]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == shard["sha256"]
        assert pq.ParquetFile(p).metadata.num_rows == shard["rows"]
    assert validate(str(out)).ok


def test_shards_read_back_with_pyarrow_and_polars(curated):
    out, _ = curated
    kept = sorted(out.glob("kept/part-*-of-*.parquet"))
    assert kept and all(p.name.startswith("part-") for p in kept)
    table = pq.read_table(kept[0])
    assert table.schema.remove_metadata().equals(CURATED_SCHEMA.remove_metadata())
    assert pq.ParquetFile(kept[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    df = pl.read_parquet(str(out / "kept" / "*.parquet"))
    assert (df["status"] == "kept").all()
    for row in df.head(5).iter_rows(named=True):
        img = Image.open(io.BytesIO(row["image"]))
        assert img.size == (row["width"], row["height"]) and img.format == "JPEG"
        assert min(row["width"], row["height"]) <= 256
        assert hashlib.sha256(row["image"]).hexdigest() != row["sha256"]  # sha256 is of the download
        assert json.loads(row["metadata"])["license"].startswith("CC")
    exif = df.filter(pl.col("url").str.ends_with("exif-rotated.jpg")).row(0, named=True)
    assert (exif["original_width"], exif["original_height"]) == (300, 400)


def test_rerun_into_same_folder_is_identical(curated, web_input, make_recipe):
    out, _ = curated
    before = _digests(out)
    run_curate(make_recipe(web_input, out), say=lambda _m: None)
    assert _digests(out) == before
    assert validate(str(out)).ok


def test_multiprocess_run_matches_and_stale_shards_removed(curated, web_input, make_recipe, tmp_path):
    out, _ = curated
    other = tmp_path / "mp"
    # a leftover from an earlier run with another shard count must disappear
    (other / "kept").mkdir(parents=True)
    (other / "kept" / "part-00007-of-00009.parquet").write_bytes(b"stale")
    manifest = run_curate(make_recipe(web_input, other), ["--direct_num_workers", "2",
                                                          "--direct_running_mode", "multi_processing"],
                          say=lambda _m: None)
    assert manifest["beam_options"]["direct_running_mode"] == "multi_processing"
    assert "kept/part-00007-of-00009.parquet" in manifest["removed_stale_shards"]
    assert _digests(other) == _digests(out)
    assert validate(str(other)).ok


def test_keep_rejected_images_and_near_dedup(web, web_input, make_recipe, tmp_path):
    out = tmp_path / "opts"
    recipe = make_recipe(web_input, out, output={"keep_rejected_images": True},
                         filters={"dedup": {"exact": True, "near": True, "max_distance": 4}})
    run_curate(recipe, say=lambda _m: None)
    df = output_frame(out)
    banner = df.filter(pl.col("url").str.ends_with("banner.jpg")).row(0, named=True)
    assert banner["image"] is not None and banner["status"] == "rejected"
    dup = df.filter(pl.col("url").str.ends_with("copy-of-first.jpg")).row(0, named=True)
    first = df.filter(pl.col("url").str.ends_with("/img/img-000.jpg")).row(0, named=True)
    assert dup["reject_reasons"] == ["duplicate"] and dup["duplicate_of"] == first["key"]
    assert first["status"] == "kept"
    # generated scenes are distinct: near-dedup at distance 4 must not eat them
    assert df.filter(pl.col("reject_reasons").list.contains("near_duplicate")).height <= 2
    assert validate(str(out)).ok


def test_validate_detects_tampering(curated, tmp_path):
    import shutil

    src, _ = curated
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    shard = first_shard(out, "kept")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rep = validate(str(out))
    assert not rep.ok and any(shard.name in p and "sha256" in p for p in rep.problems)

    shard.unlink()
    rep = validate(str(out))
    assert any("missing" in p for p in rep.problems)

    shutil.copy(first_shard(out, "rejected"), out / "rejected" / "part-00099-of-00100.parquet")
    rep = validate(str(out))
    assert any("not listed in the manifest" in p for p in rep.problems)

    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").unlink()
    assert any("did not finish" in p for p in validate(str(out)).problems)
    m["counts"]["inputs"] += 1
    (out / "manifest.json").write_text(json.dumps(m))
    assert any("inputs" in p and "kept" in p for p in validate(str(out)).problems)


def test_input_problems_stop_before_touching_output(curated, tmp_path, make_recipe):
    import shutil

    from unicurate.download.ingest import InputError

    src, _ = curated
    out = tmp_path / "again"
    shutil.copytree(src, out)
    with pytest.raises(InputError):
        run_curate(make_recipe(tmp_path / "nothing-*.parquet", out), say=lambda _m: None)
    assert (out / mf.MANIFEST_NAME).exists() and validate(str(out)).ok


def test_failed_run_leaves_no_manifest(curated, web_input, tmp_path, make_recipe):
    import shutil

    src, _ = curated
    out = tmp_path / "broken"
    shutil.copytree(src, out)
    shutil.rmtree(out / "kept")
    (out / "kept").write_text("a file where the kept/ folder should be")  # shard writes will fail
    with pytest.raises(RuntimeError, match=r"File exists.*kept.*WriteShards"):
        run_curate(make_recipe(web_input, out), say=lambda _m: None)
    assert not (out / mf.MANIFEST_NAME).exists()
    assert any("did not finish" in p for p in validate(str(out)).problems)


def test_already_downloaded_images_are_decoded_not_downloaded(web, scored, tmp_path, make_recipe):
    """input.image_col: re-score existing shards without the network; empty cells are downloaded."""
    import pyarrow as pa

    src, _, _ = scored
    kept = pq.read_table(first_shard(src, "kept"),
                         columns=["key", "url", "caption", "image", "sha256", "width", "height"]).to_pylist()[:6]
    assert len(kept) == 6
    good = next(c for c in web.cases if c.expected == "kept" and c.caption)
    rows = [{"url": f"http://127.0.0.1:9/gone/{r['key']}.jpg", "caption": r["caption"], "image": r["image"]}
            for r in kept]  # nothing listens on port 9: a download attempt would fail
    rows.append({"url": web.base_url + good.path, "caption": good.caption, "image": None})  # downloaded
    rows.append({"url": "http://127.0.0.1:9/gone/corrupt.jpg", "caption": "a truncated one",
                 "image": kept[0]["image"][: len(kept[0]["image"]) // 3]})
    inp = tmp_path / "shards.parquet"
    pq.write_table(pa.Table.from_pylist(rows), inp)
    out = tmp_path / "out"
    recipe = make_recipe(inp, out, input={"image_col": "image"},
                         resize={"image_size": 256, "skip_reencode": True})
    manifest = run_curate(recipe, say=lambda _m: None)
    df = {r["url"]: r for r in output_frame(out).iter_rows(named=True)}
    assert manifest["counts"]["inputs"] == len(rows) == len(df)
    for src_row, row in zip(kept, rows):
        got = df[row["url"]]
        assert got["status"] == "kept", got
        # already 256 px and JPEG: skip_reencode keeps the bytes (no second lossy encode), hash unchanged
        assert got["image"] == src_row["image"] and got["sha256"] == hashlib.sha256(src_row["image"]).hexdigest()
        assert (got["width"], got["height"]) == (src_row["width"], src_row["height"])
        assert got["metadata"] is None  # the image column is not carried into metadata
    assert df[web.base_url + good.path]["status"] == "kept"
    bad = df["http://127.0.0.1:9/gone/corrupt.jpg"]
    assert bad["reject_reasons"] == ["decode_error"] and "JPEG" in bad["error"]
    assert validate(str(out)).ok


def _py(code: str, env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **env))


def test_local_workers_skip_interpreter_teardown_but_keep_failures():
    """perworker.fast_exit_when_done: a local worker process ends at exit without the slow teardown."""
    from unicurate.pipelines.perworker import LOCAL_DRIVER_ENV

    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('late handler ran'))\n"  # registered first: runs after ours
            "from unicurate.pipelines import perworker\n"
            "perworker.fast_exit_when_done(); perworker.fast_exit_when_done()\n"
            "print('worker done', flush=True)\n"
            "if len(sys.argv) > 1: raise RuntimeError('harness failed')\n")
    worker = {LOCAL_DRIVER_ENV: "1"}  # some other process is the driver
    ok = _py(code, worker)
    assert ok.returncode == 0 and ok.stdout == "worker done\n"
    failed = _py(code, worker, "fail")
    assert failed.returncode == 1 and "harness failed" in failed.stderr and "late handler" not in failed.stdout
    # the driver itself (in-memory runs, tests) and processes outside a local run exit normally
    assert "late handler ran" in _py(code, {}).stdout
    driver = _py("import os; os.environ['" + LOCAL_DRIVER_ENV + "'] = str(os.getpid())\n" + code, {})
    assert driver.returncode == 0 and "late handler ran" in driver.stdout
