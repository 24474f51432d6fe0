"""What every export format shares: the tables it writes, their columns, safe keys and paths.

An export table's columns are the shard schema's (``schema.CURATED_SCHEMA``,
``schema.SYNTHESIS_SCHEMAS``): a typed format maps each pyarrow type to its
own type (:func:`typed_columns`), WebDataset's JSON member carries every
column, and no format lists columns itself, so a column added to a schema (a
new filter's score, say) is exported by every format.

Rows are read shard by shard through the manifest (one source shard in memory
at a time; a curated shard through ``manifests.curated``, so one written before
a filter existed exports that filter's columns as nulls), and every file goes
under DEST (keys are checked; nothing is written outside it).
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional, TypeVar

import pyarrow as pa

from unicurate.schema import CURATED_SCHEMA, KEPT, REJECTED, SYNTHESIS_SCHEMAS

SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")  # the whole key (fullmatch: '$' would allow a final \n)
JSON_COLUMNS = ("metadata", "params", "augmentations")  # string columns holding JSON: objects in JSON metadata
# a synthesis sample as a trainer's (input image, output image) pair, by table kind
IMAGE_PAIRS = {"edit": ("source_image", "target_image"), "subject": ("reference_image", "target_image")}

T = TypeVar("T")
Say = Callable[[str], None]


class ExportError(ValueError):
    """The export cannot be made (unsafe key, DEST not usable, library missing); the message says why."""


# ------------------------------------------------------------------ tables and columns
@dataclass(frozen=True)
class Table:
    """One export table: DEST/<name>/ (a curated run's split, a synthesis run's config), the kind of its
    rows (``curated``, ``edit``, ``subject``), the output folder's shard folders it reads, and their schema."""

    name: str
    kind: str
    folders: tuple[str, ...]
    schema: pa.Schema

    @functools.cached_property
    def binary(self) -> frozenset[str]:
        """The columns holding encoded images (image, source/target/reference image, PNG masks)."""
        return frozenset(f.name for f in self.schema if pa.types.is_binary(f.type))


def tables(manifest: dict, kept_only: bool) -> list[Table]:
    """The tables an export of this output folder writes."""
    if manifest["kind"] == "synthesis":
        return [Table(kind, kind, (kind,), SYNTHESIS_SCHEMAS[kind]) for kind in ("edit", "subject")]
    split = {"train": KEPT} if kept_only else {"train": KEPT, "rejected": REJECTED}
    return [Table(name, "curated", (folder,), CURATED_SCHEMA) for name, folder in split.items()]


def is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def typed_columns(table: Table, fmt: str, type_of: Callable[[pa.DataType], Optional[T]]) -> dict[str, T]:
    """Column -> ``fmt``'s type for every column of the table, in schema order; ``type_of`` maps a pyarrow
    type (None: the format has no type for it, which is a bug to fix in the format's module)."""
    out: dict[str, T] = {}
    for f in table.schema:
        t = type_of(f.type)
        if t is None:
            raise TypeError(f"export format {fmt}: no type for column {table.name}.{f.name} ({f.type}); "
                            f"map {f.type} in unicurate/manifests/export/{fmt}.py")
        out[f.name] = t
    return out


# ------------------------------------------------------------------ reading
@dataclass(frozen=True)
class ExportOptions:
    """What the command line chose, beyond format and DEST. ``layout``: one of the format's ``layouts`` (its
    first is the default); ``edit_types``: for a synthesis run, only these edit types (None: all);
    ``embeddings``: copy the run's CLIP embeddings (``OUT/embeddings/``) into DEST/embeddings/."""

    kept_only: bool = False
    max_count: int = 10_000
    layout: Optional[str] = None
    edit_types: Optional[tuple[str, ...]] = None
    embeddings: bool = False


