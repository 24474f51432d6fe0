"""Reading URL lists: parquet, csv, tsv, jsonl and plain url lists.

Files are found and opened through Beam's ``FileSystems`` (local paths, gs://,
and every other filesystem Beam has), compressed files (.gz, .bz2, .zst, ...)
are decompressed transparently. Problems with a whole file (missing, empty,
unreadable, no url column) are found by :func:`preflight` before any work
starts; problems with a single row become a rejected row (``invalid_input``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from unicurate.config import InputConfig
from unicurate.schema import Reason

FORMATS_BY_EXT = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".txt": "txt",
}
_COMPRESSED_EXT = (".gz", ".bz2", ".zst", ".zstd", ".deflate", ".lzma", ".xz")
_PARQUET_BATCH = 8192
_PARQUET_IMAGE_BATCH = 256


class InputError(ValueError):
    """A whole input file is unusable. The message names the file and the problem."""


@dataclass(frozen=True)
class InputFile:
    index: int
    path: str
    format: str
    source: str


@dataclass(frozen=True)
class Split:
    """A unit of reading: one file, or one row group of a parquet file."""

    file: InputFile
    row_group: Optional[int] = None
    first_row: int = 0
    rows: Optional[int] = None  # known without reading (a parquet row group's footer count); None for text files


def row_key(source: str, url: str, occurrence: int = 0) -> str:
    """Stable key of an input row: hash of source and url (and the repeat number for repeats)."""
    text = f"{source}\n{url}" if occurrence == 0 else f"{source}\n{url}\n#{occurrence}"
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


def _strip_compression(path: str) -> str:
    lower = path.lower()
    for ext in _COMPRESSED_EXT:
        if lower.endswith(ext):
            return path[: -len(ext)]
    return path


def detect_format(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    base = _strip_compression(path)
    ext = posixpath.splitext(base)[1].lower()
    if ext in FORMATS_BY_EXT:
        return FORMATS_BY_EXT[ext]
    raise InputError(
        f"{path}: cannot tell the input format from the extension {ext or '(none)'}; "
        f"set input.format to one of parquet, csv, tsv, jsonl, txt"
    )


def _source_name(path: str) -> str:
    base = posixpath.basename(_strip_compression(path.rstrip("/")))
    return posixpath.splitext(base)[0] or base


def match(pattern: str) -> list:
    """The files a file name or glob names, local or on any Beam filesystem (gs://): their metadata (path,
    size_in_bytes), sorted by path. Raises what the filesystem raises when it cannot list."""
    from apache_beam.io.filesystems import FileSystems

    return sorted((m for r in FileSystems.match([pattern]) for m in r.metadata_list), key=lambda m: m.path)


def expand_inputs(cfg: InputConfig) -> list[InputFile]:
    """Resolve globs to files (sorted, de-duplicated). Raises InputError when nothing matches."""
    found: list[str] = []
    for pattern in cfg.paths:
        try:
            metas = match(pattern)
        except Exception as exc:  # noqa: BLE001 - Beam raises BeamIOError and friends
            raise InputError(f"input.path {pattern!r}: cannot list: {exc}") from None
        paths = [m.path for m in metas]
        if not paths:
            raise InputError(f"input.path {pattern!r} matched no files")
        for m in metas:
            if m.size_in_bytes == 0:
                raise InputError(f"{m.path}: empty file (0 bytes); remove it from input.path or fill it")
        found.extend(p for p in paths if p not in found)
    return [
        InputFile(index=i, path=p, format=detect_format(p, cfg.format), source=cfg.source or _source_name(p))
        for i, p in enumerate(found)
    ]


def _open(path: str):
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path)  # compression detected from the extension


class _open_text:  # noqa: N801 - used like open()
    """Decoded text lines of a (possibly compressed, possibly remote) file, line endings kept.

    Beam's CompressedFile is not a full ``io`` object, so no TextIOWrapper; invalid
    UTF-8 is replaced rather than failing the whole file.
    """

    def __init__(self, path: str):
        self._fh = _open(path)

    def readline(self) -> str:
        return self._fh.readline().decode("utf-8", "replace")

    def __iter__(self):
        for raw in iter(self._fh.readline, b""):
            yield raw.decode("utf-8", "replace")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()
        return False


def _parquet(path: str):
    import pyarrow.parquet as pq

    # Parquet needs random access; Beam's compressed/remote streams may not seek, so buffer.
    fh = _open(path)
    try:
        fh.seek(0, io.SEEK_END)
        fh.seek(0)
        source = fh
    except Exception:  # noqa: BLE001
        source = io.BytesIO(fh.read())
    return pq.ParquetFile(source)


def _columns_of(f: InputFile) -> Optional[list[str]]:
    """Column names of a text file (None for plain url lists). Raises InputError."""
    with _open_text(f.path) as fh:
        if f.format == "txt":
            if any(line.strip() for line in fh):  # stops at the first url
                return None
            raise InputError(f"{f.path}: empty file (a txt input needs one url per line)")
        if f.format in ("csv", "tsv"):
            header = fh.readline()
            if not header.strip():
                raise InputError(f"{f.path}: empty file (a {f.format} input needs a header line)")
            return next(csv.reader([header], delimiter="\t" if f.format == "tsv" else ","))
        # the first JSON object tells the columns; a broken line before it is that row's problem (read_split
        # rejects it), but a file none of whose first lines is an object is no jsonl input
        first_problem, tried = None, 0
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            tried += 1
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as exc:
                obj, why = None, f"line {n} is not JSON ({getattr(exc, 'msg', type(exc).__name__)})"
            else:
                why = f"line {n} is not a JSON object"
            if isinstance(obj, dict):
                return list(obj)
            first_problem = first_problem or why
            if tried >= _JSONL_PROBE_LINES:
                break
        if first_problem is None:
            raise InputError(f"{f.path}: empty file")
        raise InputError(f"{f.path}: not JSON lines: none of its first {tried} line(s) is a JSON object "
                         f"({first_problem})")


_JSONL_PROBE_LINES = 100  # lines preflight reads to find the first JSON object of a jsonl file


def _is_text_type(t) -> bool:
    """Arrow types whose values read back as text (binary is decoded as UTF-8); null = a column of nulls."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _is_text_type(t.value_type)
    return (pa.types.is_null(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or str(t) in ("string_view", "binary_view"))


def _is_image_type(t) -> bool:
    """Encoded image bytes: binary, or a struct with a binary ``bytes`` field (the Hugging Face Image feature)."""
    import pyarrow as pa

    if pa.types.is_struct(t):
        idx = t.get_field_index("bytes")
        return idx >= 0 and _is_image_type(t.field(idx).type) and not pa.types.is_null(t.field(idx).type)
    return (pa.types.is_null(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_fixed_size_binary(t) or str(t) == "binary_view")


def _parquet_type_problems(f: InputFile, schema, cfg: InputConfig) -> list[str]:
    """Columns of a parquet file whose type cannot hold what they are named for (an int url, a list caption)."""
    out = []
    for field, col, want, ok in (("input.url_col", cfg.url_col, "text (string)", _is_text_type),
                                 ("input.caption_col", cfg.caption_col, "text (string)", _is_text_type),
                                 ("input.image_col", cfg.image_col, "encoded image bytes (binary, or a struct "
                                                                    "with a binary 'bytes' field)", _is_image_type)):
        if col is None or schema.get_field_index(col) < 0:
            continue
        t = schema.field(col).type
        if not ok(t):
            out.append(f"{f.path}: column {col!r} ({field}) has type {t}, expected {want}")
    return out


def json_type_problem(record: dict, cfg: InputConfig) -> Optional[str]:
    """What is wrong with the types of one JSON line's url/caption (None: fine). A row-level problem: the row
    becomes ``invalid_input``. The url must be a string (or null: no url); a caption a string, a number
    (written as text) or null."""
    def kind(v):
        return "an object" if isinstance(v, dict) else "an array" if isinstance(v, list) else \
            "a boolean" if isinstance(v, bool) else "a number" if isinstance(v, (int, float)) else type(v).__name__

    url = record.get(cfg.url_col)
    if url is not None and not isinstance(url, str):
        return f"the url ({cfg.url_col!r}) is {kind(url)}, {json.dumps(url)[:80]}, not a string"
    cap = record.get(cfg.caption_col) if cfg.caption_col else None
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (str, int, float))):
        return f"the caption ({cfg.caption_col!r}) is {kind(cap)}, {json.dumps(cap)[:80]}, not text"
    return None


