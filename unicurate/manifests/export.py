"""Export an output folder to the formats trainers read.

- ``webdataset``: tar shards written by ``webdataset.ShardWriter``. A curated
  sample is ``{key}.jpg|png|webp`` + ``{key}.txt`` (caption) + ``{key}.json``
  (scores and metadata); an edit triplet is ``{key}.src.<ext>``,
  ``{key}.tgt.<ext>``, ``{key}.mask.png``, ``{key}.instruction.txt`` +
  ``{key}.json``; a subject sample ``{key}.ref.png``, ``{key}.tgt.<ext>``,
  ``{key}.mask.png``, ``{key}.instruction.txt`` + ``{key}.json``.
- ``mds``: MosaicML Streaming shards written by ``streaming.MDSWriter`` with
  declared column types, uncompressed (images are already compressed: the exact stored bytes, scores float64 with
  NaN for "not scored", the full row as a ``json`` column).
- ``hf``: Parquet files written by ``datasets`` with ``Image`` features, plus a
  dataset card (README.md: license, configs, the funnel, the models) so
  ``datasets.load_dataset(DEST)`` and ``load_dataset("parquet", data_dir=...)``
  work.

Rows are read shard by shard through the manifest (one source shard in memory
at a time). Every file goes under DEST (keys are checked; nothing is written
outside it) and DEST gets ``unicurate-export.json`` with counts and checksums.
A rerun into the same DEST replaces the previous export's files.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from unicurate import __version__
from unicurate.manifests import manifest as mf
from unicurate.manifests import stats as st
from unicurate.models.resolver import sha256_file
from unicurate.schema import KEPT, REJECTED

FORMATS = ("webdataset", "mds", "hf")
EXPORT_MANIFEST = "unicurate-export.json"
SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")  # the whole key (fullmatch: '$' would allow a final \n)
CURATED_FLOATS = st.MODEL_SCORES
EDIT_FLOATS = st.EDIT_SCORES
SUBJECT_FLOATS = ("detection_score", "pred_iou", "stability_score", "mask_area", "largest_component")
_BINARY = {"image", "source_image", "target_image", "mask", "reference_image"}


class ExportError(ValueError):
    """The export cannot be made (unsafe key, DEST not usable, library missing); the message says why."""


# ------------------------------------------------------------------ reading
def _tables(manifest: dict, kept_only: bool) -> dict[str, list[str]]:
    """Export table -> the manifest's shard folders it reads."""
    if manifest["kind"] == "synthesis":
        return {"edit": ["edit"], "subject": ["subject"]}
    return {"train": [KEPT]} if kept_only else {"train": [KEPT], "rejected": [REJECTED]}


def _read_shards(out_dir: str, manifest: dict, subs: Sequence[str]) -> Iterator[list[dict]]:
    """Rows of each listed shard, one shard at a time."""
    for path in st.shard_paths(out_dir, manifest, subs):
        yield mf.read_rows(path)


def _write_samples(out_dir, manifest, dest: Path, kept_only: bool, say, open_sink, to_sample) -> dict[str, int]:
    """Each export table into DEST/<table>/ through ``open_sink(folder, table)`` (a context manager with
    ``write``); ``to_sample(table, row)`` makes what it writes. Returns rows per table."""
    counts = {}
    for table, subs in _tables(manifest, kept_only).items():
        folder = _inside(dest, dest / table)
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        with open_sink(folder, table) as sink:
            for rows in _read_shards(out_dir, manifest, subs):
                for row in rows:
                    sink.write(to_sample(table, row))
                    n += 1
        counts[table] = n
        say(f"{table}: {n} samples -> {folder}")
    return counts


def check_key(key: Any) -> str:
    """A key safe as a file/tar member name: no separators, no dots, no traversal."""
    if not isinstance(key, str) or not SAFE_KEY.fullmatch(key):
        shown = repr(key) if len(repr(key)) <= 120 else repr(key)[:100] + f"... ({len(key)} characters)"
        raise ExportError(f"unsafe sample key {shown}: keys must match {SAFE_KEY.pattern} (no '/', '.', '..'); "
                          "the source shards were not written by unicurate or were modified")
    return key


def _inside(dest: Path, path: Path) -> Path:
    d, p = os.path.realpath(dest), os.path.realpath(path)
    if os.path.commonpath([d, p]) != d or p == d:
        raise ExportError(f"refusing to write {path}: it is outside {dest}")
    return path


def _json_safe(row: dict) -> dict:
    """The row without binary columns, NaN -> None (JSON metadata)."""
    out = {}
    for k, v in row.items():
        if k in _BINARY:
            continue
        if isinstance(v, float) and math.isnan(v):
            v = None
        out[k] = v
    for k in ("metadata", "params", "augmentations"):
        if isinstance(out.get(k), str):
            try:
                out[k] = json.loads(out[k])
            except ValueError:
                pass
    return out


