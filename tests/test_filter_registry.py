"""The filter registry: every derivation (recipe, schema, reasons, models, what-if, stats) agrees with the specs,
and a new filter is one module of unicurate/filters/ with no other file touched."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from unicurate.config import FiltersConfig, parse_recipe
from unicurate.filters import registry
from unicurate.manifests import stats as st
from unicurate.manifests import whatif as wi
from unicurate.models import zoo
from unicurate.schema import (CURATED_SCHEMA, FILTER_REASONS, REASON_DOCS, REASON_STAGE, SCORE_COLUMNS, Reason,
                              Stage)

SPECS = registry.specs()
SECTIONS = [s for s in SPECS if s.config is not None]


def every_section() -> FiltersConfig:
    return FiltersConfig(**{s.name: {} for s in SECTIONS})


def test_every_column_is_in_the_curated_schema_with_its_type():
    for spec in SPECS:
        for c in spec.columns:
            assert CURATED_SCHEMA.field(c.name).type == c.type, c.name
            assert c.doc
    assert SCORE_COLUMNS == tuple(c.name for s in registry.specs("score") for c in s.columns)


def test_every_reason_has_a_stage_and_a_doc():
    assert set(REASON_STAGE) == set(REASON_DOCS) == set(Reason)
    assert all(r.doc for r in Reason)
    for spec in SPECS:
        assert FILTER_REASONS[spec.name] == tuple(r.code for r in spec.reasons)
        for r in spec.reasons:
            assert Reason(r.code).stage == Stage(spec.stage) and Reason(r.code).doc == r.doc
    stages = [r.stage for r in Reason]
    assert stages == sorted(stages, key=list(Stage).index), "reasons are listed in funnel order"


def test_every_section_is_a_recipe_field_and_model_filters_follow_the_registry():
    for spec in SECTIONS:
        field = FiltersConfig.model_fields[spec.name]
        assert field.default is None and spec.config in field.annotation.__args__
    f = every_section()
    assert f.model_filters() == [s.name for s in registry.specs("score")]
    assert FiltersConfig().model_filters() == []


def test_models_of_every_filter_are_in_both_profiles():
    names = zoo.needed_models(every_section())
    for profile in zoo.PROFILES:
        assert set(names) <= set(zoo.profile_specs(profile))
    for spec, section in registry.active(every_section()):
        assert set(spec.models(section)) <= set(names)


def test_whatif_sets_and_stats_show_every_threshold():
    recipe = parse_recipe({"pipeline": "curate", "input": {"path": "in.parquet"}, "output": {"path": "out"},
                           "filters": {"max_aspect_ratio": 3, **{s.name: {} for s in SECTIONS}}}).resolved()
    declared = [(s.name, t) for s in SPECS for t in s.thresholds]
    assert declared and {t.column for _, t in declared} == set(wi.SETTABLE)
    for name, bound in declared:
        value = 0.25
        setting = wi.parse_setting(f"{bound.column}{bound.op}{value}")
        assert setting.section == name and setting.bounds == (bound,)
        changed = wi.changed_recipe(recipe, [setting])
        assert getattr(getattr(changed.filters, name), bound.field) == value
        assert st.thresholds(changed.resolved(), {})[bound.column][bound.side] == value
        off = wi.changed_recipe(changed.resolved(), [wi.parse_setting(f"{bound.column}=off")])
        assert bound.column not in st.thresholds(off.resolved(), {})


def test_a_provider_runs_for_the_filters_that_need_it():
    f = FiltersConfig(aesthetic={})
    assert [(s.name, section) for s, section in registry.active(f)][0] == ("clip_score", None)
    assert FiltersConfig(watermark={}).model_filters() == ["watermark"]
    assert [s.name for s, _ in registry.active(FiltersConfig(watermark={}))] == ["watermark"]


NEW_FILTER = '''
"""A caption-only filter, as a new module would declare it."""

import pyarrow as pa
from pydantic import Field

from unicurate.filters.base import Filter
from unicurate.filters.registry import Column, FilterSpec, RejectReason, Threshold, register
from unicurate.sections import Section


class ShoutConfig(Section):
    """Share of upper-case letters in the caption."""

    max_share: float | None = Field(None, ge=0, le=1, description="reject captions with more capitals")


SHOUTING = RejectReason("shouting", "upper-case share above filters.shout.max_share")


class ShoutFilter(Filter):
    spec = register(FilterSpec(
        name="shout", stage="score", order=60, config=ShoutConfig,
        build=lambda cfg, models, threads: ShoutFilter(cfg.max_share),
        columns=(Column("shout_label", pa.string(), "loud or calm"),
                 Column("shout_share", pa.float32(), "share of upper-case letters")),
        reasons=(SHOUTING,),
        thresholds=(Threshold("shout_share", "<=", "max_share"),),
    ))

    def __init__(self, max_share):
        self.thresholds = {"max_share": max_share}

    def score(self, batch):
        shares = []
        for row in batch:
            letters = [c for c in row["caption"] or "" if c.isalpha()]
            shares.append(sum(c.isupper() for c in letters) / len(letters) if letters else 0.0)
        return {"shout_share": shares, "shout_label": ["loud" if s > 0.5 else "calm" for s in shares]}

    def decide(self, columns, thresholds=None):
        bound = {**self.thresholds, **(thresholds or {})}["max_share"]
        return [[SHOUTING.code] if v is not None and bound is not None and v > bound else []
                for v in columns["shout_share"]]
'''

CHECK = '''
import sys
import unicurate.filters as package
package.__path__.append(sys.argv[1])  # as if shout.py were in unicurate/filters/

from unicurate import schema
from unicurate.config import ModelsConfig, RecipeError, parse_recipe
from unicurate.filters.scoring import ModelScorer, decide_rows
from unicurate.manifests import stats as st
from unicurate.manifests import whatif as wi
from unicurate.models import zoo

assert schema.CURATED_COLUMNS[-5:] == ("shout_label", "shout_share", "input_file", "input_row", "metadata")
assert schema.Reason.SHOUTING.stage == schema.Stage.SCORE and schema.FILTER_REASONS["shout"] == ("shouting",)
assert "shout_share" in st.MODEL_SCORES and "shout_label" not in st.CURATED_SCORES
base = {"pipeline": "curate", "input": {"path": "in.parquet"}, "output": {"path": "out"}}
recipe = parse_recipe({**base, "filters": {"max_aspect_ratio": 3, "shout": {"max_share": 0.5}}})
assert recipe.filters.model_filters() == ["shout"] and zoo.needed_models(recipe.filters) == []
try:
    parse_recipe({**base, "filters": {"shout": {"max_shares": 1}}})
    raise AssertionError("unknown key accepted")
except RecipeError as exc:
    assert "did you mean 'max_share'" in str(exc), exc
rows = [{"caption": "A CALM SEA", "image": b"not an image"}, {"caption": "a calm sea", "image": None}]
scorer = ModelScorer(recipe.filters, ModelsConfig(profile="tiny"))
scored = scorer.score_rows(rows)  # a caption-only filter decodes no image
assert [r["score_error"] for r in scored] == [None, None], scored
assert [r["shout_label"] for r in scored] == ["loud", "calm"]
assert decide_rows(recipe.filters, scored) == [["shouting"], []]
setting = wi.parse_setting("shout_share<=0.9")
changed = wi.changed_recipe(recipe.resolved(), [setting])
assert st.thresholds(changed.resolved(), {}) == {"shout_share": {"max": 0.9}}
print("ok")
'''


def test_a_new_filter_is_one_module(tmp_path):
    """A filter module dropped into the package reaches the recipe, schema, reasons, scorer, what-if and stats."""
    (tmp_path / "shout.py").write_text(textwrap.dedent(NEW_FILTER))
    done = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_a_spec_that_contradicts_itself_is_refused():
    with pytest.raises(ValueError, match="exactly one of its section class"):
        registry.FilterSpec(name="x", stage="score", order=1, build=lambda *a: None)
    with pytest.raises(ValueError, match="does not record"):
        registry.FilterSpec(name="x", stage="score", order=1, build=lambda *a: None, config=FiltersConfig,
                            thresholds=(registry.Threshold("nope", ">=", "min_width"),))
