"""Run-wide deduplication decisions: exact (image sha256) and near (perceptual hash).

Pure functions over small records; the Beam pipeline groups the records (by
sha256, or by pHash band) and calls these per group. "Earlier" always means
earlier in the input order (file order, then row number), so the outcome is
deterministic whatever the runner's parallelism.

A record is ``(order, key, ok, value)`` where ``ok`` says the row passed every
other filter. The winner of a group is its earliest ``ok`` record (or its
earliest record when none is ok), so a duplicate never costs the run an image
it could have kept.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple, Optional


class Rec(NamedTuple):
    order: tuple
    key: str
    ok: bool
    value: Optional[str]  # sha256 hex, or phash hex


def _winner(recs: list[Rec]) -> Rec:
    oks = [r for r in recs if r.ok]
    return min(oks or recs, key=lambda r: r.order)


def exact_losers(recs: Iterable[Rec]) -> Iterator[tuple[str, str]]:
    """For records sharing one sha256: yield (loser_key, winner_key) for all but the winner."""
    recs = list(recs)
    if len(recs) < 2:
        return
    win = _winner(recs)
    for r in recs:
        if r.key != win.key:
            yield r.key, win.key


def phash_bands(phash_hex: str, max_distance: int) -> list[tuple[int, int]]:
    """Split a 64-bit hash into max_distance+1 bands: two hashes within the distance share a band."""
    value = int(phash_hex, 16)
    n = max_distance + 1
    bands = []
    start = 0
    for i in range(n):
        width = 64 // n + (1 if i < 64 % n else 0)
        bands.append((i, (value >> start) & ((1 << width) - 1)))
        start += width
    return bands


def near_losers(recs: Iterable[Rec], max_distance: int) -> Iterator[tuple[str, tuple]]:
    """For ``ok`` records sharing a pHash band: yield (loser_key, (winner_order, winner_key)).

    A record loses when an earlier record is within ``max_distance``. Chains
    (A~B, B~C, A!~C) reject both B and C: near-duplicate removal errs on the
    side of removing.
    """
    recs = sorted((r for r in recs if r.ok and r.value), key=lambda r: r.order)
    if len(recs) < 2:
        return
    # collapse identical hashes first: the earliest of each value represents it
    first_of: dict[int, Rec] = {}
    for r in recs:
        v = int(r.value, 16)
        if v in first_of:
            rep = first_of[v]
            yield r.key, (rep.order, rep.key)
        else:
            first_of[v] = r
    reps = sorted(first_of.items(), key=lambda kv: kv[1].order)
    for i, (vi, ri) in enumerate(reps):
        for vj, rj in reps[:i]:
            if (vi ^ vj).bit_count() <= max_distance:
                yield ri.key, (rj.order, rj.key)
                break
