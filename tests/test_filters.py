"""Rule filters and run-wide dedup decisions."""

from __future__ import annotations

import random

from unicurate.config import FiltersConfig
from unicurate.filters import AspectRatioFilter, CaptionFilter, SizeFilter, rule_filters
from unicurate.filters import dedup as dd
from unicurate.filters.rules import apply


def test_size_and_aspect_filters_decide_and_rethreshold():
    batch = [{"original_width": 50, "original_height": 400}, {"original_width": 300, "original_height": 200}]
    size = SizeFilter(min_width=64, min_height=64)
    cols = size.score(batch)
    assert size.decide(cols) == [["too_small"], []]
    assert size.decide(cols, {"min_width": 10}) == [[], []]  # what-if: lower threshold, no rescoring
    ar = AspectRatioFilter(3.0)
    assert ar.decide(ar.score(batch)) == [["aspect_ratio"], []]
    assert ar.decide(ar.score(batch), {"max_aspect_ratio": 10}) == [[], []]


def test_caption_filter_counts_words():
    f = CaptionFilter(min_words=2, max_words=4)
    batch = [{"caption": ""}, {"caption": None}, {"caption": "a dog"}, {"caption": "one two three four five"}]
    cols = f.score(batch)
    assert cols["caption_words"] == [0, 0, 2, 5]
    assert f.decide(cols) == [["caption_too_short"], ["caption_too_short"], [], ["caption_too_long"]]


def test_caption_filter_rejects_garbled_text_unless_disabled():
    batch = [{"caption": "tab\tand\nnewline are fine"}, {"caption": "a caf\ufffd sign"},
             {"caption": "ring\x07 the bell"}, {"caption": "c1 \x85 control"}, {"caption": "plain words"}]
    f = CaptionFilter(min_words=1)
    cols = f.score(batch)
    assert f.decide(cols) == [[], ["invalid_caption"], ["invalid_caption"], ["invalid_caption"], []]
    assert "U+FFFD" in cols["caption_problem"][1] and "U+0007 at position 4" in cols["caption_problem"][2]
    off = CaptionFilter(min_words=1, reject_invalid=False)
    assert off.decide(off.score(batch)) == [[]] * 5
    assert not rule_filters(FiltersConfig(caption_reject_invalid=False))[-1].reject_invalid


def test_rule_filters_from_config_combine_reasons():
    filters = rule_filters(FiltersConfig(min_width=64, min_height=64, max_aspect_ratio=2, caption_min_words=1))
    _, reasons = apply(filters, [{"original_width": 10, "original_height": 100, "caption": ""}])
    assert reasons == [["too_small", "aspect_ratio", "caption_too_short"]]


def test_exact_winner_is_earliest_ok_row():
    recs = [
        dd.Rec((0, 5), "c", True, "h"),
        dd.Rec((0, 1), "a", False, "h"),  # earliest, but rejected by another filter
        dd.Rec((0, 3), "b", True, "h"),
    ]
    assert dict(dd.exact_losers(recs)) == {"a": "b", "c": "b"}
    assert dict(dd.exact_losers(recs[:1])) == {}
    # all rejected: the earliest is the reference
    bad = [r._replace(ok=False) for r in recs]
    assert dict(dd.exact_losers(bad)) == {"c": "a", "b": "a"}


def test_phash_bands_pigeonhole():
    rng = random.Random(0)
    for d in (0, 2, 4, 8):
        for _ in range(200):
            a = rng.getrandbits(64)
            flips = rng.sample(range(64), rng.randint(0, d))
            b = a
            for bit in flips:
                b ^= 1 << bit
            ba, bb = dd.phash_bands(f"{a:016x}", d), dd.phash_bands(f"{b:016x}", d)
            assert len(ba) == d + 1
            assert any(x == y for x, y in zip(ba, bb)), "hashes within distance must share a band"


def test_near_losers_respects_distance_and_order():
    base = 0x0F0F0F0F0F0F0F0F
    recs = [
        dd.Rec((0, 2), "later", True, f"{base ^ 0b111:016x}"),  # distance 3
        dd.Rec((0, 1), "first", True, f"{base:016x}"),
        dd.Rec((0, 3), "far", True, f"{base ^ 0xFFFF:016x}"),  # distance 16
        dd.Rec((0, 4), "same", True, f"{base:016x}"),
        dd.Rec((0, 0), "rejected", False, f"{base:016x}"),  # not ok: never a winner
    ]
    losers = {k: w for k, (_, w) in dd.near_losers(recs, 4)}
    assert losers == {"later": "first", "same": "first"}
    assert {k for k, _ in dd.near_losers(recs, 2)} == {"same"}
