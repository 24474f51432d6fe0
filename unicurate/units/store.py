"""Unit files and their completion records under ``OUT/units/``, through Beam's ``FileSystems`` (local or gs://).

A unit's rows go to ``unit-NNNNNN.parquet`` (written to a temporary name and renamed into place, row group by row
group: memory holds one row group); then its record ``unit-NNNNNN.json`` (atomically too). A record is valid for a
run when it names the same unit (index, first row, rows) and the same data recipe (``recipe_hash``); the file it
describes must still have its size and sha256. A unit file without a valid record is redone.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from unicurate import __version__
from unicurate.manifests import manifest as mf
from unicurate.units.plan import Unit, UnitPlan

UNITS_DIR = "units"
PLAN_NAME = "plan.json"
RECIPE_NAME = "recipe.yaml"
POS = "pos"  # the row's position in the input: the column a unit file adds to the shard schema


def units_dir(out_dir: str) -> str:
    return mf.join(out_dir, UNITS_DIR)


def unit_rel(index: int) -> str:
    return f"{UNITS_DIR}/unit-{index:06d}.parquet"


def record_path(out_dir: str, index: int) -> str:
    return mf.join(out_dir, UNITS_DIR, f"unit-{index:06d}.json")


def unit_schema(schema: pa.Schema) -> pa.Schema:
    """A shard schema as a unit file holds it: every column may be empty (``status`` is decided later) and the
    row's position is added."""
    fields = [f.with_nullable(True) for f in schema]
    return pa.schema(fields, metadata=schema.metadata).append(pa.field(POS, pa.int64(), nullable=False))


def writer(out_dir: str, unit: Unit, schema: pa.Schema, row_group_rows: int,
           rel: Callable[[int], str] = unit_rel) -> mf.ShardWriter:
    """The writer of a unit's file (``rel``: its name; rows in input order, each with its ``pos``)."""
    return mf.ShardWriter(out_dir, rel(unit.index), unit_schema(schema), row_group_rows)


def write_record(out_dir: str, record: dict) -> None:
    """Write a unit's completion record (with the unicurate version that made it: units of another version are
    redone, not mixed)."""
    mf.write_json_atomic(record_path(out_dir, record["unit"]), {**record, "unicurate": __version__})


def read_json(path: str) -> Optional[Any]:
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(path) as fh:
            return json.loads(fh.read().decode())
    except Exception:  # noqa: BLE001 - missing, half-copied or foreign: not a record
        return None


def read_record(out_dir: str, index: int) -> Optional[dict]:
    rec = read_json(record_path(out_dir, index))
    return rec if isinstance(rec, dict) else None


def record_fits(record: Optional[dict], unit: Unit, recipe_hash: str) -> bool:
    """The record says this unit was finished with this data recipe, by this version of unicurate."""
    return (isinstance(record, dict) and record.get("unit") == unit.index and record.get("first_row") == unit.first
            and record.get("rows") == unit.rows and record.get("recipe_hash") == recipe_hash
            and record.get("unicurate") == __version__
            and isinstance(record.get("files"), list) and bool(record["files"]))


def file_intact(out_dir: str, record: dict) -> bool:
    """Every file the record describes is there, with its size and sha256 (one sequential read each)."""
    return all(_intact(out_dir, f) for f in record["files"])


def _intact(out_dir: str, info: dict) -> bool:
    from apache_beam.io.filesystems import FileSystems

    sha, size = hashlib.sha256(), 0
    try:
        with FileSystems.open(mf.join(out_dir, *info["path"].split("/")), mime_type="application/octet-stream",
                              compression_type="uncompressed") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha.update(chunk)
                size += len(chunk)
    except Exception:  # noqa: BLE001 - missing or unreadable: the unit is redone
        return False
    return size == info.get("bytes") and sha.hexdigest() == info.get("sha256")


def _open(out_dir: str, rel: str):
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(mf.join(out_dir, *rel.split("/")), mime_type="application/octet-stream",
                            compression_type="uncompressed")


def read_columns(out_dir: str, unit: Unit, columns: list[str], rel: Callable[[int], str] = unit_rel) -> pa.Table:
    """Some columns of a unit file (no image bytes unless asked for)."""
    with _open(out_dir, rel(unit.index)) as fh:
        pf = pq.ParquetFile(fh)
        return pf.read(columns=[c for c in columns if c in pf.schema_arrow.names])


def rows_between(out_dir: str, plan: UnitPlan, start: int, stop: int,
                 rel: Callable[[int], str] = unit_rel) -> Iterator[dict]:
    """The rows of positions start..stop-1 (``pos``), in order, read from the unit files (``rel``: a unit's file)
    one row group at a time: only the row groups whose ``pos`` statistics overlap the range are read."""
    for unit in plan.units_between(start, stop):
        with _open(out_dir, rel(unit.index)) as fh:
            pf = pq.ParquetFile(fh)
            meta = pf.metadata
            leaf = next(i for i in range(meta.num_columns) if meta.schema.column(i).path == POS)
            for rg in range(meta.num_row_groups):
                st = meta.row_group(rg).column(leaf).statistics
                if st is not None and st.has_min_max and (st.max < start or st.min >= stop):
                    continue
                for row in pf.read_row_group(rg).to_pylist():
                    if start <= row[POS] < stop:
                        yield row


def leftovers(out_dir: str) -> list[str]:
    """Temporary files of unit writes an interrupted run left behind."""
    from apache_beam.io.filesystems import FileSystems

    try:
        found = FileSystems.match([mf.join(out_dir, UNITS_DIR, ".tmp-*")])[0].metadata_list
    except Exception:  # noqa: BLE001 - no units folder
        return []
    return [m.path for m in found]


def record_files(out_dir: str) -> dict[int, int]:
    """{unit index: size in bytes} of the completion records present (a listing, no reads)."""
    from apache_beam.io.filesystems import FileSystems

    try:
        found = FileSystems.match([mf.join(out_dir, UNITS_DIR, "unit-*.json")])[0].metadata_list
    except Exception:  # noqa: BLE001 - no units folder
        return {}
    out = {}
    for m in found:
        stem = posixpath.basename(m.path)[len("unit-"):-len(".json")]
        if stem.isdigit():
            out[int(stem)] = m.size_in_bytes
    return out


def remove(out_dir: str) -> None:
    """Delete the units folder and everything in it."""
    from apache_beam.io.filesystems import FileSystems

    path = units_dir(out_dir)
    if "://" not in path:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    found = FileSystems.match([mf.join(path, "*")])[0].metadata_list  # object stores: every name, dot or not
    if found:
        FileSystems.delete([m.path for m in found])
