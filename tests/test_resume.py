"""Resumable curate runs, as a user sees them (the resume benchmark's harness at toy size).

A run killed with SIGKILL (its whole process group) once some of its work units are done, then rerun with the
same command, downloads at most one unit's urls again (one worker: one unit in flight) and writes the same bytes as
a run never interrupted; the units/ folder goes once the manifest is published. Kept units, a changed recipe and
``--restart``: tests/test_units.py.
"""

from __future__ import annotations

import math

import pytest

from benchmarks import resume
from benchmarks.common import corpus, serve

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


def test_killed_run_resumes_without_downloading_again_and_writes_the_same_bytes(site, resumed):
    root = site[0]
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
    for out in (resume.OUT, resume.REF):  # published: the units are gone (output.keep_units: tests/test_units.py)
        assert (root / out / "manifest.json").exists() and not (root / out / "units").exists()
