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
from unicurate.run.check import RunCheckFailed
from unicurate.run.execute import run_curate, run_synthesize


def _drop_one_written_row(monkeypatch, subdir: str):
    """Make the shard writer silently lose the first row it is given for a file under ``subdir`` (in-memory runs
    only), as a writer that lost a row without an error would: the stage that fed it saw nothing wrong."""
    real = mf.ShardWriter.write
    dropped = []

    def write(self, row):
        if not dropped and self.rel_path.startswith(f"{subdir}/"):
            dropped.append(self.rel_path)
            return
        real(self, row)

    monkeypatch.setattr(mf.ShardWriter, "write", write)
    return dropped


def _drop_one_brief(monkeypatch):
    """Make the unit stage lose one row's brief (in-memory runs only: the DoFn runs in this process), as a row lost
    between the units and the run-wide steps would be: its row is still in its unit file, but the pipeline's own
    count of its inputs is one short."""
    real = curate.CurateUnitsDoFn.process
    dropped = []

    def process(self, unit):
        for out in real(self, unit):
            if not dropped and isinstance(out, tuple):  # a brief (position, key, ...), not the unit's record
                dropped.append(out[0])
                continue
            yield out

    monkeypatch.setattr(curate.CurateUnitsDoFn, "process", process)
    return dropped


def units_of(recipe) -> int:
    return -(-pq.read_metadata(recipe.input.path).num_rows // recipe.input.rows_per_unit)


def test_a_run_that_loses_a_row_fails_and_publishes_no_manifest(web_input, make_recipe, tmp_path, monkeypatch):
    out = tmp_path / "lossy"
    recipe = make_recipe(web_input, out)
    dropped = _drop_one_brief(monkeypatch)
    with pytest.raises(RunCheckFailed) as err:
        run_curate(recipe, say=lambda _m: None)
    assert dropped, "the fault was not injected"
    n = pq.read_metadata(web_input).num_rows
    msg = str(err.value)
    assert f"the input has {n} rows" in msg and f"is {n - 1}" in msg
    assert not (out / mf.MANIFEST_NAME).exists() and not (out / mf.PENDING_MANIFEST_NAME).exists()
    report = json.loads((out / mf.CHECK_REPORT_NAME).read_text())
    assert report["expected_inputs"] == n and report["problems"]
    # where the rows went: the unit stage put out one brief fewer than the input has rows
    elements = report["elements_per_pcollection"]
    assert elements.get("CurateUnits/ParDo(CurateUnitsDoFn)") == n - 1, elements
    assert elements.get("CurateUnits/ParDo(CurateUnitsDoFn)[units]") == units_of(recipe), elements
    problems = validate(str(out)).problems  # marked unfinished, and why
    assert any("did not finish" in p for p in problems) and any(mf.CHECK_REPORT_NAME in p for p in problems)

    # the cause gone, the same command completes the folder (resuming its units) and the failure report goes
    monkeypatch.undo()
    manifest = run_curate(recipe, say=lambda _m: None)
    assert manifest["_metrics"]["units_resumed"] == manifest["units"]["count"] >= 1
    assert manifest["counts"]["inputs"] == n == manifest["counts"]["kept"] + manifest["counts"]["rejected"]
    assert not (out / mf.CHECK_REPORT_NAME).exists() and not (out / mf.PENDING_MANIFEST_NAME).exists()
    assert validate(str(out)).ok


def test_the_units_hold_the_rows_the_driver_counted(web_input, make_recipe, tmp_path, monkeypatch):
    """The cut is made from the driver's own count of the rows: a unit that reads fewer rows than its share (a
    short read, or an input that changed under the run) fails the run; nothing is published."""
    out = tmp_path / "short-read"
    real = curate.count_inputs
    monkeypatch.setattr(curate, "count_inputs", lambda splits: [n + 7 for n in real(splits)])
    with pytest.raises(Exception, match=r"expected \d+ rows from row \d+ on, read \d+"):
        run_curate(make_recipe(web_input, out), say=lambda _m: None)
    assert not (out / mf.MANIFEST_NAME).exists()


def test_a_synthesis_run_that_loses_an_image_row_fails(scored, tmp_path, monkeypatch):
    from conftest import syn_base_recipe
    from unicurate.config import parse_recipe

    src, _, _ = scored
    out = tmp_path / "syn-lossy"
    recipe = parse_recipe(syn_base_recipe(src, out, input={"max_images": 6}))
    dropped = _drop_one_written_row(monkeypatch, "images")
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
