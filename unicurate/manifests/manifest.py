"""Shard files and manifest.json: writing, reading, funnel counts.

Everything goes through Beam's ``FileSystems`` so the same code writes local
folders and ``gs://`` buckets. A shard is written to a temporary name and
renamed into place, so a reader never sees half a file; ``manifest.json`` is
written last (the pipeline writes a pending one; the driver publishes it once the run checked out), so a folder
without one is an unfinished run.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from unicurate.schema import KEPT, REASON_STAGE, REJECTED, Reason, Stage

MANIFEST_NAME = "manifest.json"
# what a pipeline's last stage writes; the driver checks the run against its own count of the inputs and only
# then publishes it as MANIFEST_NAME (run.check.check_and_publish): a folder with a manifest is a checked run
PENDING_MANIFEST_NAME = "manifest.pending.json"
CHECK_REPORT_NAME = "run-check-failed.json"  # what a run whose check failed leaves instead of a manifest
SHARD_RE = re.compile(r"^part-(\d{5})-of-(\d{5})\.parquet$")
# temporary names of atomic writes (write_shard, write_json_atomic): left behind only by an interrupted run
TMP_RE = re.compile(r"^(\.tmp-[0-9a-f]{32}(-part-.*\.parquet|\.json)|(" + re.escape(MANIFEST_NAME) + "|"
                    + re.escape(PENDING_MANIFEST_NAME) + r")\.tmp-[0-9a-f]{32})$")
SHARD_DIRS = (KEPT, REJECTED)


def join(base: str, *parts: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(base, *parts)


class _HashingFile:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        data = bytes(data)
        self.sha.update(data)
        self.size += len(data)
        self.raw.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.raw.close()


@dataclass
class ShardInfo:
    path: str  # relative to the output folder, e.g. "kept/part-00000-of-00002.parquet"
    rows: int
    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


def _tmp_beside(out_dir: str, rel_path: str) -> str:
    """A temporary name in the folder of OUT/rel_path (``.tmp-<uuid>-<name>``), for a write renamed into place."""
    parent, name = posixpath.split(rel_path)
    return join(out_dir, *(parent.split("/") if parent else []), f".tmp-{uuid.uuid4().hex}-{name}")


class ShardWriter:
    """One zstd Parquet file written row group by row group and published atomically: rows are buffered up to
    ``row_group_rows`` and written as one row group, the file goes to a temporary name in the same folder and is
    renamed into place by :meth:`close`, so a reader (or a resumed run) never sees half a file. Memory: one row
    group. Use as a context manager: leaving it closes the file (:meth:`close` returns what was written), an
    exception discards the temporary file."""

    def __init__(self, out_dir: str, rel_path: str, schema: pa.Schema, row_group_rows: int):
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        self.rel_path, self.schema, self.row_group_rows = rel_path, schema, row_group_rows
        self.final = join(out_dir, *rel_path.split("/"))
        self.tmp = _tmp_beside(out_dir, rel_path)
        self.sink = _HashingFile(FileSystems.create(self.tmp, mime_type="application/octet-stream",
                                                    compression_type=CompressionTypes.UNCOMPRESSED))
        self.writer = pq.ParquetWriter(self.sink, schema, compression="zstd", write_statistics=True)
        self.rows, self._buffer = 0, []
        self.info: Optional[ShardInfo] = None

    def write(self, row: Mapping[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self.writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema),
                                    row_group_size=self.row_group_rows)
            self.rows += len(self._buffer)
            self._buffer = []

    def close(self) -> ShardInfo:
        """Write what is buffered, close the file and rename it into place; returns what was written."""
        from apache_beam.io.filesystems import FileSystems

        if self.info is not None:
            return self.info
        self._flush()
        if not self.rows:
            self.writer.write_table(self.schema.empty_table())
        self.writer.close()
        self.sink.close()
        if FileSystems.exists(self.final):
            FileSystems.delete([self.final])
        FileSystems.rename([self.tmp], [self.final])
        self.info = ShardInfo(self.rel_path, self.rows, self.sink.size, self.sink.sha.hexdigest())
        return self.info

    def discard(self) -> None:
        from apache_beam.io.filesystems import FileSystems

        try:
            self.writer.close()
            self.sink.close()
            FileSystems.delete([self.tmp])
        except Exception:  # noqa: BLE001 - the temporary file may not exist
            pass

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_exc) -> bool:
        if exc_type is not None:
            self.discard()
        else:
            self.close()
        return False


def write_shard(
    out_dir: str, rel_path: str, rows: Sequence[Mapping[str, Any]], schema: pa.Schema, row_group_rows: int
) -> ShardInfo:
    """Write rows as one zstd Parquet file, atomically (temp name, then rename)."""
    with ShardWriter(out_dir, rel_path, schema, row_group_rows) as writer:
        for row in rows:
            writer.write(row)
        return writer.close()


# ------------------------------------------------------------------ funnel
FUNNEL_STAGES = (Stage.INPUT, Stage.DOWNLOAD, Stage.DECODE, Stage.FILTER, Stage.SCORE, Stage.DEDUP)
STAGE_LABELS = {
    Stage.INPUT: "valid input",
    Stage.DOWNLOAD: "downloaded",
    Stage.DECODE: "decoded",
    Stage.FILTER: "passed rule filters",
    Stage.SCORE: "passed model filters",
    Stage.DEDUP: "kept (after dedup)",
}


def first_failed_stage(reasons: Iterable[str]) -> Optional[Stage]:
    stages = [REASON_STAGE[Reason(r)] for r in reasons]
    if not stages:
        return None
    return min(stages, key=FUNNEL_STAGES.index)


def funnel_counts(reason_lists: Iterable[Sequence[str]]) -> dict:
    """Partial funnel over some rows: rows, failures per first failed stage, counts per reason."""
    rows = 0
    failed_at: Counter = Counter()
    reasons: Counter = Counter()
    for rs in reason_lists:
        rows += 1
        stage = first_failed_stage(rs)
        if stage is not None:
            failed_at[stage.value] += 1
        reasons.update(rs)
    return {"rows": rows, "failed_at": dict(failed_at), "reasons": dict(reasons)}


def merge_funnels(parts: Iterable[Mapping]) -> dict:
    rows = 0
    failed_at: Counter = Counter()
    reasons: Counter = Counter()
    for p in parts:
        rows += p["rows"]
        failed_at.update(p["failed_at"])
        reasons.update(p["reasons"])
    remaining = rows
    stages = []
    for stage in FUNNEL_STAGES:
        remaining -= failed_at.get(stage.value, 0)
        stages.append({"stage": stage.value, "label": STAGE_LABELS[stage], "rows": remaining})
    ordered = {r.value: reasons[r.value] for r in Reason if reasons.get(r.value)}
    return {"inputs": rows, "stages": stages, "reasons": ordered}


# ---------------------------------------------------------------- manifest
def write_bytes_atomic(out_dir: str, rel_path: str, data: bytes) -> dict:
    """Write ``data`` to OUT/rel_path atomically (a temporary name in the same folder, then a rename); returns
    {path, bytes, sha256}."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    final = join(out_dir, *rel_path.split("/"))
    tmp = _tmp_beside(out_dir, rel_path)
    with FileSystems.create(tmp, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write(data)
    delete_if_exists(final)
    FileSystems.rename([tmp], [final])
    return {"path": rel_path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_json_atomic(path: str, obj: Any) -> None:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    parent = posixpath.dirname(path) if "://" in path else None
    tmp = (join(parent, f".tmp-{uuid.uuid4().hex}.json") if parent
           else f"{path}.tmp-{uuid.uuid4().hex}")
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write(json.dumps(obj, indent=2, sort_keys=False, default=str).encode() + b"\n")
    delete_if_exists(path)
    FileSystems.rename([tmp], [path])


def manifest_header(kind: str, schema_version: str, recipe, inputs: Optional[list[dict]] = None) -> dict:
    """The fields every manifest starts with; ``recipe`` is a validated recipe (config._Recipe).

    ``recipe_hash`` identifies the data (the data recipe and the inputs' identity, recorded as ``inputs``),
    ``execution_hash`` how this run went (paths, workers, batch sizes, device: see config._Recipe); ``recipe`` holds
    both in full. ``inputs``: the inputs' identity when it was taken earlier (an output derived from a run's rows
    records that run's); default: the inputs as they are listed now.
    """
    import datetime as _dt

    from unicurate import __version__

    inputs = recipe.input_files() if inputs is None else inputs
    return {
        "kind": kind,
        "schema_version": schema_version,
        "unicurate_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "recipe_hash": recipe.recipe_hash(inputs),
        "execution_hash": recipe.execution_hash(),
        "inputs": inputs,
        "recipe": recipe.resolved(),
    }


def open_parquet(path: str) -> pq.ParquetFile:
    """A Parquet file on any Beam filesystem (local, gs://)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return pq.ParquetFile(FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED))


def read_rows(path: str) -> list[dict]:
    """Every row of one shard, as dicts."""
    return open_parquet(path).read().to_pylist()


def read_bytes(out_dir: str, rel_path: str) -> bytes:
    """The bytes of OUT/rel_path (local or gs://), as stored."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(join(out_dir, *rel_path.split("/")), compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return fh.read()


def read_manifest(out_dir: str, name: str = MANIFEST_NAME) -> dict:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    path = join(out_dir, name)
    if not FileSystems.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {out_dir} is not a unicurate output, or its run did not finish"
        )
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return json.loads(fh.read().decode("utf-8"))


def list_shard_files(out_dir: str, sub: str, every_parquet: bool = False) -> list[str]:
    """Relative paths of the ``part-*.parquet`` files present in OUT/sub (``every_parquet``: any ``*.parquet``,
    leftovers of interrupted writes included)."""
    from apache_beam.io.filesystems import FileSystems

    pattern = join(out_dir, sub, "*.parquet" if every_parquet else "part-*.parquet")
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001 - folder missing
        return []
    names = sorted(posixpath.basename(m.path) for m in matches)
    return [f"{sub}/{n}" for n in names if every_parquet or SHARD_RE.match(n)]


def list_leftovers(out_dir: str, dirs: Sequence[str] = SHARD_DIRS) -> list[str]:
    """Relative paths of the temporary files of interrupted atomic writes (a run killed while writing a shard or
    the manifest): ``SUB/.tmp-<uuid>-part-*.parquet``, ``manifest.json.tmp-<uuid>``, ``.tmp-<uuid>.json``."""
    from apache_beam.io.filesystems import FileSystems

    out = []
    for sub, pattern in [(sub, ".tmp-*") for sub in dirs] + [("", f"{MANIFEST_NAME}.tmp-*"), ("", ".tmp-*.json"),
                                                              ("", f"{PENDING_MANIFEST_NAME}.tmp-*")]:
        try:
            matches = FileSystems.match([join(out_dir, sub, pattern) if sub else join(out_dir, pattern)])
        except Exception:  # noqa: BLE001 - folder missing
            continue
        for m in matches[0].metadata_list:
            name = posixpath.basename(m.path)
            if TMP_RE.match(name):
                out.append(f"{sub}/{name}" if sub else name)
    return sorted(set(out))


def remove_stale_shards(out_dir: str, keep: set[str], dirs: Sequence[str] = SHARD_DIRS) -> list[str]:
    """Delete part files left by an earlier run with another shard count, and the temporary files of writes that
    an interrupted run left behind; return what was removed. Called once every shard of the run is written."""
    from apache_beam.io.filesystems import FileSystems

    stale = [rel for sub in dirs for rel in list_shard_files(out_dir, sub) if rel not in keep]
    stale += list_leftovers(out_dir, dirs)
    if stale:
        FileSystems.delete([join(out_dir, *rel.split("/")) for rel in stale])
    return stale


def delete_if_exists(path: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.exists(path):
        FileSystems.delete([path])


def remove_manifest(out_dir: str) -> None:
    """Mark a folder as unfinished before a (re)run writes into it (an earlier run's pending manifest goes too)."""
    for name in (MANIFEST_NAME, PENDING_MANIFEST_NAME):
        delete_if_exists(join(out_dir, name))


def publish_manifest(out_dir: str, manifest: dict) -> None:
    """The run checked out: its manifest becomes MANIFEST_NAME (atomically) and the pending one goes."""
    write_json_atomic(join(out_dir, MANIFEST_NAME), manifest)
    delete_if_exists(join(out_dir, PENDING_MANIFEST_NAME))
