"""Curated folders written before a filter existed: same schema version, without that filter's columns.

Adding a filter appends nullable columns to curated/2 (schema.py); every folder written before it must still
validate and be read by stats, report, whatif and export, which see the absent columns as typed nulls. A missing
core column is still an error, and validate names it.
"""

from __future__ import annotations

import glob
import json
import shutil

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import first_shard, refresh_manifest_entry, shard_files
from unicurate.manifests import curated
from unicurate.manifests import stats as st
from unicurate.manifests import whatif as wi
from unicurate.manifests.export import export
from unicurate.manifests.report import write_report
from unicurate.manifests.validate import validate
from unicurate.schema import CURATED_CORE_COLUMNS, CURATED_FILTER_COLUMNS, CURATED_SCHEMA, curated_shard_problems

LANGUAGE_COLUMNS = ("language", "language_score")  # the filter added last (unicurate/filters/language.py)


def drop_columns(out, columns) -> None:
    """Rewrite every shard of ``out`` without ``columns`` (metadata, hence the schema version, kept) and fix its
    manifest entry: the folder a unicurate without those columns would have written."""
    for f in shard_files(out):
        table = pq.read_table(f)
        pq.write_table(table.drop_columns(list(columns)), f, compression="zstd")
        refresh_manifest_entry(out, f"{f.parent.name}/{f.name}")


@pytest.fixture(scope="module")
def older(scored, tmp_path_factory):
    """A copy of the scored run whose shards predate the language filter."""
    out = tmp_path_factory.mktemp("older") / "run"
    shutil.copytree(scored[0], out)
    drop_columns(out, LANGUAGE_COLUMNS)
    assert not set(LANGUAGE_COLUMNS) & set(pq.read_schema(first_shard(out, "kept")).names)
    return out


def test_the_rule_tells_core_from_filter_columns():
    assert set(LANGUAGE_COLUMNS) <= CURATED_FILTER_COLUMNS and "clip_score" in CURATED_FILTER_COLUMNS
    assert {"key", "sha256", "reject_reasons", "metadata"} <= set(CURATED_CORE_COLUMNS)
    assert set(CURATED_CORE_COLUMNS) | CURATED_FILTER_COLUMNS == set(CURATED_SCHEMA.names)
    assert curated_shard_problems(CURATED_SCHEMA) == []
    no_filters = pa.schema([f for f in CURATED_SCHEMA if f.name in CURATED_CORE_COLUMNS])
    assert curated_shard_problems(no_filters) == []  # written before any filter: still curated/2
    retyped = pa.schema([f.with_type(pa.float64()) if f.name == "language_score" else f for f in CURATED_SCHEMA])
    assert curated_shard_problems(retyped) == ["column 'language_score' is double, not float"]
    extra = pa.schema([*CURATED_SCHEMA, pa.field("mystery", pa.int8())])
    assert curated_shard_problems(extra) == ["unknown column 'mystery' (int8)"]
    swapped = pa.schema([CURATED_SCHEMA.field("url"), CURATED_SCHEMA.field("key"),
                         *[f for f in CURATED_SCHEMA if f.name not in ("key", "url")]])
    assert any("out of order" in p for p in curated_shard_problems(swapped))


def test_a_folder_older_than_a_filter_validates_and_reads(scored, older):
    out, manifest, _ = scored
    rep = validate(str(older))
    assert rep.ok, rep.problems
    assert rep.rows == manifest["counts"]["inputs"]
    # stats: the same numbers as on the folder with the columns (they are all null there: not in the recipe)
    old, new = st.stats(str(older)), st.stats(str(out))
    for k in ("rows", "kept", "rejected", "funnel", "reasons", "sources", "scores", "image_sizes"):
        assert old[k] == new[k], k
    # a reader sees the absent columns as typed nulls
    lf = st.scan_curated(str(older), st.load_manifest(str(older)), ["key", *LANGUAGE_COLUMNS])
    df = lf.collect()
    assert df.height == manifest["counts"]["inputs"] and df["language"].null_count() == df.height
    assert df.schema["language_score"] == pl.Float32
    kept0 = first_shard(older, "kept")
    assert curated.read_rows(str(kept0))[0].keys() == set(CURATED_SCHEMA.names)


def test_report_whatif_and_export_read_an_older_folder(scored, older, tmp_path):
    import webdataset as wds

    path = write_report(str(older), str(tmp_path / "report.html"))
    html = path.read_text()
    assert 'id="funnel"' in html and '<figure class="tile kept"' in html
    # whatif recomputes from the recorded columns, and --apply writes today's full schema
    s = wi.whatif(str(older), ["clip_score>=-1"])
    assert s["rows"] == scored[1]["counts"]["inputs"] and s["after"]["kept"] >= s["before"]["kept"]
    applied = tmp_path / "applied"
    wi.apply(str(older), ["clip_score>=-1"], str(applied))
    assert validate(str(applied)).ok
    assert pq.read_schema(first_shard(applied, "kept")).names == CURATED_SCHEMA.names
    # export: every column of the schema, the absent ones as nulls
    dest = tmp_path / "wds"
    em = export(str(older), "webdataset", str(dest))
    assert em["counts"] == {"train": scored[1]["counts"]["kept"], "rejected": scored[1]["counts"]["rejected"]}
    samples = list(wds.WebDataset(sorted(glob.glob(str(dest / "train" / "*.tar"))), shardshuffle=False,
                                  empty_check=False))
    assert len(samples) == em["counts"]["train"]
    meta = json.loads(samples[0]["json"])
    assert meta["language"] is None and meta["language_score"] is None and meta["clip_score"] is not None


def test_a_missing_core_column_fails_validate_and_the_readers(older, tmp_path):
    out = tmp_path / "nosha"
    shutil.copytree(older, out)
    drop_columns(out, ["sha256"])
    rep = validate(str(out))
    assert not rep.ok
    assert any("schema differs from curated/2" in p and "missing core column 'sha256'" in p for p in rep.problems), \
        rep.problems
    with pytest.raises(st.StatsError, match="missing core column 'sha256'"):
        st.stats(str(out))
