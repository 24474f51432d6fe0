"""Export an output folder to the formats trainers read: one module per format, found here.

Each format module (``webdataset``, ``mds``, ``hf``) declares ``FORMAT =
ExportFormat(...)``: its ``--format`` name, title, optional library and
writer. The CLI's ``--format`` choices and help come from :data:`FORMATS`;
the columns every format writes come from the shard schemas (``_base``).
Adding a format is adding a module here (named as the format) and its test.

:func:`export` checks every key and the destination before anything is
written; DEST gets ``unicurate-export.json`` with counts and checksums. A
rerun into the same DEST replaces the previous export's files.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence

from unicurate import __version__
from unicurate.declared import declarations
from unicurate.manifests.export._base import (ExportError, ExportFormat, ExportOptions, Source, check_key, inside,
                                              tables)

__all__ = ["EXPORT_MANIFEST", "FORMATS", "ExportError", "ExportFormat", "ExportOptions", "check_key", "export"]

EXPORT_MANIFEST = "unicurate-export.json"


def _discover() -> dict[str, ExportFormat]:
    """Every public module of this package and its ``FORMAT``, by name."""
    return {fmt.name: fmt for fmt in declarations(__name__, __path__, "FORMAT", ExportFormat)}


FORMATS: dict[str, ExportFormat] = _discover()


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
        inside(dest, entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_options(form: ExportFormat, manifest: dict, options: ExportOptions) -> None:
    """The options fit the format and the output folder (before anything is read or written)."""
    kind = manifest["kind"]
    if kind not in form.kinds:
        raise ExportError(f"--format {form.name} exports {' and '.join(form.kinds)} runs; this is a {kind} run")
    if options.layout is not None and options.layout not in form.layouts:
        raise ExportError(f"--layout {options.layout}: {form.name} has the layout(s) {', '.join(form.layouts)}")
    if options.edit_types is not None:
        from unicurate.schema import EDIT_TYPES

        if kind != "synthesis":
            raise ExportError("--edit-types selects edit types of a synthesis run; this is a curated run")
        unknown = sorted(set(options.edit_types) - set(EDIT_TYPES))
        if unknown:
            raise ExportError(f"--edit-types: unknown {', '.join(unknown)}; edit types: {', '.join(EDIT_TYPES)}")
    if options.embeddings and not manifest.get("embeddings"):
        raise ExportError("--embeddings: this run wrote no embeddings (curate with output.embeddings: true)")
    if form.check is not None:
        form.check(manifest, options)


def export(out_dir: str, fmt: str, to: str, kept_only: bool = False, max_count: int = 10_000,
           say: Callable[[str], None] = lambda m: None, *, layout: Optional[str] = None,
           edit_types: Optional[Sequence[str]] = None, embeddings: bool = False) -> dict:
    """Export ``out_dir`` to ``to`` in ``fmt``; returns the export manifest (also written to DEST)."""
    from unicurate.manifests import stats as st
    from unicurate.models.resolver import sha256_file

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if "://" in to:
        raise ExportError(f"--to {to}: exports are written to a local folder; copy it to the bucket afterwards "
                          "(gsutil -m cp -r / gcloud storage cp -r)")
    form = FORMATS[fmt]
    form.check_installed()
    manifest = st.load_manifest(out_dir)
    options = ExportOptions(kept_only, max_count, layout, tuple(edit_types) if edit_types is not None else None,
                            embeddings)
    _check_options(form, manifest, options)
    dest = Path(to).absolute()
    src = Path(out_dir).absolute() if "://" not in out_dir else None
    if src is not None and (os.path.commonpath([os.path.realpath(src), os.path.realpath(dest)])
                            == os.path.realpath(src)):
        raise ExportError(f"--to {to} is inside the output folder {out_dir}; choose a folder outside it")
    for table in tables(manifest, kept_only):  # every key is checked before anything is written
        for key in st.scan(out_dir, manifest, table.folders, ["key"]).collect()["key"].to_list():
            check_key(key)
    _prepare_dest(dest)
    source = Source(out_dir, manifest, options)
    counts = form.write(source, dest, say)
    if embeddings:
        from unicurate.manifests.export import _embeddings

        _embeddings.copy(source, dest, say)
    files = []
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        inside(dest, path)
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
        "layout": layout or form.layouts[0], "edit_types": list(options.edit_types or []) or None,
        "embeddings": bool(embeddings),
        "counts": counts, "files": files,
    }
    (dest / EXPORT_MANIFEST).write_text(json.dumps(em, indent=2) + "\n", encoding="utf-8")
    return em
