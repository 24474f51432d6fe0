"""The curate pipeline with every model filter (tiny profile + NudeNet + RapidOCR) on the sample web."""

from __future__ import annotations

import json

import polars as pl
import pytest

from unicurate.config import parse_recipe
from unicurate.manifests.validate import validate
from unicurate.run.execute import run_curate
from unicurate.manifests.funnel import format_funnel
from unicurate.schema import REASON_STAGE, Reason, Stage

from conftest import base_recipe

MODEL_FILTERS = {
    "clip_score": {"keep_top_fraction": 0.8},
    "aesthetic": {},  # record only
    "nsfw": {"backend": "nudenet", "max_score": 0.5},
    "watermark": {},
    "text_coverage": {"max_coverage": 0.08},
}
SCORES = ("clip_score", "aesthetic_score", "nsfw_score", "watermark_score", "text_coverage")


def _rows(out) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(str(out / sub / "*.parquet")) for sub in ("kept", "rejected")])


@pytest.fixture(scope="module")
def scored_run(web_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("scored")
    recipe = parse_recipe(base_recipe(web_input, out, filters=MODEL_FILTERS,
                                      models={"profile": "tiny", "batch_size": 8}))
    manifest = run_curate(recipe, say=lambda _m: None)
    return out, manifest, _rows(out)


def test_scores_on_every_row_that_reached_the_models(scored_run):
    _, _, df = scored_run
    early = {r.value for r in Reason if REASON_STAGE[r] in (Stage.INPUT, Stage.DOWNLOAD, Stage.DECODE, Stage.FILTER)}
    for row in df.iter_rows(named=True):
        reached = not (set(row["reject_reasons"]) & early)
        for col in SCORES:
            assert (row[col] is not None) == reached, (col, row["url"], row["reject_reasons"])


def test_scores_are_recorded_on_rejected_rows(scored_run):
    _, _, df = scored_run
    rejected_by_models = df.filter(pl.col("reject_reasons").list.eval(
        pl.element().is_in(["low_clip_score", "too_much_text", "nsfw"])).list.any())
    assert rejected_by_models.height > 0
    assert (rejected_by_models["status"] == "rejected").all()
    for col in SCORES:
        assert rejected_by_models[col].null_count() == 0, col
    dups = df.filter(pl.col("reject_reasons").list.contains("duplicate"))
    assert dups.height >= 1 and dups["clip_score"].null_count() == 0


def test_decisions_match_recorded_scores(scored_run):
    _, manifest, df = scored_run
    cutoff = manifest["clip_score_cutoff"]
    scored = df.filter(pl.col("clip_score").is_not_null())
    assert cutoff is not None
    for row in scored.iter_rows(named=True):
        rs = row["reject_reasons"]
        assert ("low_clip_score" in rs) == (row["clip_score"] < cutoff)
        assert ("too_much_text" in rs) == (row["text_coverage"] > 0.08)
        assert ("nsfw" in rs) == (row["nsfw_score"] > 0.5)
        assert "watermark" not in rs and "low_aesthetic" not in rs  # record-only filters
    kept_share = (scored["clip_score"] >= cutoff).sum() / scored.height
    assert 0.75 <= kept_share <= 0.85  # keep_top_fraction 0.8 over the whole run


def test_manifest_models_funnel_and_validation(scored_run):
    out, manifest, df = scored_run
    names = {m["name"]: m for m in manifest["models"]}
    assert set(names) == {"clip", "aesthetic", "nudenet", "watermark", "ocr_det"}
    assert manifest["uncalibrated"] is True
    assert names["clip"]["calibrated"] is False and names["nudenet"]["calibrated"] is True
    assert all(len(m["sha256"]) == 64 and m["uri"] for m in manifest["models"])
    assert names["clip"]["devices"] == ["cpu/fp32"]
    assert manifest["model_filters"] == ["clip_score", "aesthetic", "nsfw", "watermark", "text_coverage"]
    stages = {s["stage"]: s["rows"] for s in manifest["funnel"]["stages"]}
    assert stages["filter"] > stages["score"] >= stages["dedup"] == manifest["counts"]["kept"]
    text = format_funnel(manifest)
    assert text.startswith("WARNING: UNCALIBRATED scores")
    for name in manifest["model_filters"]:
        assert f"  {name} " in text
    assert manifest["counts"]["inputs"] == df.height == manifest["counts"]["kept"] + manifest["counts"]["rejected"]
    assert validate(str(out)).ok
    assert manifest["_metrics"]["model_loads"] == 1  # in-memory runner: one process, one load
    assert manifest["_metrics"]["model_batches"] >= 4  # ...serving several batches


def test_one_model_load_per_worker_process(web_input, tmp_path):
    recipe = parse_recipe(base_recipe(
        web_input, tmp_path / "out", filters={"clip_score": {}, "watermark": {}},
        models={"profile": "tiny", "batch_size": 4},
        runner={"direct_num_workers": 2, "direct_running_mode": "multi_processing"}))
    manifest = run_curate(recipe, say=lambda _m: None)
    metrics = manifest["_metrics"]
    assert 1 <= metrics["model_loads"] <= 2  # at most one per worker process
    assert metrics["model_batches"] > metrics["model_loads"]  # each load served many batches
    # every scored row keeps its scores, except a url repeated in another unit: it is downloaded and scored there
    # too, then recorded as duplicate_url without them
    df = _rows(tmp_path / "out")
    scored, repeats = df["clip_score"].is_not_null().sum(), df["reject_reasons"].list.contains("duplicate_url").sum()
    assert scored <= metrics["model_rows"] <= scored + repeats
    assert validate(str(tmp_path / "out")).ok


def test_no_model_filters_loads_nothing(curated):
    _, manifest = curated
    assert manifest["models"] == [] and manifest["uncalibrated"] is False
    assert "model_loads" not in manifest["_metrics"]


def test_rule_rejected_rows_with_images_are_scored(web_input, tmp_path):
    """With keep_rejected_images, rows a rule filter rejected still carry an image and get scores."""
    recipe = parse_recipe(base_recipe(web_input, tmp_path / "out", filters={"clip_score": {}},
                                      output={"keep_rejected_images": True}, models={"profile": "tiny"}))
    run_curate(recipe, say=lambda _m: None)
    df = _rows(tmp_path / "out")
    banner = df.filter(pl.col("reject_reasons").list.contains("aspect_ratio"))
    assert banner.height == 1 and banner["image"][0] is not None and banner["clip_score"][0] is not None
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["models"][0]["name"] == "clip"
