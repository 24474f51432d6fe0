"""The cut: the input's rows, in input order (file order, then row number), numbered 0..N-1 (a row's ``pos``)
and cut into units of ``rows_per_unit`` consecutive rows. A unit reads its rows from the input splits it overlaps
(a file, or a parquet row group), so two runs over the same inputs cut the same units."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Iterator, Optional

from unicurate.download import ingest


@dataclass(frozen=True)
class KeptShard:
    """A kept shard of a curate run as a synthesize unit reads it: its rows whose key is at most ``max_key``
    (``input.max_images``: the first N keys; None: every row)."""

    path: str
    max_key: Optional[str] = None


@dataclass(frozen=True)
class Unit:
    """Unit ``index``: the ``rows`` input rows from position ``first`` on."""

    index: int
    first: int
    rows: int

    @property
    def stop(self) -> int:
        return self.first + self.rows


@dataclass(frozen=True)
class UnitPlan:
    """The input splits (with their row counts) and the cut into units. A split is an input file or parquet row
    group (``ingest.Split``: curate) or a kept shard of a curate run (:class:`KeptShard`: synthesize)."""

    splits: tuple
    counts: tuple[int, ...]
    rows_per_unit: int
    # the position of each split's first row, and the total: computed once (a plan may have millions of splits)
    starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    n_rows: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "starts", tuple(itertools.accumulate(self.counts, initial=0))[:-1])
        object.__setattr__(self, "n_rows", sum(self.counts))

    @property
    def n_units(self) -> int:
        return math.ceil(self.n_rows / self.rows_per_unit)

    def for_workers(self, workers: int) -> "UnitPlan":
        """This cut, or, when it has fewer units than ``workers`` (a small input), a cut into one unit per worker: a
        unit runs on one worker process, so fewer units would leave processes idle."""
        if workers <= 1 or self.n_units >= workers or self.n_rows == 0:
            return self
        return dataclasses.replace(self, rows_per_unit=max(1, math.ceil(self.n_rows / workers)))

    def unit(self, index: int) -> Unit:
        first = index * self.rows_per_unit
        if not 0 <= first < self.n_rows:
            raise IndexError(f"unit {index}: the plan has {self.n_units} units")
        return Unit(index, first, min(self.rows_per_unit, self.n_rows - first))

    def units(self) -> list[Unit]:
        return [self.unit(i) for i in range(self.n_units)]

    def units_between(self, start: int, stop: int) -> list[Unit]:
        """The units holding positions start..stop-1."""
        if stop <= start:
            return []
        return [self.unit(i) for i in range(start // self.rows_per_unit, (stop - 1) // self.rows_per_unit + 1)]

    def pieces(self, unit: Unit) -> list[tuple[ingest.Split, int, int, int]]:
        """(split, rows to skip in it, rows to take, position of the first taken row) covering the unit."""
        starts = self.starts
        out: list[tuple] = []
        i = bisect.bisect_right(starts, unit.first) - 1
        at = unit.first
        while at < unit.stop and i < len(self.splits):
            skip = at - starts[i]
            take = min(self.counts[i] - skip, unit.stop - at)
            if take > 0:
                out.append((self.splits[i], skip, take, at))
                at += take
            i += 1
        return out

    def read(self, unit: Unit, cfg) -> Iterator[dict]:
        """The unit's input rows (``ingest.read_split`` rows), each with its ``pos``."""
        for split, skip, take, first in self.pieces(unit):
            pos = first
            for row in ingest.read_split(split, cfg, skip, take):
                row["pos"] = pos
                pos += 1
                yield row
            if pos != first + take:
                raise RuntimeError(f"{split.file.path}: expected {take} rows from row {skip} on, read "
                                   f"{pos - first}: the input changed since the run was planned")

    # the plan travels to the workers as OUT/units/plan.json (a job graph could not hold millions of splits)
    def to_json(self) -> dict:
        return {"rows_per_unit": self.rows_per_unit, "n_rows": self.n_rows, "n_units": self.n_units,
                "splits": [dict(_split_json(s), rows=n) for s, n in zip(self.splits, self.counts)]}

    @classmethod
    def from_json(cls, obj: dict) -> "UnitPlan":
        splits = tuple(_split_from_json(s) for s in obj["splits"])
        return cls(splits, tuple(int(s["rows"]) for s in obj["splits"]), int(obj["rows_per_unit"]))


def _split_json(s) -> dict:
    if isinstance(s, KeptShard):
        return {"kind": "kept_shard", **dataclasses.asdict(s)}
    return {"kind": "input", **dataclasses.asdict(s.file), "row_group": s.row_group, "first_row": s.first_row,
            "split_rows": s.rows}


def _split_from_json(s: dict):
    if s["kind"] == "kept_shard":
        return KeptShard(s["path"], s["max_key"])
    f = ingest.InputFile(s["index"], s["path"], s["format"], s["source"])
    return ingest.Split(f, s["row_group"], s["first_row"], s["split_rows"])

