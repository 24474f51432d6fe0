"""stats, whatif and the extended validate, on real curate/synthesis runs (tiny models, sample web)."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import first_shard, output_rows, refresh_manifest_entry, rewrite_shard, shard_files
from unicurate.config import parse_recipe
from unicurate.manifests import stats as st
from unicurate.manifests import whatif as wi
from unicurate.manifests.validate import validate
from unicurate.schema import REASON_STAGE, Reason


def test_stats_agree_with_the_rows_and_the_manifest(scored):
    out, manifest, _ = scored
    s = st.stats(str(out))
    rows = output_rows(out, columns=["key", "source", "reject_reasons", "clip_score", "original_width",
                                     "original_height"])
    assert s["rows"] == len(rows) == manifest["counts"]["inputs"]
    assert s["kept"] == manifest["counts"]["kept"] == sum(1 for r in rows if not r["reject_reasons"])
    assert [f["rows"] for f in s["funnel"]] == [f["rows"] for f in manifest["funnel"]["stages"]]
    assert s["funnel"][-1]["rows"] == s["kept"]
    # each reason counted on every row that has it, and "only this" on rows with that reason alone
    every = Counter(r for row in rows for r in row["reject_reasons"])
    alone = Counter(row["reject_reasons"][0] for row in rows if len(row["reject_reasons"]) == 1)
    assert {r["reason"]: r["rows"] for r in s["reasons"]} == dict(every) == manifest["funnel"]["reasons"]
    assert {r["reason"]: r["only_this"] for r in s["reasons"]} == {k: alone.get(k, 0) for k in every}
    assert all(r["stage"] == REASON_STAGE[Reason(r["reason"])].value for r in s["reasons"])
    assert {g["source"]: g["rows"] for g in s["sources"]} == dict(Counter(r["source"] for r in rows))
    clip = np.array([r["clip_score"] for r in rows if r["clip_score"] is not None])
    q = s["scores"]["all"]["clip_score"]
    assert q["count"] == len(clip)
    for name, p in (("p1", 1), ("p50", 50), ("p99", 99)):
        assert q[name] == pytest.approx(np.percentile(clip, p), abs=1e-5)
    assert s["thresholds"]["clip_score"]["min"] == manifest["clip_score_cutoff"]
    widths = [r["original_width"] for r in rows if r["original_width"] is not None]
    assert s["image_sizes"]["original"]["width"]["max"] == max(widths)
    assert sum(b["rows"] for b in s["image_sizes"]["original_max_side"]) == len(widths)
    # lazily over the manifest's shards, and never the image column
    assert "image" not in st.scan_curated(str(out), manifest).collect_schema().names()
    by = st.stats(str(out), by="source")["by"]
    assert by["column"] == "source" and sum(g["rows"] for g in by["groups"]) == s["rows"]
    with pytest.raises(st.StatsError, match="no such column"):
        st.stats(str(out), by="nope")


def test_stats_json_is_stable_and_text_has_the_sections(scored):
    from unicurate.cli import main

    out = str(scored[0])
    a, b = json.dumps(st.stats(out), sort_keys=True), json.dumps(st.stats(out), sort_keys=True)
    assert a == b and json.loads(a)["stats_version"] == st.STATS_VERSION
    text = st.format_stats(st.stats(out))
    for part in ("funnel", "reject reasons", "only this", "sources", "scores (every scored row)", "p99",
                 "image sizes", "UNCALIBRATED"):
        assert part in text, part
    assert main(["stats", out, "--json"]) == 0 and main(["stats", out, "--by", "source"]) == 0
    assert main(["stats", str(Path(out) / "missing")]) == 2


def test_synthesis_stats(synthesized):
    out, manifest = synthesized
    s = st.stats(str(out))
    assert s["kind"] == "synthesis" and s["images"]["rows"] == manifest["counts"]["inputs"]
    assert {b["status"]: b["rows"] for b in s["images"]["by_status"]} == manifest["funnel"]["image_status"]
    for e in s["edits"]:
        f = manifest["funnel"]["edits"].get(e["edit_type"], {})
        assert (e["written"], e["rejected"]) == (f.get("written", 0), f.get("rejected", 0)), e
    assert s["subjects"] == manifest["counts"]["subject"]
    obj = {r["reason"]: r["rows"] for r in s["rejections"]["object"]}
    assert obj == manifest["funnel"]["objects"]["reasons"]
    assert "edit triplets per type" in st.format_stats(s)


def _median(out, col, kept_only=False):
    """A threshold at the median that lies halfway between two recorded scores, never on one: a fresh run's
    scores can differ in their last bits (other batch compositions), which must not move a row across it."""
    vals = sorted({r[col] for r in output_rows(out, columns=["reject_reasons", col])
                   if r[col] is not None and (not kept_only or not r["reject_reasons"])})
    mid = len(vals) // 2
    return float((vals[mid - 1] + vals[mid]) / 2)


def test_whatif_equals_a_fresh_run_with_those_thresholds(scored, tmp_path):
    """Recorded scores + what-if == rerunning every model with the new recipe: same kept keys, same funnel."""
    from unicurate.run.execute import run_curate

    out, manifest, data = scored
    clip_t, aes_t = _median(out, "clip_score"), _median(out, "aesthetic_score", kept_only=True)
    exprs = [f"clip_score>={clip_t}", f"aesthetic_score>={aes_t}"]
    s = wi.whatif(str(out), exprs)
    assert s["before"]["kept"] == manifest["counts"]["kept"]
    assert 0 < s["after"]["kept"] < s["before"]["kept"] and s["newly_rejected"] > 0

    fresh = copy.deepcopy(data)
    fresh["output"]["path"] = str(tmp_path / "fresh")
    fresh["filters"]["clip_score"] = {"min_score": clip_t}
    fresh["filters"]["aesthetic"] = {"min_score": aes_t}
    fm = run_curate(parse_recipe(fresh), say=lambda _m: None)
    assert fm["counts"]["kept"] == s["after"]["kept"]
    assert fm["funnel"]["reasons"] == {r["reason"]: r["rows"] for r in s["after"]["reasons"]}

    applied = wi.apply(str(out), exprs, str(tmp_path / "applied"))
    assert validate(str(tmp_path / "applied")).ok
    assert applied["counts"] == fm["counts"] and applied["derived_from"]["whatif"] == s["settings"]
    fresh_keys = {r["key"] for r in output_rows(tmp_path / "fresh", columns=["key", "reject_reasons"])
                  if not r["reject_reasons"]}
    applied_rows = output_rows(tmp_path / "applied", columns=["key", "reject_reasons", "image"])
    assert {r["key"] for r in applied_rows if not r["reject_reasons"]} == fresh_keys
    assert all(r["image"] for r in applied_rows if not r["reject_reasons"])
    # the applied folder is a normal output: stats and a second what-if work on it
    assert st.stats(str(tmp_path / "applied"))["kept"] == fm["counts"]["kept"]


def test_whatif_loosening_brings_back_rows_and_dedup_is_decided_again(scored, tmp_path):
    out, manifest, _ = scored
    s = wi.whatif(str(out), ["clip_score>=-1"])
    low_clip = manifest["funnel"]["reasons"].get("low_clip_score", 0)
    assert low_clip > 0 and s["newly_kept"] > 0
    assert {r["reason"]: r["rows"] for r in s["after"]["reasons"]}.get("low_clip_score", 0) == 0
    # exact duplicates: still exactly one winner per image
    res = wi.recompute(str(out), manifest, [wi.parse_setting("clip_score>=-1")])[1]
    dups = res.filter(res["reject_reasons"].list.contains("duplicate"))
    assert dups.height == manifest["funnel"]["reasons"].get("duplicate", 0)
    assert wi.apply(str(out), ["clip_score>=-1"], str(tmp_path / "loose"))["counts"]["kept"] == s["after"]["kept"]


def test_whatif_refuses_what_it_cannot_know(scored, curated, tmp_path):
    out = str(scored[0])
    for bad, msg in (("nsfw_score>=0.3", "nsfw_score is a maximum"), ("clip_score", "quote the expression"),
                     ("bogus>=1", "unknown score"), ("aesthetic_score>=x", "not a number")):
        with pytest.raises(wi.WhatIfError, match=msg):
            wi.whatif(out, [bad])
    with pytest.raises(wi.WhatIfError, match="did not use the nsfw filter"):
        wi.whatif(out, ["nsfw_score<=0.3"])
    with pytest.raises(wi.WhatIfError, match="new folder"):
        wi.apply(out, ["clip_score>=0"], out)
    # a run without model filters has no scores to decide on
    cur = str(curated[0])
    with pytest.raises(wi.WhatIfError, match="did not use the clip_score filter"):
        wi.whatif(cur, ["clip_score>=0"])


def test_validate_checks_schema_version_unlisted_files_and_duplicate_keys(scored, tmp_path):
    import shutil

    src = scored[0]
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    assert validate(str(out)).ok
    # a stray parquet file (an interrupted write) is named
    (out / "kept" / ".tmp-1234-part-00000-of-00003.parquet").write_bytes(b"x")
    rep = validate(str(out))
    assert not rep.ok and any(".tmp-1234" in p and "not listed" in p for p in rep.problems)
    (out / "kept" / ".tmp-1234-part-00000-of-00003.parquet").unlink()
    # a key written twice (once in kept, again in rejected)
    kept0 = first_shard(out, "kept").name
    dup = pq.read_table(out / "kept" / kept0).to_pylist()[0]

    def add_dup(rows):
        return rows + [dict(dup, status="rejected", reject_reasons=["duplicate"])]

    rewrite_shard(out, f"rejected/{kept0}", add_dup)
    m = json.loads((out / "manifest.json").read_text())
    m["counts"]["inputs"] += 1
    m["counts"]["rejected"] += 1
    (out / "manifest.json").write_text(json.dumps(m))
    rep = validate(str(out))
    assert any(f"key {dup['key']} appears twice" in p for p in rep.problems), rep.problems
    # a shard whose schema version is not the one schema.py knows
    out2 = tmp_path / "copy2"
    shutil.copytree(src, out2)
    path = out2 / "kept" / kept0
    table = pq.read_table(path).replace_schema_metadata({b"unicurate.schema_version": b"curated/1"})
    pq.write_table(table, path)
    refresh_manifest_entry(out2, f"kept/{kept0}")  # the checksum matches: only the version is wrong
    rep = validate(str(out2))
    assert any("schema_version is curated/1" in p for p in rep.problems), rep.problems


def test_apply_refuses_to_keep_rows_whose_images_were_not_stored(scored, tmp_path):
    import shutil

    out = tmp_path / "noimg"
    shutil.copytree(scored[0], out)
    for f in shard_files(out, ("rejected",)):
        rewrite_shard(out, f"rejected/{f.name}", lambda rows: [dict(r, image=None) for r in rows])
    assert validate(str(out)).ok
    with pytest.raises(wi.WhatIfError, match="did not store their images"):
        wi.apply(str(out), ["clip_score>=-1"], str(tmp_path / "new"))
    assert not (tmp_path / "new" / "manifest.json").exists()
    # tightening needs no rejected image
    assert wi.apply(str(out), ["clip_score>=0.99"], str(tmp_path / "tight"))["counts"]["kept"] == 0
