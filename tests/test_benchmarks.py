"""The ingest benchmark's harness, at toy size: both tools run on the same loopback web and agree."""

from __future__ import annotations

import pytest

from benchmarks import ingest
from benchmarks.common import corpus, table


def test_ingest_benchmark_runs_both_tools_on_the_same_web(tmp_path, monkeypatch):
    monkeypatch.setenv("UNICURATE_BENCH_CACHE", str(tmp_path / "cache"))
    r = ingest.bench(12, processes=1, threads=4, workdir=tmp_path)
    i2d, uni = r["img2dataset"], r["unicurate"]
    assert i2d["images_ok"] == uni["images_ok"] == 12 == uni["rows"]
    assert r["ratio"] == pytest.approx(uni["images_per_s"] / i2d["images_per_s"], rel=1e-2)
    assert uni["peak_rss_mb"]["driver"] > 0 and i2d["peak_rss_mb"]["driver"] > 0
    # the corpus is cached and distinct images of web sizes
    folder = corpus(12, seed=0, dest=tmp_path / "cache" / "jpegs-12-s0")
    assert len({p.read_bytes() for p in folder.glob("*.jpg")}) == 12


def test_table_aligns_columns():
    out = table(["name", "n"], [["a", 1], ["long name", 22]]).splitlines()
    assert out[0] == "name        n" and out[1] == "---------  --" and out[3] == "long name  22"


def test_lossless_benchmark_repeats_runs_and_counts_rows(tmp_path, monkeypatch):
    from benchmarks import lossless

    monkeypatch.setenv("UNICURATE_BENCH_CACHE", str(tmp_path / "cache"))
    r = lossless.bench(10, processes=2, threads=4, runs=2, workdir=tmp_path)  # the multi-process path
    assert r["runs_losing_rows_or_failing"] == 0 and len(r["results"]) == 2
    assert all(x["ok"] and x["inputs"] == x["rows_out"] == 10 for x in r["results"])