def preflight(files: list[InputFile], cfg: InputConfig) -> dict[str, Optional[list[str]]]:
    """Check every input file, before any work: readable, not empty, has the url (and caption, image, carried)
    columns, and (parquet) of types that can hold them. Problems of single rows are left to the rows."""
    columns: dict[str, Optional[list[str]]] = {}
    for f in files:
        try:
            if f.format == "parquet":  # one footer read for the names and the types
                schema = _parquet(f.path).schema_arrow
                cols, problems = list(schema.names), _parquet_type_problems(f, schema, cfg)
            else:
                cols, problems = _columns_of(f), []
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{f.path}: cannot read as {f.format}: {type(exc).__name__}: {exc}") from None
        if cfg.image_col is not None and f.format != "parquet":
            raise InputError(f"{f.path}: input.image_col needs parquet inputs (this file is {f.format}); "
                             f"a {f.format} file cannot hold encoded images")
        if cols is not None:
            if cfg.url_col not in cols:
                raise InputError(
                    f"{f.path}: no url column {cfg.url_col!r} (columns: {', '.join(cols) or 'none'}); "
                    f"set input.url_col"
                )
            if cfg.image_col is not None and cfg.image_col not in cols:
                raise InputError(
                    f"{f.path}: no image column {cfg.image_col!r} (columns: {', '.join(cols) or 'none'}); "
                    f"set input.image_col, or null to download every url"
                )
            if cfg.caption_col is not None and cfg.caption_col not in cols:
                raise InputError(
                    f"{f.path}: no caption column {cfg.caption_col!r} (columns: {', '.join(cols) or 'none'}); "
                    f"set input.caption_col, or null for inputs without captions"
                )
            # a JSON line may leave out a key that others have, so only files with a fixed schema are checked
            missing = ([c for c in cfg.carry_columns if c not in cols]
                       if isinstance(cfg.carry_columns, list) and f.format != "jsonl" else [])
            if missing:
                raise InputError(
                    f"{f.path}: no column(s) {', '.join(map(repr, missing))} listed in input.carry_columns "
                    f"(columns: {', '.join(cols) or 'none'}); list only columns every input file has, or use 'all'"
                )
        elif isinstance(cfg.carry_columns, list) and cfg.carry_columns:
            raise InputError(f"{f.path}: a {f.format} url list has no columns to carry, but input.carry_columns "
                             f"lists {', '.join(map(repr, cfg.carry_columns))}")
        if problems:
            raise InputError("; ".join(problems))
        columns[f.path] = cols
    return columns


