"""Resumable curate runs, as a user sees them (the resume benchmark's harness at toy size).

A run killed with SIGKILL (its whole process group) once some of its work units are done, then rerun with the
same command, downloads at most one unit's urls again and writes the same bytes as a run never interrupted; the
units/ folder goes once the manifest is published (unless output.keep_units); a rerun with a changed recipe
refuses to mix with the old units unless told ``--restart``.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import resume
from benchmarks.common import corpus, serve, validate_output

IMAGES, UNIT, MODE, THREADS = 120, 20, "in_memory", 8
UNITS = math.ceil(IMAGES / UNIT)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The generated JPEGs served by a counting server, and the ingest recipe on their url list:
    (working folder, base url, recipe)."""
    root = tmp_path_factory.mktemp("resume")
    folder = corpus(IMAGES, seed=0, dest=root / "jpegs")
    with serve(folder, count=True) as base:
        yield root, base, resume.write_bench_recipe(folder, base, root, MODE, THREADS, shard_rows=50)


@pytest.fixture(scope="module")
def resumed(site):
    """The benchmark's three runs: uninterrupted reference, killed at half its units, rerun."""
    root, base, recipe = site
    return resume.measure(recipe, base, root, IMAGES, UNIT, MODE, THREADS, timeout=120)


def test_killed_run_resumes_without_downloading_again_and_writes_the_same_bytes(resumed):
    r, checks = resumed, resumed["checks"]
    assert r["reference"]["exit"] == 0, r["reference"].get("log_tail")
    assert r["reference"]["units_line"] == f"units: 0/{UNITS} done (0 resumed)"
    killed = r["killed"]
    assert killed["killed"], "the run finished before half its units had completion records"
    assert 0 < killed["records_at_kill"] < UNITS and killed["processes_left"] == []
    assert r["rerun"]["exit"] == 0, r["rerun"].get("log_tail")
    done = killed["records_at_kill"]
    assert r["rerun"]["units_line"] == f"units: {done}/{UNITS} done ({done} resumed)"
    q = r["requests"]
    assert q["reference"] == IMAGES
    assert q["total"] <= IMAGES + UNIT and q["rerun"] <= IMAGES - UNIT * done, q
    assert checks["validates"], r["validate"]
    assert r["shards"] > 0 and r["differing_shards"] == [] and checks["byte_identical_to_reference"]
    assert r["pass"]


def test_kept_units_and_a_changed_recipe(site, resumed):
    """units/ goes once the manifest is published, unless output.keep_units; a rerun with a changed data recipe
    is refused (the units stay as they were) until told --restart, which starts over."""
    root, base, recipe = site
    for out in (resume.OUT, resume.REF):  # the resumed run and the uninterrupted one
        assert (root / out / "manifest.json").exists() and not (root / out / "units").exists()
    out = root / "kept-units"
    run = resume.run_to_end(resume.run_command(recipe, out, UNIT, MODE, "--set", "output.keep_units=true"), root)
    assert run["exit"] == 0, run["log"][-3000:]
    records = sorted((out / "units").glob("unit-*.json"))
    assert [p.name for p in records] == [f"unit-{i:06d}.json" for i in range(UNITS)]
    assert all((out / "units" / f"unit-{i:06d}.parquet").exists() for i in range(UNITS))
    first = json.loads(records[0].read_text())
    assert first["unit"] == 0 and first["first_row"] == 0 and first["rows"] == UNIT
    assert validate_output(out)[0]

    changed = ["--set", "filters.min_width=100"]
    refused = resume.run_to_end(resume.run_command(recipe, out, UNIT, MODE, *changed), root)
    assert refused["exit"] == 2 and "--restart" in refused["log"], refused["log"][-3000:]
    assert "filters.min_width: 64 then, 100 now" in refused["log"]
    assert sorted((out / "units").glob("unit-*.json")) == records  # left as they were
    assert (out / "manifest.json").exists()
    resume.counted({}, base)
    restarted = resume.counted(resume.run_to_end(resume.run_command(recipe, out, UNIT, MODE, *changed,
                                                                    "--restart"), root), base)
    assert restarted["exit"] == 0, restarted["log"][-3000:]
    assert restarted["units_line"] == f"units: 0/{UNITS} done (0 resumed)"
    assert restarted["requests"] == IMAGES  # everything again
    assert validate_output(out)[0] and not (out / "units").exists()
    assert json.loads((out / "manifest.json").read_text())["recipe"]["filters"]["min_width"] == 100
