"""Work units: the cut covers every input row once, unit files and records say when a unit can be taken as done,
and the output does not depend on where the units were cut."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import output_frame
from unicurate.config import InputConfig, parse_recipe
from unicurate.download import ingest
from unicurate.manifests.validate import validate
from unicurate.run.execute import run_curate
from unicurate.schema import CURATED_SCHEMA, SCORE_COLUMNS, SYNTHESIS_DIRS
from unicurate.units import folder, store
from unicurate.units.plan import Unit, UnitPlan

from benchmarks.common import shard_hashes
from conftest import base_recipe


@pytest.fixture
def mixed_inputs(tmp_path):
    """A parquet file of three row groups, a csv, a jsonl with a broken line and a url list: 38 rows."""
    pq.write_table(pa.table({"url": [f"http://x/p{i}.jpg" for i in range(21)], "caption": ["a"] * 21}),
                   tmp_path / "a.parquet", row_group_size=7)
    (tmp_path / "b.csv").write_text("url,caption\n" + "".join(f"http://x/c{i}.jpg,\"two\nlines\"\n" for i in range(7)))
    (tmp_path / "c.jsonl").write_text("".join(f'{{"url": "http://x/j{i}.jpg"}}\n' for i in range(3)) + "{broken\n"
                                      + '{"url": "http://x/j4.jpg"}\n\n')
    (tmp_path / "d.txt").write_text("".join(f"http://x/t{i}.jpg\n" for i in range(5)))
    return InputConfig(path=str(tmp_path / "*"), format="auto")


@pytest.mark.parametrize("rows_per_unit", [1, 4, 7, 1000])
def test_the_cut_covers_every_input_row_once_in_input_order(mixed_inputs, rows_per_unit):
    files = ingest.expand_inputs(mixed_inputs)
    splits = ingest.plan_splits(files)
    whole = [(r["input_file"], r["input_row"], r["url"], r["error"])
             for s in splits for r in ingest.read_split(s, mixed_inputs)]
    assert len(whole) == 38
    from unicurate.pipelines.curate import count_inputs

    plan = UnitPlan(tuple(splits), tuple(count_inputs(splits)), rows_per_unit)
    assert plan.n_rows == 38 and plan.n_units == -(-38 // rows_per_unit)
    seen, positions = [], []
    for unit in plan.units():
        rows = list(plan.read(unit, mixed_inputs))
        assert len(rows) == unit.rows <= rows_per_unit
        positions += [r["pos"] for r in rows]
        seen += [(r["input_file"], r["input_row"], r["url"], r["error"]) for r in rows]
    assert positions == list(range(38)) and seen == whole
    # the plan travels to the workers as JSON and comes back the same
    assert UnitPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def _unit_rows(unit: Unit) -> list[dict]:
    return [{"key": f"k{p}", "url": f"http://x/{p}", "source": "s", "input_row": p, "reject_reasons": [],
             "status": None, store.POS: p} for p in range(unit.first, unit.stop)]


def test_a_record_fits_only_its_unit_recipe_and_intact_file(tmp_path):
    out = str(tmp_path)
    plan = UnitPlan((), (25,), 10)
    unit = plan.unit(1)
    with store.writer(out, unit, CURATED_SCHEMA, 3) as w:
        for row in _unit_rows(unit):
            w.write(row)
        info = w.close()
    record = {"unit": 1, "first_row": 10, "rows": 10, "recipe_hash": "h1", "files": [info.to_json()]}
    store.write_record(out, record)
    assert store.record_fits(store.read_record(out, 1), unit, "h1") and store.file_intact(out, record)
    assert not store.record_fits(record, unit, "h2")  # another data recipe
    assert not store.record_fits(record, plan.unit(0), "h1") and not store.record_fits(None, unit, "h1")
    assert store.record_files(out) == {1: pytest.approx(len(json.dumps(record)), rel=1)}
    path = tmp_path / info.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not store.file_intact(out, record)  # a damaged file is redone, whatever its record says
    path.unlink()
    assert not store.file_intact(out, record)


def test_rows_between_reads_the_positions_asked_across_units(tmp_path):
    out = str(tmp_path)
    plan = UnitPlan((), (25,), 10)
    for unit in plan.units():
        with store.writer(out, unit, CURATED_SCHEMA, 3) as w:
            for row in _unit_rows(unit):
                w.write(row)
    assert [r[store.POS] for r in store.rows_between(out, plan, 7, 23)] == list(range(7, 23))
    assert [r["key"] for r in store.rows_between(out, plan, 20, 25)] == [f"k{p}" for p in range(20, 25)]
    assert list(store.rows_between(out, plan, 5, 5)) == []


def test_the_output_does_not_depend_on_the_unit_size(curated, web_input, make_recipe, tmp_path):
    """Repeated urls, exact and near duplicates and the CLIP cutoff are decided run-wide: cutting the same input
    into units of 7 rows (so repeats and duplicates fall in different units) gives the rows one unit gives."""
    out, manifest = curated
    assert manifest["units"]["count"] == 1
    small = tmp_path / "units-of-7"
    m7 = run_curate(make_recipe(web_input, small, input={"rows_per_unit": 7}), say=lambda _m: None)
    assert m7["units"]["count"] == -(-manifest["counts"]["inputs"] // 7) > 5
    assert validate(str(small)).ok and not (small / store.UNITS_DIR).exists()
    cols = ["key", "url", "status", "reject_reasons", "duplicate_of", "sha256", "error"]
    one, seven = output_frame(out).sort("key"), output_frame(small).sort("key")
    assert one.select(cols).to_dicts() == seven.select(cols).to_dicts()
    assert "duplicate_url" in one["reject_reasons"].explode().to_list()
    for c in SCORE_COLUMNS:
        if c in one.columns and one[c].dtype.is_numeric():
            diff = (one[c] - seven[c]).abs().max()
            assert diff is None or diff < 1e-4, c
    assert m7["funnel"] == manifest["funnel"]


def test_units_of_another_recipe_are_not_mixed(web_input, tmp_path):
    out = tmp_path / "out"
    data = base_recipe(web_input, out, input={"rows_per_unit": 20}, output={"keep_units": True})
    run_curate(parse_recipe(data), say=lambda _m: None)
    assert (out / store.UNITS_DIR / "unit-000000.json").exists()
    changed = parse_recipe(base_recipe(web_input, out, input={"rows_per_unit": 20}, output={"keep_units": True},
                                       filters={"min_width": 65}))
    with pytest.raises(folder.UnitsMismatch) as err:
        run_curate(changed, say=lambda _m: None)
    msg = str(err.value)
    assert "filters.min_width: 64 then, 65 now" in msg and "--restart" in msg and store.RECIPE_NAME in msg
    assert (out / "manifest.json").exists()  # refused before anything was touched
    # another unit size (or worker count) resumes the units with the cut that made them
    recut = parse_recipe(base_recipe(web_input, out, input={"rows_per_unit": 30}, output={"keep_units": True}))
    lines: list[str] = []
    m = run_curate(recut, say=lines.append)
    assert "units: resuming the cut of the run that made them, 20 rows per unit" in lines
    assert m["units"]["rows_per_unit"] == 20 and m["_metrics"].get("units_resumed") == m["units"]["count"]
    # the saved recipe resumes them; --restart starts over
    saved = (out / store.UNITS_DIR / store.RECIPE_NAME).read_text()
    from unicurate.config import load_recipe

    again = run_curate(load_recipe(str(out / store.UNITS_DIR / store.RECIPE_NAME)), say=lambda _m: None)
    assert again["_metrics"].get("units_resumed") == again["units"]["count"] and "min_width: 64" in saved
    # the command line's --restart (a refused rerun says to use it): the units go, everything is redone
    import yaml

    from conftest import unicurate

    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(base_recipe(web_input, out, input={"rows_per_unit": 20},
                                               filters={"min_width": 65})))
    refused = unicurate("run", str(path))
    assert refused.returncode == 2 and "--restart" in refused.stderr, refused.stderr
    fresh = unicurate("run", str(path), "--restart")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    n_units = again["units"]["count"]
    assert f"units: 0/{n_units} done (0 resumed)" in fresh.stdout
    assert f"units: {n_units}/{n_units} done (0 resumed, {n_units} processed)" in fresh.stdout
    assert validate(str(out)).ok and not (out / store.UNITS_DIR).exists()
    assert json.loads((out / "manifest.json").read_text())["recipe"]["filters"]["min_width"] == 65


def test_the_local_engine_is_chosen_and_never_downloads(web_input, make_recipe, tmp_path, no_network, monkeypatch):
    """Beam's DirectRunner would try the PrismRunner first (it downloads a binary); a run uses the FnApiRunner
    itself, says so, and records it."""
    from apache_beam.runners.portability import prism_runner

    def refuse(*_a, **_k):
        raise AssertionError("the PrismRunner was tried")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", refuse)
    lines: list[str] = []
    manifest = run_curate(make_recipe(web_input, tmp_path / "o"), say=lines.append)
    assert manifest["engine"] == "FnApiRunner (in_memory, 1 worker)"
    assert any("FnApiRunner (in_memory, 1 worker)" in line for line in lines[:8]), lines
    assert no_network == []
    from unicurate.run.options import Launch

    launch = Launch(make_recipe(web_input, tmp_path / "p"), ["--direct_num_workers=2",
                                                             "--direct_running_mode=multi_processing"], False)
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    assert isinstance(launch.engine(), FnApiRunner)
    assert launch.engine_name() == "FnApiRunner (multi_processing, 2 workers)"


def test_a_synthesis_run_resumes_its_units(scored, tmp_path):
    """Synthesis is cut into units of source images too: a unit whose record is gone, or whose file was damaged,
    is redone; the others are taken as they are; the shards are the bytes an uninterrupted run writes."""
    from conftest import syn_base_recipe
    from unicurate.run.execute import run_synthesize
    from unicurate.units import synthesize as us

    src, _, _ = scored

    def recipe(out, **output):
        return parse_recipe(syn_base_recipe(src, out, input={"max_images": 6, "rows_per_unit": 2},
                                            output={"images_per_shard": 4, **output}))

    ref = tmp_path / "ref"
    first = run_synthesize(recipe(ref), say=lambda _m: None)
    assert first["units"]["count"] == 3 and first["_metrics"].get("units_processed") == 3
    assert len(shard_hashes(ref, SYNTHESIS_DIRS)) == 4 * 2  # 6 images, 4 per shard: 2 shards of each kind
    assert not (ref / store.UNITS_DIR).exists() and validate(str(ref)).ok
    out = tmp_path / "resumed"
    run_synthesize(recipe(out, keep_units=True), say=lambda _m: None)
    (out / store.UNITS_DIR / "unit-000001.json").unlink()
    damaged = out / us.unit_rel("edit")(2)
    damaged.write_bytes(damaged.read_bytes()[:-9])
    lines: list[str] = []
    again = run_synthesize(recipe(out, keep_units=True), say=lines.append)
    assert "units: 2/3 done (2 resumed)" in lines  # the driver's view: two records fit
    assert again["_metrics"].get("units_resumed") == 1 and again["_metrics"].get("units_processed") == 2
    assert "units: 3/3 done (1 resumed, 2 processed)" in lines
    assert validate(str(out)).ok and shard_hashes(out, SYNTHESIS_DIRS) == shard_hashes(ref, SYNTHESIS_DIRS)
    assert again["counts"] == first["counts"] and again["funnel"] == first["funnel"]
