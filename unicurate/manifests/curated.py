"""Reading curated shards of every curated/2 vintage: the one place readers get curated rows from.

A curated/2 shard written before a filter was added lacks that filter's columns
(``schema.curated_shard_problems`` is the rule). stats, report, whatif, export
and synthesize read through these functions, which check each shard's schema
against that rule (naming the shard and what is wrong, instead of a polars or
pyarrow error halfway through) and give an absent filter column as typed nulls,
so a reader asks for the columns it wants and never learns which filters
existed when the shard was written.
"""

from __future__ import annotations

import functools
import itertools
from typing import Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from unicurate.manifests import manifest as mf
from unicurate.schema import CURATED_SCHEMA, CURATED_SCHEMA_VERSION, curated_shard_problems


class CuratedShardError(ValueError):
    """A shard does not follow the curated/2 rule (a column missing, unknown or of the wrong type)."""


def open_shard(path: str) -> pq.ParquetFile:
    """The shard, its schema (read from the footer) checked against the curated/2 rule; CuratedShardError when
    it breaks it."""
    pf = mf.open_parquet(path)
    problems = curated_shard_problems(pf.schema_arrow)
    if problems:
        raise CuratedShardError(f"{path} is not a {CURATED_SCHEMA_VERSION} shard: {'; '.join(problems)} "
                                "(check the folder with `unicurate validate`)")
    return pf


def _wanted(columns: Optional[Sequence[str]]) -> list[pa.Field]:
    """The fields asked for (None: all, in schema order); an unknown name is the caller's bug."""
    if columns is None:
        return list(CURATED_SCHEMA)
    unknown = [c for c in columns if c not in CURATED_SCHEMA.names]
    if unknown:
        raise KeyError(f"not curated columns: {unknown}")
    return [CURATED_SCHEMA.field(c) for c in columns]


@functools.lru_cache(maxsize=1)
def _polars_types() -> dict:
    """Column -> the polars dtype polars reads that column's Arrow type as (for typed null columns)."""
    import polars as pl

    return dict(pl.from_arrow(CURATED_SCHEMA.empty_table()).schema)


def scan(paths: Sequence[str], columns: Sequence[str]):
    """A lazy polars frame over the shards ``paths`` (in that order) with exactly ``columns``.

    Only the footers are read here. Consecutive shards with the same columns are one multi-file scan (a folder
    written by one unicurate is a single scan, as before), each group projected to ``columns`` with an absent
    filter column as a typed null literal, and the groups concatenated.
    """
    import polars as pl

    fields = _wanted(columns)
    types = _polars_types()
    schemas = [(p, tuple(open_shard(p).schema_arrow.names)) for p in paths]
    frames = []
    for names, group in itertools.groupby(schemas, key=lambda s: s[1]):
        absent = [f.name for f in fields if f.name not in names]
        # with_columns, not select: a literal takes the frame's height even when no column is read from the file
        frames.append(pl.scan_parquet([p for p, _ in group])
                      .with_columns([pl.lit(None, dtype=types[c]).alias(c) for c in absent])
                      .select([f.name for f in fields]))
    if not frames:
        return pl.DataFrame(schema={f.name: types[f.name] for f in fields}).lazy()
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")


def _conform(table: pa.Table, fields: list[pa.Field]) -> pa.Table:
    """``table`` as exactly ``fields``: the columns it has, typed nulls for the filter columns it lacks."""
    cols = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in fields]
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def read_table(path: str, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """One shard as a pyarrow table with exactly ``columns`` (None: every column of :data:`CURATED_SCHEMA`)."""
    fields = _wanted(columns)
    pf = open_shard(path)
    present = set(pf.schema_arrow.names)
    return _conform(pf.read(columns=[f.name for f in fields if f.name in present]), fields)


def read_rows(path: str, columns: Optional[Sequence[str]] = None) -> list[dict]:
    """Every row of one shard as dicts with exactly ``columns`` (None: all of :data:`CURATED_SCHEMA`)."""
    return read_table(path, columns).to_pylist()


def iter_rows(path: str, columns: Optional[Sequence[str]] = None, batch_size: int = 64) -> Iterator[dict]:
    """The rows of one shard, ``batch_size`` at a time in memory (images are large), as :func:`read_rows` gives
    them."""
    fields = _wanted(columns)
    pf = open_shard(path)
    present = set(pf.schema_arrow.names)
    for batch in pf.iter_batches(batch_size=batch_size, columns=[f.name for f in fields if f.name in present]):
        yield from _conform(pa.Table.from_batches([batch]), fields).to_pylist()
