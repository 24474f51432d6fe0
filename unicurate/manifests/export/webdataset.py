"""WebDataset: tar shards of ``--max-count`` rows each, one sample per row, with the counts trainers read.

A sample is ``{key}.json`` (every column but the images, JSON columns parsed)
plus one member per column of :data:`MEMBERS`: a curated sample adds
``{key}.jpg|png|webp`` + ``{key}.txt`` (caption); an edit triplet
``{key}.src.<ext>``, ``{key}.tgt.<ext>``, ``{key}.mask.png``,
``{key}.instruction.txt``; a subject sample ``{key}.ref.<ext>``,
``{key}.tgt.<ext>``, ``{key}.mask.png``, ``{key}.instruction.txt``.

Every table folder also gets ``sizes.json`` (tar file name -> samples in it)
and ``__len__`` (their total), what OpenCLIP's ``get_dataset_size`` reads; a
table without rows writes no tar (``{}`` and ``0``).

``--layout img2dataset`` (curated runs) writes each table as img2dataset's
``output_format="webdataset"`` does: per shard ``00000.tar``,
``00000.parquet`` (every row of the shard: img2dataset's columns, then ours)
and ``00000_stats.json``; a row without an image is in the parquet and the
stats but not in the tar (:func:`img2dataset_status`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

from unicurate.manifests.export._base import (ExportError, ExportFormat, ExportOptions, Say, Source, Table,
                                              check_key, image_ext, json_safe, nan_to_none, write_samples)
from unicurate.schema import Reason, Stage

# member suffix of each column written as its own file, by table kind ("{ext}": the image's own format); a
# text column is written even when null (as ""), an image only when it has bytes
MEMBERS: dict[str, dict[str, str]] = {
    "curated": {"image": "{ext}", "caption": "txt"},
    "edit": {"source_image": "src.{ext}", "target_image": "tgt.{ext}", "mask": "mask.png",
             "instruction": "instruction.txt"},
    "subject": {"reference_image": "ref.{ext}", "target_image": "tgt.{ext}", "mask": "mask.png",
                "instruction": "instruction.txt"},
}

LAYOUTS = ("default", "img2dataset")
SUCCESS, FAILED_TO_DOWNLOAD, FAILED_TO_RESIZE = "success", "failed_to_download", "failed_to_resize"
# the parquet columns of img2dataset's webdataset output (a url list with a caption column; its defaults
# extract_exif and compute_hash="sha256"), in its order; ``status`` is img2dataset's, not kept/rejected
IMG2DATASET_FIELDS: tuple[pa.Field, ...] = (
    pa.field("caption", pa.string()), pa.field("url", pa.string()), pa.field("key", pa.string()),
    pa.field("status", pa.string()), pa.field("error_message", pa.string()),
    pa.field("width", pa.int32()), pa.field("height", pa.int32()),
    pa.field("original_width", pa.int32()), pa.field("original_height", pa.int32()),
    pa.field("exif", pa.string()), pa.field("sha256", pa.string()),
)


def sample(table: Table, row: dict, meta: Optional[dict] = None) -> dict[str, Any]:
    """The tar members of one row: ``__key__``, ``json`` (``meta``, default the row's :func:`json_safe`
    columns) and the table kind's :data:`MEMBERS`."""
    meta = json_safe(table, row) if meta is None else meta
    s: dict[str, Any] = {"__key__": check_key(row["key"]),
                         "json": json.dumps(meta, ensure_ascii=False, default=str).encode("utf-8")}
    for column, suffix in MEMBERS[table.kind].items():
        v = row.get(column)
        if column in table.binary:
            if v:
                s[suffix.format(ext=image_ext(row.get("image_format"), v))] = v
        else:
            s[suffix] = (v or "").encode("utf-8")
    return s


# ------------------------------------------------------------------ the img2dataset layout
def img2dataset_schema(table: Table) -> pa.Schema:
    """The parquet schema of an img2dataset-layout shard: :data:`IMG2DATASET_FIELDS`, then the table's other
    columns in schema order (no images)."""
    core = {f.name for f in IMG2DATASET_FIELDS}
    return pa.schema([*IMG2DATASET_FIELDS, *(f for f in table.schema if f.name not in core | table.binary)])


def img2dataset_status(row: dict) -> tuple[str, Optional[str]]:
    """img2dataset's ``status`` and ``error_message`` of a curated row. ``failed_to_download``: a reason of the
    input or download stage; ``failed_to_resize``: one of the decode stage, or no stored image (rejected later
    by a run that kept no rejected images; img2dataset's own size checks fail as ``failed_to_resize``); else
    ``success``: the image is in the tar, whatever filter rejected the row. The message: the row's ``error``,
    else its reason codes."""
    stages = {Reason(r).stage for r in row["reject_reasons"]}
    if stages & {Stage.INPUT, Stage.DOWNLOAD}:
        status = FAILED_TO_DOWNLOAD
    elif Stage.DECODE in stages or not row.get("image"):
        status = FAILED_TO_RESIZE
    else:
        return SUCCESS, None
    return status, row.get("error") or ", ".join(row["reject_reasons"])