def _ext(fmt: Optional[str], data: Optional[bytes]) -> str:
    f = (fmt or "").lower().lstrip(".")
    if f in ("jpeg", "jpg"):
        return "jpg"
    if f in ("png", "webp"):
        return f
    if data and data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "jpg"


# ------------------------------------------------------------------ webdataset
def _wds_sample(table: str, row: dict) -> dict:
    key = check_key(row["key"])
    meta = json.dumps(_json_safe(row), ensure_ascii=False, default=str).encode("utf-8")
    s: dict[str, Any] = {"__key__": key, "json": meta}
    if table in ("train", "rejected"):
        if row.get("image"):
            s[_ext(row.get("image_format"), row["image"])] = row["image"]
        s["txt"] = (row.get("caption") or "").encode("utf-8")
    elif table == "edit":
        ext = _ext(row.get("image_format"), row.get("source_image"))
        s[f"src.{ext}"] = row["source_image"]
        s[f"tgt.{ext}"] = row["target_image"]
        s["mask.png"] = row["mask"]
        s["instruction.txt"] = (row.get("instruction") or "").encode("utf-8")
    else:  # subject
        s["ref.png"] = row["reference_image"]
        s[f"tgt.{_ext(row.get('image_format'), row.get('target_image'))}"] = row["target_image"]
        s["mask.png"] = row["mask"]
        s["instruction.txt"] = (row.get("instruction") or "").encode("utf-8")
    return {k: v for k, v in s.items() if v is not None}


def _export_wds(out_dir, manifest, dest: Path, kept_only: bool, max_count: int, say) -> dict[str, int]:
    try:
        import webdataset as wds
    except ImportError as exc:  # pragma: no cover - the export extra is part of the dev install
        raise ExportError(f"webdataset is not installed ({exc}); pip install 'unicurate[export]'") from None

    def open_sink(folder: Path, table: str):
        return wds.ShardWriter(str(folder / f"{table}-%06d.tar"), maxcount=max_count, verbose=0, encoder=False,
                               mtime=0)

    return _write_samples(out_dir, manifest, dest, kept_only, say, open_sink, _wds_sample)


# ------------------------------------------------------------------ MDS
@functools.lru_cache(maxsize=None)
def _mds_columns(table: str) -> dict[str, str]:
    if table in ("train", "rejected"):
        cols = {"key": "str", "caption": "str", "image": "bytes", "image_format": "str", "width": "int",
                "height": "int", "status": "str", "url": "str", "source": "str"}
        cols.update({c: "float64" for c in CURATED_FLOATS})
    elif table == "edit":
        cols = {"key": "str", "source_key": "str", "edit_type": "str", "instruction": "str", "source_image": "bytes",
                "target_image": "bytes", "mask": "bytes", "image_format": "str", "phrase": "str", "width": "int",
                "height": "int"}
        cols.update({c: "float64" for c in EDIT_FLOATS})
    else:
        cols = {"key": "str", "source_key": "str", "instruction": "str", "reference_image": "bytes",
                "target_image": "bytes", "mask": "bytes", "image_format": "str", "phrase": "str", "width": "int",
                "height": "int"}
        cols.update({c: "float64" for c in SUBJECT_FLOATS})
    cols["meta"] = "json"  # the whole row (nulls kept), minus image bytes
    return cols


def _mds_sample(columns: dict[str, str], row: dict) -> dict:
    check_key(row["key"])
    out: dict[str, Any] = {}
    for name, kind in columns.items():
        if name == "meta":
            out[name] = _json_safe(row)
            continue
        v = row.get(name)
        if kind == "str":
            out[name] = "" if v is None else str(v)
        elif kind == "bytes":
            out[name] = b"" if v is None else bytes(v)
        elif kind == "int":
            out[name] = -1 if v is None else int(v)
        else:
            out[name] = float("nan") if v is None else float(v)
    return out


def _export_mds(out_dir, manifest, dest: Path, kept_only: bool, max_count: int, say) -> dict[str, int]:
    try:
        from streaming import MDSWriter
    except ImportError as exc:  # pragma: no cover
        raise ExportError(f"mosaicml-streaming is not installed ({exc}); pip install 'unicurate[export]'") from None

    def open_sink(folder: Path, table: str):
        return MDSWriter(out=str(folder), columns=_mds_columns(table), compression=None, size_limit="64mb",
                         hashes=["sha1"], progress_bar=False)

    return _write_samples(out_dir, manifest, dest, kept_only, say, open_sink,
                          lambda table, row: _mds_sample(_mds_columns(table), row))


