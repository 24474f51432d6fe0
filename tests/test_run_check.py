"""A run checks its own invariant before it declares success: every input row is in exactly one output row.

The driver counts the input rows before the pipeline runs; the pipeline's last stage writes a pending manifest;
the driver compares its count with that manifest and with the rows the written shards hold, and only then
publishes ``manifest.json``. ``validate`` is the second line of defence, not the first.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from unicurate.manifests import manifest as mf
from unicurate.manifests.validate import check_run, validate
from unicurate.pipelines import curate
from unicurate.pipelines import synthesize as syn
from unicurate.run.check import RunCheckFailed
from unicurate.run.execute import run_curate, run_synthesize


def _drop_one_row(monkeypatch, write_dofn, rows_field):
    """Make the shard writer lose the last row of the first non-empty group it gets (in-memory runs only: the
    DoFn runs in this process), as rows lost between the fetch stage and the writer would be."""
    real = write_dofn.process
    dropped = []

    def process(self, item, n_shards):
        index, grouped = item
        if not dropped and list(grouped[rows_field]):
            grouped = dict(grouped, **{rows_field: list(grouped[rows_field])[:-1]})
            dropped.append(index)
        yield from real(self, (index, grouped), n_shards)

    monkeypatch.setattr(write_dofn, "process", process)
    return dropped


def test_a_run_that_loses_a_row_fails_and_publishes_no_manifest(web_input, make_recipe, tmp_path, monkeypatch):
    out = tmp_path / "lossy"
    recipe = make_recipe(web_input, out)
    dropped = _drop_one_row(monkeypatch, curate.WriteShardsDoFn, "rows")
    with pytest.raises(RunCheckFailed) as err:
        run_curate(recipe, say=lambda _m: None)
    assert dropped, "the fault was not injected"
    n = pq.read_metadata(web_input).num_rows
    msg = str(err.value)
    assert f"the input has {n} rows" in msg and f"is {n - 1}" in msg
    assert not (out / mf.MANIFEST_NAME).exists() and not (out / mf.PENDING_MANIFEST_NAME).exists()
    report = json.loads((out / mf.CHECK_REPORT_NAME).read_text())
    assert report["expected_inputs"] == n and report["problems"]
    # where the rows went: every row was fetched and keyed by shard, as the workers counted them
    elements = report["elements_per_pcollection"]
    assert elements.get("DownloadDecodeFilter") == n and elements.get("RowsByShard") == n, elements
    problems = validate(str(out)).problems  # marked unfinished, and why
    assert any("did not finish" in p for p in problems) and any(mf.CHECK_REPORT_NAME in p for p in problems)

    # the cause gone, the same command completes the folder (and the failure report goes)
    monkeypatch.undo()
    manifest = run_curate(recipe, say=lambda _m: None)
    assert manifest["counts"]["inputs"] == n == manifest["counts"]["kept"] + manifest["counts"]["rejected"]
    assert not (out / mf.CHECK_REPORT_NAME).exists() and not (out / mf.PENDING_MANIFEST_NAME).exists()
    assert validate(str(out)).ok


def test_the_check_counts_inputs_before_the_pipeline(web_input, make_recipe, tmp_path, monkeypatch):
    """The reference is the driver's own count, not the pipeline's: a read stage that lost rows is caught too."""
    out = tmp_path / "short-read"
    monkeypatch.setattr(curate, "count_inputs", lambda splits: 1000)
    with pytest.raises(RunCheckFailed, match=r"counts.inputs is \d+, but the input has 1000 rows"):
        run_curate(make_recipe(web_input, out), say=lambda _m: None)
    assert not (out / mf.MANIFEST_NAME).exists()


def test_a_synthesis_run_that_loses_an_image_row_fails(scored, tmp_path, monkeypatch):
    from conftest import syn_base_recipe
    from unicurate.config import parse_recipe

    src, _, _ = scored
    out = tmp_path / "syn-lossy"
    recipe = parse_recipe(syn_base_recipe(src, out, input={"max_images": 6}))
    dropped = _drop_one_row(monkeypatch, syn.WriteSynShardsDoFn, "rows")
    with pytest.raises(RunCheckFailed, match=r"images/ shards is 5, but the input has 6 rows"):
        run_synthesize(recipe, say=lambda _m: None)
    assert dropped and not (out / mf.MANIFEST_NAME).exists()


def test_check_run_reads_the_shards_not_only_the_manifest(curated):
    out, _ = curated
    manifest = mf.read_manifest(str(out))
    n = manifest["counts"]["inputs"]
    assert check_run(str(out), manifest, n) == []
    # a manifest that agrees with itself but not with its files
    shard = manifest["shards"]["kept"][0]
    lying = json.loads(json.dumps(manifest))
    lying["shards"]["kept"][0]["rows"] = shard["rows"] + 1
    lying["counts"]["kept"] += 1
    lying["counts"]["inputs"] += 1
    lying["funnel"]["inputs"] += 1
    problems = check_run(str(out), lying, n + 1)
    assert any(f"{shard['path']}: holds {shard['rows']} rows, the manifest says {shard['rows'] + 1}" in p
               for p in problems)
    assert any(f"the rows in the written kept/ + rejected/ shards is {n}, but the input has {n + 1} rows" in p
               for p in problems)
    # a manifest listing a shard that is not there
    missing = json.loads(json.dumps(manifest))
    missing["shards"]["kept"].append({**shard, "path": "kept/part-09999-of-09999.parquet"})
    assert any("kept/part-09999-of-09999.parquet: cannot read its footer" in p
               for p in check_run(str(out), missing, n))


def test_whatif_apply_checks_the_new_folder_before_publishing(scored, tmp_path, monkeypatch):
    from unicurate.manifests import whatif as wi

    src, manifest, _ = scored
    real = mf.write_shard
    dropped = []

    def write_shard(out_dir, rel, rows, schema, rg):
        if rows and not dropped:
            dropped.append(rel)
            rows = rows[:-1]
        return real(out_dir, rel, rows, schema, rg)

    monkeypatch.setattr(mf, "write_shard", write_shard)
    new = tmp_path / "applied"
    with pytest.raises(wi.WhatIfError, match=r"does not hold every row"):
        wi.apply(str(src), ["clip_score>=-1"], str(new))
    assert dropped and not (new / mf.MANIFEST_NAME).exists()
    monkeypatch.undo()
    applied = wi.apply(str(src), ["clip_score>=-1"], str(new))
    assert applied["counts"]["inputs"] == manifest["counts"]["inputs"] and validate(str(new)).ok