def img2dataset_row(schema: pa.Schema, row: dict) -> dict:
    """A curated row as an img2dataset-layout parquet row (``exif``: null, the run keeps no original bytes)."""
    status, message = img2dataset_status(row)
    own = {"status": status, "error_message": message, "exif": None}
    return {name: own[name] if name in own else row.get(name) for name in schema.names}


def img2dataset_stats(rows: list[dict], start: float, end: float) -> dict:
    """A shard's ``_stats.json``, with img2dataset's keys (``status_dict``: "success" or the error message)."""
    statuses = Counter(r["status"] for r in rows)
    return {"count": len(rows), "successes": statuses[SUCCESS], "failed_to_download": statuses[FAILED_TO_DOWNLOAD],
            "failed_to_resize": statuses[FAILED_TO_RESIZE], "duration": end - start, "start_time": start,
            "end_time": end,
            "status_dict": dict(Counter(SUCCESS if r["status"] == SUCCESS else r["error_message"] for r in rows))}


# ------------------------------------------------------------------ writing
class _Shards:
    """One table's rows into numbered tars of ``max_count`` rows, each opened at its first row; on close, the
    folder's ``sizes.json`` and ``__len__``. ``img2dataset``: that layout (names, parquet and stats per shard,
    only rows with an image in the tar)."""

    def __init__(self, folder: Path, table: Table, max_count: int, img2dataset: bool):
        self.folder, self.table, self.max_count = folder, table, max_count
        self.schema = img2dataset_schema(table) if img2dataset else None
        self.sizes: dict[str, int] = {}  # tar file name -> samples written into it
        self._tar: Any = None
        self._name = ""  # the open tar's file name
        self._rows = 0  # rows of the open shard
        self._meta: list[dict] = []  # the open shard's parquet rows (img2dataset layout)
        self._start = 0.0

    def __enter__(self) -> _Shards:
        return self

    def write(self, row: dict) -> None:
        if self._tar is None or self._rows >= self.max_count:
            self._next()
        self._rows += 1
        if self.schema is None:
            s = sample(self.table, row)
        else:
            meta = img2dataset_row(self.schema, row)
            self._meta.append(meta)
            if meta["status"] != SUCCESS:
                return  # in the shard's parquet and stats, not in its tar
            s = sample(self.table, row, nan_to_none(meta))
        self._tar.write(s)
        self.sizes[self._name] += 1

    def _next(self) -> None:
        import webdataset as wds

        self._close_shard()
        index = len(self.sizes)
        self._name = f"{index:05d}.tar" if self.schema is not None else f"{self.table.name}-{index:06d}.tar"
        self._tar = wds.TarWriter(str(self.folder / self._name), encoder=False, mtime=0)
        self.sizes[self._name], self._rows, self._meta, self._start = 0, 0, [], time.time()

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        if self.schema is not None:
            import pyarrow.parquet as pq

            stem = self._name.removesuffix(".tar")
            pq.write_table(pa.Table.from_pylist(self._meta, schema=self.schema), self.folder / f"{stem}.parquet")
            stats = img2dataset_stats(self._meta, self._start, time.time())
            (self.folder / f"{stem}_stats.json").write_text(json.dumps(stats, indent=4), encoding="utf-8")

    def __exit__(self, exc_type, *_: object) -> None:
        self._close_shard()
        if exc_type is None:
            (self.folder / "sizes.json").write_text(json.dumps(self.sizes, indent=2) + "\n", encoding="utf-8")
            (self.folder / "__len__").write_text(f"{sum(self.sizes.values())}\n", encoding="utf-8")


def check(manifest: dict, options: ExportOptions) -> None:
    if options.layout == "img2dataset" and manifest["kind"] == "synthesis":
        raise ExportError("--layout img2dataset writes image-text pairs as img2dataset does, for curated runs; "
                          "export a synthesis run in the default layout (leave out --layout)")


def write(source: Source, dest: Path, say: Say) -> dict[str, int]:
    """Every table into DEST/<table>/ in the chosen layout; returns rows per table."""
    img2dataset = (source.options.layout or LAYOUTS[0]) == "img2dataset"
    return write_samples(source, dest, say,
                         lambda folder, table: _Shards(folder, table, source.options.max_count, img2dataset),
                         lambda _table, row: row)


FORMAT = ExportFormat(name="webdataset", title="WebDataset", module="webdataset", requires="webdataset",
                      write=write, layouts=LAYOUTS, check=check)
