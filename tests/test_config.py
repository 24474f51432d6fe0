"""Recipes: validation messages name the field and the allowed values."""

from __future__ import annotations

import textwrap

import pytest

from unicurate.config import RecipeError, load_recipe, parse_recipe


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(text))
    return p


GOOD = """
pipeline: curate
input: {path: in.parquet}
output: {path: out}
"""


def test_minimal_recipe_fills_defaults(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD))
    assert r.resize.resize_mode == "keep_ratio"
    assert r.download.allow_private_networks is False
    assert r.filters.dedup.exact is True
    assert r.resolved()["download"]["disallowed_header_directives"] == ["noai", "noimageai", "noindex", "noimageindex"]


def test_recipe_hash_changes_with_content(tmp_path):
    a = load_recipe(_write(tmp_path, GOOD))
    b = load_recipe(_write(tmp_path, GOOD), {"resize.image_size": 256})
    assert a.recipe_hash() != b.recipe_hash()
    assert a.recipe_hash() == load_recipe(_write(tmp_path, GOOD)).recipe_hash()
    assert b.resize.image_size == 256


def test_unknown_key_names_field_suggests_and_lists_allowed(tmp_path):
    p = _write(tmp_path, GOOD + "resize: {imge_size: 256}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    msg = str(exc.value)
    assert "resize.imge_size" in msg
    assert "did you mean 'image_size'" in msg
    assert "resize_mode" in msg and "encode_format" in msg  # allowed fields listed


def test_wrong_enum_value_lists_allowed_values(tmp_path):
    p = _write(tmp_path, GOOD + "resize: {resize_mode: squash}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    msg = str(exc.value)
    assert "resize.resize_mode" in msg and "'squash'" in msg
    for allowed in ("keep_ratio", "center_crop", "border", "keep_ratio_largest"):
        assert allowed in msg


def test_wrong_type_and_range_name_the_field(tmp_path):
    with pytest.raises(RecipeError, match=r"download\.timeout"):
        load_recipe(_write(tmp_path, GOOD + "download: {timeout: soon}\n"))
    with pytest.raises(RecipeError, match=r"output\.rows_per_shard"):
        load_recipe(_write(tmp_path, GOOD + "output: {path: out, rows_per_shard: 0}\n"))
    with pytest.raises(RecipeError, match=r"encode_quality for png"):
        load_recipe(_write(tmp_path, GOOD + "resize: {encode_format: png, encode_quality: 95}\n"))


def test_missing_section_and_unknown_pipeline(tmp_path):
    with pytest.raises(RecipeError, match=r"missing required field 'output'"):
        parse_recipe({"pipeline": "curate", "input": {"path": "x"}})
    with pytest.raises(RecipeError, match=r"'pipeline'.*allowed values: 'curate'"):
        parse_recipe({"pipeline": "cook", "input": {"path": "x"}})


def test_yaml_syntax_error_has_line(tmp_path):
    p = _write(tmp_path, "pipeline: curate\ninput: {path: [unclosed\n")
    with pytest.raises(RecipeError, match=r"invalid YAML at line \d+"):
        load_recipe(p)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_shipped_quickstart_recipe_is_valid():
    from unicurate.cli import default_recipe

    r = load_recipe(default_recipe("quickstart.yaml"))
    assert r.sample_web is not None and r.sample_web.images >= 60
    # the guard stays on: a run lets only the sample web's own 127.0.0.1 server through (runner.sample_web_for),
    # so the same recipe pointed at a user's urls with --input keeps refusing private addresses
    assert r.download.allow_private_networks is False and r.download.allowed_networks == []
