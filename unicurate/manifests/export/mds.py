"""MosaicML Streaming (MDS): shards written by ``streaming.MDSWriter`` with declared column types.

Every column of the table gets the MDS type of its pyarrow type
(:data:`TYPES`), plus ``meta``: the whole row as JSON (nulls kept, images
left out). Shards are uncompressed: images are already compressed and are
stored as the exact bytes. MDS has no nulls, so a null is written as the
type's stand-in ("" / b"" / -1 / NaN; lists as JSON null).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import pyarrow as pa

from unicurate.manifests.export._base import (ExportFormat, Say, Source, Table, check_key, is_list, json_safe,
                                              typed_columns, write_samples)

META = "meta"  # the column holding the whole row


class MdsType(NamedTuple):
    name: str  # MDS encoding
    convert: Callable[[Any], Any]
    null: Any  # written for a null


# the MDS type of each kind of pyarrow type, first match wins
TYPES: tuple[tuple[Callable[[pa.DataType], bool], MdsType], ...] = (
    (pa.types.is_string, MdsType("str", str, "")),
    (pa.types.is_binary, MdsType("bytes", bytes, b"")),
    (pa.types.is_integer, MdsType("int", int, -1)),
    (pa.types.is_floating, MdsType("float64", float, math.nan)),
    (is_list, MdsType("json", list, None)),
)


def mds_type(t: pa.DataType) -> Optional[MdsType]:
    return next((m for test, m in TYPES if test(t)), None)


@functools.lru_cache(maxsize=None)
def columns(table: Table) -> dict[str, MdsType]:
    cols = typed_columns(table, "mds", mds_type)
    if META in cols:
        raise TypeError(f"column {table.name}.{META} clashes with the MDS export's whole-row column")
    return cols


def sample(table: Table, row: dict) -> dict[str, Any]:
    check_key(row["key"])
    out: dict[str, Any] = {}
    for name, m in columns(table).items():
        v = row.get(name)
        out[name] = m.null if v is None else m.convert(v)
    out[META] = json_safe(table, row)
    return out


def write(source: Source, dest: Path, say: Say) -> dict[str, int]:
    from streaming import MDSWriter

    def open_sink(folder: Path, table: Table):
        declared = {name: m.name for name, m in columns(table).items()} | {META: "json"}
        return MDSWriter(out=str(folder), columns=declared, compression=None, size_limit="64mb", hashes=["sha1"],
                         progress_bar=False)

    return write_samples(source, dest, say, open_sink, sample)


FORMAT = ExportFormat(name="mds", title="MosaicML Streaming (MDS)", module="streaming",
                      requires="mosaicml-streaming", write=write)