# ------------------------------------------------------------------ Hugging Face
def _hf_features(table: str):
    import datasets as hf

    seq = getattr(hf, "List", hf.Sequence)
    s, f32, i32 = hf.Value("string"), hf.Value("float32"), hf.Value("int32")
    if table in ("train", "rejected"):
        feats = {"key": s, "image": hf.Image(), "caption": s, "url": s, "source": s, "status": s,
                 "reject_reasons": seq(s), "error": s, "duplicate_of": s, "image_format": s, "width": i32,
                 "height": i32, "original_width": i32, "original_height": i32, "sha256": s, "phash": s}
        feats.update({c: f32 for c in CURATED_FLOATS})
        feats.update({"text_boxes": i32, "ocr_text": s, "metadata": s})
    elif table == "edit":
        feats = {"key": s, "source_key": s, "edit_type": s, "instruction": s, "source_image": hf.Image(),
                 "target_image": hf.Image(), "mask": hf.Image(), "phrase": s, "box": seq(f32), "caption": s,
                 "params": s, "partner_key": s, "template_id": s, "width": i32, "height": i32}
        feats.update({c: f32 for c in EDIT_FLOATS})
    else:
        feats = {"key": s, "source_key": s, "instruction": s, "reference_image": hf.Image(),
                 "target_image": hf.Image(), "mask": hf.Image(), "phrase": s, "box": seq(f32), "caption": s,
                 "augmentations": s, "template_id": s, "width": i32, "height": i32}
        feats.update({c: f32 for c in SUBJECT_FLOATS})
    return hf.Features(feats)


def _hf_columns(features, rows: list[dict]) -> dict[str, list]:
    cols: dict[str, list] = {name: [] for name in features}
    for row in rows:
        check_key(row["key"])
        for name in features:
            v = row.get(name)
            if name in _BINARY:
                v = {"bytes": bytes(v), "path": None} if v else None
            cols[name].append(v)
    return cols


def _export_hf(out_dir, manifest, dest: Path, kept_only: bool, max_count: int, say) -> dict[str, int]:
    try:
        import datasets as hf
    except ImportError as exc:  # pragma: no cover
        raise ExportError(f"datasets is not installed ({exc}); pip install 'unicurate[export]'") from None
    hf.disable_progress_bars()
    counts = {}
    synthesis = manifest["kind"] == "synthesis"
    for table, subs in _tables(manifest, kept_only).items():
        features = _hf_features(table)
        folder = _inside(dest, dest / "data" / table) if synthesis else _inside(dest, dest / "data")
        folder.mkdir(parents=True, exist_ok=True)
        split = "train" if synthesis else table
        # datasets cannot write or read an empty Parquet file with Image features: empty source shards are
        # skipped, files are numbered over the non-empty ones, and a table without rows gets no files
        shards = (manifest.get("shards") or {})
        n_files = sum(1 for sub in subs for sh in shards.get(sub, []) if sh.get("rows"))
        n = i = 0
        for rows in _read_shards(out_dir, manifest, subs):
            if not rows:
                continue
            ds = hf.Dataset.from_dict(_hf_columns(features, rows), features=features, split=hf.Split(split))
            ds.to_parquet(str(_inside(dest, folder / f"{split}-{i:05d}-of-{n_files:05d}.parquet")))
            n += len(rows)
            i += 1
        counts[table] = n
        say(f"{table}: {n} rows -> {folder}")
    (dest / "README.md").write_text(dataset_card(manifest, counts, kept_only), encoding="utf-8")
    return counts