@dataclass(frozen=True)
class Source:
    """The output folder being exported, and the options of this export."""

    out_dir: str
    manifest: dict
    options: ExportOptions = ExportOptions()

    @property
    def kept_only(self) -> bool:
        return self.options.kept_only

    @property
    def synthesis(self) -> bool:
        return self.manifest["kind"] == "synthesis"

    def tables(self) -> list[Table]:
        return tables(self.manifest, self.kept_only)

    def shards(self, table: Table) -> Iterator[list[dict]]:
        """Rows of each of the table's shards, one shard at a time, each with every column of the table's
        schema (edit rows: only the chosen edit types)."""
        from unicurate.manifests import curated
        from unicurate.manifests import manifest as mf
        from unicurate.manifests import stats as st

        read = curated.read_rows if table.kind == "curated" else mf.read_rows
        wanted = self.options.edit_types if table.kind == "edit" else None
        for path in st.shard_paths(self.out_dir, self.manifest, table.folders):
            rows = read(path)
            yield rows if wanted is None else [r for r in rows if r["edit_type"] in wanted]


# ------------------------------------------------------------------ formats
@dataclass(frozen=True)
class ExportFormat:
    """One export format, declared as ``FORMAT`` in the module of its name (the ``--format`` value).

    ``module`` is the optional library its writer imports and ``requires`` the
    distribution that provides it (both in the ``export`` extra); ``write``
    writes every table of the source under DEST and returns rows per table.
    ``kinds``: the output folders it exports (``curated``, ``synthesis``);
    ``layouts``: the ``--layout`` values it knows, its default first;
    ``check(manifest, options)``: its own refusals (an ExportError), made
    before anything is written.
    """

    name: str
    title: str
    module: str
    requires: str
    write: Callable[[Source, Path, Say], dict[str, int]]  # (source with its options, DEST, say)
    kinds: tuple[str, ...] = ("curated", "synthesis")
    layouts: tuple[str, ...] = ("default",)
    check: Optional[Callable[[dict, "ExportOptions"], None]] = None

    def check_installed(self) -> None:
        """Fail before anything is written when the format's library is missing."""
        try:
            importlib.import_module(self.module)
        except ImportError as exc:
            raise ExportError(f"{self.requires} is not installed ({exc}); pip install 'unicurate[export]'") from None


def write_samples(source: Source, dest: Path, say: Say, open_sink: Callable[[Path, Table], ContextManager],
                  to_sample: Callable[[Table, dict], Any]) -> dict[str, int]:
    """Each table into DEST/<table>/ through ``open_sink(folder, table)`` (a context manager with
    ``write``); ``to_sample(table, row)`` makes what it writes. Returns rows per table."""
    counts = {}
    for table in source.tables():
        folder = inside(dest, dest / table.name)
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        with open_sink(folder, table) as sink:
            for rows in source.shards(table):
                for row in rows:
                    sink.write(to_sample(table, row))
                    n += 1
        counts[table.name] = n
        say(f"{table.name}: {n} samples -> {folder}")
    return counts


# ------------------------------------------------------------------ keys, paths, values
def check_key(key: Any) -> str:
    """A key safe as a file/tar member name: no separators, no dots, no traversal."""
    if not isinstance(key, str) or not SAFE_KEY.fullmatch(key):
        shown = repr(key) if len(repr(key)) <= 120 else repr(key)[:100] + f"... ({len(key)} characters)"
        raise ExportError(f"unsafe sample key {shown}: keys must match {SAFE_KEY.pattern} (no '/', '.', '..'); "
                          "the source shards were not written by unicurate or were modified")
    return key


def inside(dest: Path, path: Path) -> Path:
    """``path``, when it resolves (links followed) to somewhere strictly under ``dest``; else ExportError."""
    d, p = os.path.realpath(dest), os.path.realpath(path)
    if os.path.commonpath([d, p]) != d or p == d:
        raise ExportError(f"refusing to write {path}: it is outside {dest}")
    return path


def nan_to_none(row: dict) -> dict:
    """The row with NaN floats as None (JSON has no NaN)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def json_safe(table: Table, row: dict) -> dict:
    """The row without its binary columns, NaN -> None, JSON strings parsed (JSON metadata)."""
    out = nan_to_none({k: v for k, v in row.items() if k not in table.binary})
    for k in JSON_COLUMNS:
        if isinstance(out.get(k), str):
            try:
                out[k] = json.loads(out[k])
            except ValueError:
                pass
    return out


def image_ext(fmt: Optional[str], data: Optional[bytes]) -> str:
    """The file extension of an encoded image: its recorded format, else sniffed (PNG or JPEG)."""
    f = (fmt or "").lower().lstrip(".")
    if f in ("jpeg", "jpg"):
        return "jpg"
    if f in ("png", "webp"):
        return f
    if data and data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "jpg"
