"""Instructions read as plain English: phrases normalised, articles chosen by the template, phrases named whole."""

from __future__ import annotations

import re
import string

import pyarrow.parquet as pq
import pytest

from unicurate.synthesis import subject as sj
from unicurate.synthesis import templates as tp
from unicurate.synthesis.edit_types import REGISTRY

DOUBLED = re.compile(r"\b(a|an|the|this)\s+(a|an|the|this)\b", re.IGNORECASE)


@pytest.mark.parametrize("raw, clean", [
    ("the a red car", "red car"),
    ("a a dog", "dog"),
    ("Car.", "Car"),
    ("the the big big tree", "big tree"),
    ("a photo sideways a line and triangle a and background", "photo sideways line and triangle background"),
    ("cat on a", "cat"),
    ("pur ##ple tri ##angle", "purple triangle"),
    ("  an  (orange)  ", "orange"),
])
def test_phrases_are_normalised(raw, clean):
    assert tp.normalise_phrase(raw) == clean


@pytest.mark.parametrize("raw", ["", "...", "the", "a and the", "123 45", "##"])
def test_a_phrase_without_a_word_is_refused(raw):
    assert tp.normalise_phrase(raw) is None
    assert tp.clean_phrase(raw) == "object"


@pytest.mark.parametrize("phrase, with_article", [
    ("apple", "an apple"), ("red car", "a red car"), ("unicorn", "a unicorn"), ("hour glass", "an hour glass"),
    ("egg", "an egg"), ("two dogs", "two dogs"), ("3 cats", "3 cats"), ("European flag", "a European flag"),
])
def test_the_article_fits_the_phrase(phrase, with_article):
    assert tp.with_article(phrase) == with_article


MESSY = ["the a red car", "a a dog", "an orange", "the the big big tree", "Umbrella.", "a photo sideways a line"]
SLOTS = {"where": "in the top left", "color": "red", "direction": "to the left", "bigger_smaller": "bigger",
         "other": tp.clean_phrase("an apple"), "caption": "a street at night"}


def banks():
    yield "subject", sj.TEMPLATES
    for name, spec in REGISTRY.items():
        yield name, spec.templates


@pytest.mark.parametrize("kind, bank", list(banks()), ids=[k for k, _ in banks()])
def test_every_template_names_the_phrase_whole_with_one_article(kind, bank):
    """Every template of every edit type (and the subject samples'), filled as the synthesizer fills it."""
    for raw in MESSY:
        phrase = tp.clean_phrase(raw)
        for i, template in enumerate(bank):
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
            slots = {k: v for k, v in {**SLOTS, "phrase": phrase}.items() if k in fields or f"a_{k}" in fields}
            text = template.format(**tp.with_articles(slots))
            assert not DOUBLED.search(text), (kind, i, text)
            assert phrase in text, (kind, i, text)
            assert "{" not in text and "  " not in text, (kind, i, text)
            if "a_phrase" in fields:
                assert tp.with_article(phrase) in text
            if "a_other" in fields:
                assert "an apple" in text, text


def test_the_synthesized_rows_read_as_plain_english(synthesized):
    """The rows a run wrote: every edit and subject instruction names its row's phrase whole, with no doubled
    article, and no phrase keeps a leading determiner."""
    out, _ = synthesized
    n = 0
    for kind in ("edit", "subject"):
        for f in sorted((out / kind).glob("*.parquet")):
            for row in pq.read_table(f, columns=["phrase", "instruction"]).to_pylist():
                assert tp.normalise_phrase(row["phrase"]) == row["phrase"], row
                assert row["phrase"] in row["instruction"] and not DOUBLED.search(row["instruction"]), row
                n += 1
    assert n > 0