def dataset_card(manifest: dict, counts: dict[str, int], kept_only: bool) -> str:
    """README.md for the Hugging Face export: YAML header (license, configs) + funnel and models."""
    synthesis = manifest["kind"] == "synthesis"
    recipe = manifest.get("recipe", {})
    name = recipe.get("name") or manifest["kind"]
    y = ["---", "license: other", "license_name: mixed-web-sources",
         "license_details: >-", "  Images and captions come from the web URLs in the source lists; each keeps the",
         "  license of its origin. Check the rights of every source before training or redistribution.",
         "pretty_name: " + json.dumps(f"unicurate {name}"),
         "tags:", "- unicurate", "- image-text" if not synthesis else "- image-editing",
         "task_categories:", "- text-to-image" if not synthesis else "- image-to-image", "configs:"]
    tables = [t for t, n in counts.items() if n]  # a table without rows has no files to point at
    if synthesis:
        for i, table in enumerate(tables):
            y += [f"- config_name: {table}", "  data_files:", "  - split: train",
                  f"    path: data/{table}/train-*.parquet"]
            if i == 0:
                y.append("  default: true")
    else:
        y += ["- config_name: default", "  data_files:"]
        for table in tables:
            y += [f"  - split: {table}", f"    path: data/{table}-*.parquet"]
    y.append("---")
    body = [f"# unicurate {manifest['kind']} dataset: {name}", ""]
    if manifest.get("uncalibrated"):
        bad = ", ".join(m.get("name", "?") for m in manifest.get("models", []) if not m.get("calibrated"))
        body += [f"> **Uncalibrated models** ({bad}): scores come from randomly initialised models (tiny profile) "
                 "and are meaningless. Do not train on this selection.", ""]
    body += [f"Made by unicurate {manifest.get('unicurate_version', __version__)} on "
             f"{manifest.get('created_at', '?')}; recipe hash `{manifest.get('recipe_hash', '?')}`"
             f"{'; only kept rows' if kept_only and not synthesis else ''}.", "",
             "| split | rows |", "|---|---|"] + [f"| {t} | {n} |" for t, n in counts.items()] + [""]
    if synthesis:
        f = manifest.get("funnel", {})
        body += ["## Synthesis funnel", "", "| edit type | written | rejected |", "|---|---|---|"]
        for t, v in (f.get("edits") or {}).items():
            body.append(f"| {t} | {v.get('written', 0)} | {v.get('rejected', 0)} |")
        body.append("")
    else:
        f = manifest.get("funnel", {})
        body += ["## Funnel", "", f"{f.get('inputs', '?')} input rows.", "", "| stage | rows |", "|---|---|"]
        body += [f"| {s['label']} | {s['rows']} |" for s in f.get("stages", [])]
        if f.get("reasons"):
            body += ["", "| reject reason | rows |", "|---|---|"] + [f"| {r} | {n} |" for r, n in f["reasons"].items()]
        body.append("")
    body += ["## Models", "", "| model | weights | calibrated |", "|---|---|---|"]
    body += [f"| {m.get('name')} | `{m.get('uri')}` | {'yes' if m.get('calibrated') else '**no**'} |"
             for m in manifest.get("models", [])]
    body += ["", "## Load", "", "```python", "import datasets",
             "ds = datasets.load_dataset(\"path/to/this/folder\")" if not synthesis else
             "ds = datasets.load_dataset(\"path/to/this/folder\", \"edit\")  # or \"subject\"", "```", ""]
    return "\n".join(y + [""] + body)


# ------------------------------------------------------------------ driver
def _prepare_dest(dest: Path) -> None:
    """DEST must be new, empty, or a previous unicurate export (whose files are removed first)."""
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"--to {dest} exists and is not a folder")
    if not dest.exists():
        dest.mkdir(parents=True)
        return
    entries = list(dest.iterdir())
    if not entries:
        return
    prev = dest / EXPORT_MANIFEST
    if not prev.exists():
        raise ExportError(f"--to {dest} is not empty and holds no {EXPORT_MANIFEST}; choose an empty or new folder "
                          "(an earlier unicurate export there is replaced)")
    for entry in entries:  # an earlier export: remove what it wrote
        _inside(dest, entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def export(out_dir: str, fmt: str, to: str, kept_only: bool = False, max_count: int = 10_000,
           say: Callable[[str], None] = lambda m: None) -> dict:
    """Export ``out_dir`` to ``to`` in ``fmt``; returns the export manifest (also written to DEST)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if "://" in to:
        raise ExportError(f"--to {to}: exports are written to a local folder; copy it to the bucket afterwards "
                          "(gsutil -m cp -r / gcloud storage cp -r)")
    manifest = st.load_manifest(out_dir)
    dest = Path(to).absolute()
    src = Path(out_dir).absolute() if "://" not in out_dir else None
    if src is not None and (os.path.commonpath([os.path.realpath(src), os.path.realpath(dest)])
                            == os.path.realpath(src)):
        raise ExportError(f"--to {to} is inside the output folder {out_dir}; choose a folder outside it")
    for subs in _tables(manifest, kept_only).values():  # every key is checked before anything is written
        for key in st.scan(out_dir, manifest, subs, ["key"]).collect()["key"].to_list():
            check_key(key)
    _prepare_dest(dest)
    writer = {"webdataset": _export_wds, "mds": _export_mds, "hf": _export_hf}[fmt]
    counts = writer(out_dir, manifest, dest, kept_only, max_count, say)
    files = []
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        _inside(dest, path)
        if path.name == EXPORT_MANIFEST:
            continue
        files.append({"path": path.relative_to(dest).as_posix(), "bytes": path.stat().st_size,
                      "sha256": sha256_file(path)})
    em = {
        "kind": "unicurate-export", "format": fmt, "unicurate_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": str(out_dir), "kind": manifest["kind"], "schema_version": manifest.get("schema_version"),
                   "recipe_hash": manifest.get("recipe_hash"), "uncalibrated": bool(manifest.get("uncalibrated"))},
        "kept_only": bool(kept_only) if manifest["kind"] == "curated" else None,
        "counts": counts, "files": files,
    }
    (dest / EXPORT_MANIFEST).write_text(json.dumps(em, indent=2) + "\n", encoding="utf-8")
    return em