def plan_splits(files: list[InputFile]) -> list[Split]:
    """One split per file, or per row group for parquet (so big files read in parallel)."""
    splits: list[Split] = []
    for f in files:
        if f.format == "parquet":
            meta = _parquet(f.path).metadata
            first = 0
            for rg in range(meta.num_row_groups):
                n = meta.row_group(rg).num_rows
                splits.append(Split(f, rg, first, n))
                first += n
        else:
            splits.append(Split(f))
    return splits


def _as_text(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value != value:  # NaN from pandas-written files
        return None
    return str(value)


def _as_bytes(value: Any) -> Optional[bytes]:
    """Encoded image bytes from an image column: binary, or a {"bytes": ...} struct (Hugging Face Image)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value):
        return bytes(value)
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(text: Optional[str]) -> Optional[str]:
    """Valid Unicode for Arrow: lone surrogates (a JSON ``\\ud800`` escape) become U+FFFD, as undecodable bytes
    of text files do when they are read; the caption rule rejects such text as ``invalid_caption``."""
    if text is None:
        return None
    return _SURROGATE.sub("\ufffd", text)


class RowMaker:
    def __init__(self, cfg: InputConfig, split: Split):
        self.cfg = cfg
        self.file = split.file

    def __call__(self, row_number: int, record: Optional[dict], url: Any = None, error: Optional[str] = None) -> dict:
        cfg = self.cfg
        metadata: dict[str, Any] = {}
        caption = None
        image_bytes = None
        if record is not None:
            url = record.get(cfg.url_col)
            caption = record.get(cfg.caption_col) if cfg.caption_col else None
            if cfg.image_col:
                image_bytes = _as_bytes(record.get(cfg.image_col))
            if cfg.carry_columns != "none":
                wanted = record.keys() if cfg.carry_columns == "all" else cfg.carry_columns
                for col in wanted:
                    if col in (cfg.url_col, cfg.caption_col, cfg.image_col) or col not in record:
                        continue
                    metadata[col] = record[col]
        url_text = _clean(_as_text(url))
        if url_text is not None:
            url_text = url_text.strip()
        reasons: list[str] = []
        if error is None and not url_text:
            error = f"row {row_number}: no url in column {cfg.url_col!r}"
        if error is not None:
            reasons.append(Reason.INVALID_INPUT.value)
        key_url = url_text if url_text else f"<row {row_number}>"
        return {
            "key": row_key(self.file.source, f"{self.file.path}#{row_number}" if error else key_url),
            "url": url_text or None,
            "caption": _clean(_as_text(caption)),
            "source": self.file.source,
            "input_file": self.file.path,
            "input_row": row_number,
            "metadata": json.dumps(metadata, default=str, ensure_ascii=False, sort_keys=True) if metadata else None,
            "reject_reasons": reasons,
            "error": error,
            # already-downloaded bytes (input.image_col): decoded instead of downloading; not an output column
            "image_bytes": image_bytes if error is None else None,
        }


def read_split(split: Split, cfg: InputConfig, skip: int = 0, take: Optional[int] = None) -> Iterator[dict]:
    """Yield one dict per input row of the split (rows with problems carry ``invalid_input``): the ``take`` rows
    (default: all) after the first ``skip`` (a work unit's piece of the split). Rows before ``skip`` are passed
    over without being made into rows (parquet: whole record batches are skipped)."""
    make = RowMaker(cfg, split)
    f = split.file
    stop = None if take is None else skip + take
    if f.format == "parquet":
        pf = _parquet(f.path)
        first = split.first_row
        end = first + pf.metadata.row_group(split.row_group).num_rows
        if stop is not None:
            end = min(end, first + stop)
        n = first + skip
        # rows carrying images are read a few hundred at a time, not 8192 (which could be gigabytes)
        size = _PARQUET_IMAGE_BATCH if cfg.image_col else _PARQUET_BATCH
        at = first  # file row number of the batch's first row
        try:
            for batch in pf.iter_batches(batch_size=size, row_groups=[split.row_group]):
                lo, hi = max(n, at), min(end, at + batch.num_rows)
                at += batch.num_rows
                if lo >= hi:
                    if at >= end:
                        break
                    continue
                for record in batch.slice(lo - (at - batch.num_rows), hi - lo).to_pylist():
                    yield make(n, record)
                    n += 1
                if at >= end:
                    break
        except Exception as exc:  # noqa: BLE001 - a corrupt page (the footer was fine in preflight)
            # the footer says how many rows the row group has: each unreadable one still gets its rejected row
            why = f"row group {split.row_group} of {f.path} is unreadable from row {n} on: {type(exc).__name__}: {exc}"
            for m in range(n, end):
                yield make(m, None, error=f"row {m}: {why}")
        return
    for n, (record, url, error) in enumerate(_text_records(f, cfg, skip)):
        if stop is not None and n >= stop:
            break
        if n >= skip:
            yield make(n, record, url=url, error=error)


def _text_records(f: InputFile, cfg: Optional[InputConfig], skip: int = 0
                  ) -> Iterator[tuple[Optional[dict], Optional[str], Optional[str]]]:
    """(record, url, error) for each row of a csv/tsv/jsonl/txt file, in order: exactly one per input row.

    ``cfg=None`` (counting) skips decoding JSON lines: whether a line decodes never changes the row count; the
    first ``skip`` rows are passed over the same way ((None, None, None) each).
    """
    if f.format in ("csv", "tsv"):
        csv.field_size_limit(sys.maxsize)
        with _open_text(f.path) as fh:
            reader = csv.DictReader(fh, delimiter="\t" if f.format == "tsv" else ",")
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    yield None, None, f"line {reader.line_num}: malformed {f.format} ({exc})"
                    continue
                if None in record:  # more fields than the header
                    record.pop(None)
                yield record, None, None
        return
    with _open_text(f.path) as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if skip:
                skip -= 1
                yield None, None, None
            elif f.format == "txt":
                yield None, line.strip(), None
            elif cfg is None:
                yield None, None, None
            else:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield None, None, f"line {line_no}: not JSON ({exc.msg})"
                except (ValueError, RecursionError) as exc:  # a 5000-digit number, arrays nested 100000 deep
                    yield None, None, (f"line {line_no}: not readable JSON ({type(exc).__name__}: "
                                       f"{str(exc)[:200]})")
                else:
                    if not isinstance(record, dict):
                        yield None, None, f"line {line_no}: not a JSON object"
                    else:
                        problem = json_type_problem(record, cfg)
                        yield (None, None, f"line {line_no}: {problem}") if problem else (record, None, None)


def count_rows(split: Split) -> int:
    """Input rows of a split, as ``read_split`` will yield them: the footer's count for parquet, one streaming
    pass for text files. The driver counts the inputs with it before the pipeline runs (the run's reference)."""
    if split.file.format == "parquet":
        if split.rows is not None:
            return split.rows
        return _parquet(split.file.path).metadata.row_group(split.row_group).num_rows
    return sum(1 for _ in _text_records(split.file, None))
