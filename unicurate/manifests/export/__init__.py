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
from typing import Callable

from unicurate import __version__
from unicurate.declared import declarations
from unicurate.manifests.export._base import ExportError, ExportFormat, Source, check_key, inside, tables

__all__ = ["EXPORT_MANIFEST", "FORMATS", "ExportError", "ExportFormat", "check_key", "export"]

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


def export(out_dir: str, fmt: str, to: str, kept_only: bool = False, max_count: int = 10_000,
           say: Callable[[str], None] = lambda m: None) -> dict:
    """Export ``out_dir`` to ``to`` in ``fmt``; returns the export manifest (also written to DEST)."""
    from unicurate.manifests import stats as st
    from unicurate.models.resolver import sha256_file

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if "://" in to:
        raise ExportError(f"--to {to}: exports are written to a local folder; copy it to the bucket afterwards "
                          "(gsutil -m cp -r / gcloud storage cp -r)")
    FORMATS[fmt].check_installed()
    manifest = st.load_manifest(out_dir)
    dest = Path(to).absolute()
    src = Path(out_dir).absolute() if "://" not in out_dir else None
    if src is not None and (os.path.commonpath([os.path.realpath(src), os.path.realpath(dest)])
                            == os.path.realpath(src)):
        raise ExportError(f"--to {to} is inside the output folder {out_dir}; choose a folder outside it")
    for table in tables(manifest, kept_only):  # every key is checked before anything is written
        for key in st.scan(out_dir, manifest, table.folders, ["key"]).collect()["key"].to_list():
            check_key(key)
    _prepare_dest(dest)
    counts = FORMATS[fmt].write(Source(out_dir, manifest, kept_only), dest, max_count, say)
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
        "counts": counts, "files": files,
    }
    (dest / EXPORT_MANIFEST).write_text(json.dumps(em, indent=2) + "\n", encoding="utf-8")
    return em
