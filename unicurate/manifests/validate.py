"""Integrity validation of an output folder against its manifest."""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from typing import Callable, Optional

import pyarrow as pa

from unicurate.manifests import manifest as mf
from unicurate.schema import (EDIT_TYPES, IMAGE_STATUSES, KEPT, REASON_CODES, REJECTED, SCHEMAS, SYN_REASON_CODES,
                              SYNTHESIS_DIRS, SYNTHESIS_SCHEMA_VERSION, SYNTHESIS_SCHEMAS, curated_shard_problems,
                              shard_index, shard_schema_problems)


@dataclass
class Report:
    out_dir: str
    problems: list[str] = field(default_factory=list)
    checked_shards: int = 0
    rows: int = 0
    kind: str = "curated"

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, msg: str) -> None:
        self.problems.append(msg)


def _sha256_of(path: str) -> tuple[str, int]:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    sha = hashlib.sha256()
    size = 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def validate(out_dir: str, check_rows: bool = True) -> Report:
    """Check manifest vs. shards: presence, checksums, row counts, schema, invariants, unique keys."""
    rep = Report(out_dir)
    try:
        manifest = mf.read_manifest(out_dir)
    except FileNotFoundError as exc:
        rep.add(str(exc))
        rep.problems += _unfinished_details(out_dir)
        return rep
    except ValueError as exc:
        rep.add(f"{mf.join(out_dir, mf.MANIFEST_NAME)} is not valid JSON: {exc}")
        return rep
    shape = manifest_shape_problems(manifest)
    if shape:  # edited by hand or damaged: say where, rather than fail on it below
        for msg in shape:
            rep.add(f"{mf.join(out_dir, mf.MANIFEST_NAME)}: {msg}")
        return rep

    if manifest.get("kind") == "synthesis":
        return _validate_synthesis(rep, manifest, check_rows)
    version = manifest.get("schema_version")
    schema = SCHEMAS.get(version)
    if schema is None:
        rep.add(f"manifest schema_version {version!r} is not one this unicurate knows ({sorted(SCHEMAS)})")
        return rep

    listed: dict[str, dict] = {}
    totals = {KEPT: 0, REJECTED: 0}
    for sub in (KEPT, REJECTED):
        for shard in manifest.get("shards", {}).get(sub, []):
            listed[shard["path"]] = shard
            totals[sub] += int(shard["rows"])

    present = _present_vs_listed(rep, mf.SHARD_DIRS, listed)

    seen_keys: dict[str, str] = {}
    keys_of: dict[str, list[str]] = {}  # shard -> its keys in order (the embedding files are checked against them)
    for rel, shard in listed.items():
        if rel not in present:
            continue
        # the curated/2 rule: a filter's columns may be absent (the shard predates that filter), nothing else
        pf = _check_file(rep, out_dir, rel, shard, schema, version, curated_shard_problems)
        if pf is None:
            continue
        if check_rows:
            table = pf.read(columns=["key", "status", "reject_reasons"])
            keys_of[rel] = table.column("key").to_pylist()
            want = rel.split("/")[0]
            for key, status, reasons in zip(
                table.column("key").to_pylist(), table.column("status").to_pylist(),
                table.column("reject_reasons").to_pylist(),
            ):
                if key in seen_keys:
                    rep.add(f"{rel}: key {key} appears twice (also in {seen_keys[key]})")
                else:
                    seen_keys[key] = rel
                if status != want:
                    rep.add(f"{rel}: row {key} has status {status!r} in the {want}/ folder")
                if (want == KEPT) == bool(reasons):
                    rep.add(f"{rel}: row {key} is {want} with reject_reasons {reasons}")
                bad = [r for r in (reasons or []) if r not in REASON_CODES]
                if bad:
                    rep.add(f"{rel}: row {key} has unknown reason code(s) {bad}")
            rep.rows += len(table)

    _check_embeddings(rep, out_dir, manifest, keys_of, check_rows)
    counts = manifest.get("counts", {})
    inputs = counts.get("inputs")
    if inputs is None:
        rep.add(f"{mf.MANIFEST_NAME}: no counts.inputs")
    elif inputs != totals[KEPT] + totals[REJECTED]:
        rep.add(
            f"{mf.MANIFEST_NAME}: rows lost or duplicated: inputs {inputs} != kept {totals[KEPT]} + rejected "
            f"{totals[REJECTED]} (the rows of the shards it lists)"
        )
    for sub in (KEPT, REJECTED):
        if counts.get(sub) is not None and counts[sub] != totals[sub]:
            rep.add(f"{mf.MANIFEST_NAME}: counts.{sub} = {counts[sub]} but its {sub} shards hold {totals[sub]} rows")
    return rep


def _check_embeddings(rep: Report, out_dir: str, manifest: dict, keys_of: dict[str, list[str]],
                      check_rows: bool) -> None:
    """The embedding files (``output.embeddings``): each listed file present with its size and sha256; with
    ``check_rows``, each file set's keys in its shard's order (every row of a kept shard, the scored rows of a
    rejected one) and as many vectors as keys."""
    from unicurate.manifests import embeddings as emb

    by_index = {(status, shard_index(posixpath.basename(s["path"]))): s
                for status in (KEPT, REJECTED) for s in manifest.get("shards", {}).get(status, [])}
    listed_files = {f.get("path") for _, e in emb.entries(manifest) for f in (e.get("files") or {}).values()
                    if isinstance(f, dict)}
    for rel in emb.present(out_dir):
        if rel not in listed_files:
            rep.add(f"{rel}: not listed in the manifest (left by another run or an interrupted write)")
    if manifest.get("embeddings"):
        have = {(status, e.get("index")) for status, e in emb.entries(manifest)}
        for (status, i), shard in sorted(by_index.items()):
            if status == KEPT and shard.get("rows") and (status, i) not in have:
                rep.add(f"{mf.MANIFEST_NAME}: {shard['path']} has {shard['rows']} rows but no embedding files")
    for status, entry in emb.entries(manifest):
        files = entry.get("files") or {}
        intact = True
        blobs: dict[str, bytes] = {}  # each file read once: checksummed, then parsed
        for kind in emb.KINDS:
            f = files.get(kind)
            if not isinstance(f, dict):
                rep.add(f"{mf.MANIFEST_NAME}: embeddings.{status} set {entry.get('index')} lists no {kind} file")
                intact = False
                continue
            try:
                blobs[kind] = mf.read_bytes(out_dir, f["path"])
            except Exception as exc:  # noqa: BLE001 - missing or unreadable
                rep.add(f"{f['path']}: listed in the manifest but cannot be read ({type(exc).__name__})")
                intact = False
                continue
            sha, size = hashlib.sha256(blobs[kind]).hexdigest(), len(blobs[kind])
            if size != f.get("bytes") or sha != f.get("sha256"):
                rep.add(f"{f['path']}: {size} bytes, sha256 {sha[:12]}...: not the file the manifest lists "
                        f"({f.get('bytes')} bytes, {str(f.get('sha256'))[:12]}...)")
                intact = False
        shard = by_index.get((status, entry.get("index")))
        if shard is None:
            rep.add(f"{mf.MANIFEST_NAME}: embeddings.{status} set {entry.get('index')} belongs to no {status} shard")
            continue
        shard_rel = shard["path"]
        if not intact or not check_rows or shard_rel not in keys_of:
            continue
        keys, vectors = emb.parse(blobs)
        for kind, arr in vectors.items():
            if len(arr) != len(keys):
                rep.add(f"{files[kind]['path']}: {len(arr)} vectors for {len(keys)} metadata rows")
        shard_keys = keys_of[shard_rel]
        aligned = keys == shard_keys if status == KEPT else _in_order(keys, shard_keys)
        if not aligned or len(keys) != entry.get("rows"):
            what = "every row of" if status == KEPT else "rows of"
            rep.add(f"{files['metadata']['path']}: its keys are not {what} {shard_rel} in order")


def _in_order(sub: list[str], full: list[str]) -> bool:
    """``sub`` is a subsequence of ``full``."""
    it = iter(full)
    return all(k in it for k in sub)


def _unfinished_details(out_dir: str) -> list[str]:
    """What an unfinished folder holds beyond its shards: a pipeline that ended but was not checked, or a check
    that failed. Rerunning the same command rewrites the folder either way."""
    from apache_beam.io.filesystems import FileSystems

    out = []
    if FileSystems.exists(mf.join(out_dir, mf.PENDING_MANIFEST_NAME)):
        out.append(f"{mf.PENDING_MANIFEST_NAME} is there: the pipeline ended, but the run stopped before it checked "
                   "its output against the input (rerun the same command)")
    if FileSystems.exists(mf.join(out_dir, mf.CHECK_REPORT_NAME)):
        out.append(f"{mf.CHECK_REPORT_NAME} is there: the run's output did not hold every input row once (see that file)")
    return out


def check_run(out_dir: str, manifest: dict, expected_inputs: int) -> list[str]:
    """The driver's own check of a finished pipeline, before its manifest is published (problems; [] = fine).

    ``expected_inputs`` is the driver's count of the input rows, made before the pipeline ran. Every input row
    must be in exactly one output row: the manifest's counts and funnel, and the rows the written shards really
    hold (their Parquet footers, read here; no data is read), must all equal it. ``validate`` is the second,
    complete line of defence (checksums, keys, statuses).
    """
    out = []

    def same(what: str, value) -> None:
        if value != expected_inputs:
            out.append(f"{what} is {value}, but the input has {expected_inputs} rows")

    shape = manifest_shape_problems(manifest)
    if shape:
        return [f"the pipeline's manifest is malformed: {msg}" for msg in shape]
    counts = manifest["counts"]
    same("counts.inputs", counts.get("inputs"))
    synthesis = manifest.get("kind") == "synthesis"
    # a curate run: every input row is one kept or rejected row; synthesis: every input image is one images/ row
    row_dirs = ("images",) if synthesis else (KEPT, REJECTED)
    if not synthesis:
        same("the funnel's inputs", (manifest.get("funnel") or {}).get("inputs"))
        same("kept + rejected", (counts.get(KEPT) or 0) + (counts.get(REJECTED) or 0))
    in_files = 0
    for sub in row_dirs:
        for shard in manifest["shards"].get(sub, []):
            path = mf.join(out_dir, *shard["path"].split("/"))
            try:
                rows = mf.open_parquet(path).metadata.num_rows
            except Exception as exc:  # noqa: BLE001 - missing or unreadable: say which
                out.append(f"{shard['path']}: cannot read its footer: {exc}")
                continue
            if rows != shard["rows"]:
                out.append(f"{shard['path']}: holds {rows} rows, the manifest says {shard['rows']}")
            in_files += rows
    same(f"the rows in the written {' + '.join(d + '/' for d in row_dirs)} shards", in_files)
    return out


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def manifest_shape_problems(manifest) -> list[str]:
    """What makes a manifest unusable for validation: not an object, shard entries without a path, a row count,
    a size or a sha256, counts that are not numbers. [] when its shape is right (its content is checked next)."""
    if not isinstance(manifest, dict):
        return [f"not a JSON object but {type(manifest).__name__}"]
    out = []
    shards = manifest.get("shards")
    if not isinstance(shards, dict):
        out.append(f"'shards' is {type(shards).__name__}, not an object of shard lists per folder")
        shards = {}
    for sub, entries in shards.items():
        if not isinstance(entries, list):
            out.append(f"shards.{sub} is {type(entries).__name__}, not a list of shards")
            continue
        for i, e in enumerate(entries):
            where = f"shards.{sub}[{i}]"
            if not isinstance(e, dict):
                out.append(f"{where} is {type(e).__name__}, not a shard entry")
                continue
            path = e.get("path")
            if not isinstance(path, str) or not path.startswith(f"{sub}/") or "/" in path[len(sub) + 1:]:
                out.append(f"{where}: path {path!r} is not a file of the {sub}/ folder")
            else:
                where = f"{where} ({path})"
            for k in ("rows", "bytes"):
                if not _is_count(e.get(k)):
                    out.append(f"{where}: {k} is {e.get(k)!r}, not a count")
            sha = e.get("sha256")
            if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
                out.append(f"{where}: sha256 is {sha!r}, not a sha256 hex digest")
    counts = manifest.get("counts")
    if "counts" not in manifest:
        out.append("no 'counts' (inputs, kept, rejected, ...)")
    elif not isinstance(counts, dict):
        out.append(f"'counts' is {type(counts).__name__}, not an object of row counts")
    else:
        out += [f"counts.{k} is {v!r}, not a count" for k, v in counts.items() if not _is_count(v)]
    return out


def _present_vs_listed(rep: Report, dirs, listed) -> set[str]:
    """Shard files present in ``dirs``; unlisted and missing ones are problems."""
    present = {rel for sub in dirs for rel in mf.list_shard_files(rep.out_dir, sub, every_parquet=True)}
    for rel in sorted(present - set(listed)):
        rep.add(f"{rel}: Parquet file in the output folder is not listed in the manifest (left from another run "
                "or an interrupted write?)")
    for rel in sorted(set(listed) - present):
        rep.add(f"{rel}: listed in the manifest but missing")
    return present


def _check_file(rep: Report, out_dir: str, rel: str, shard: dict, schema, label: str,
                schema_problems: Optional[Callable[[pa.Schema], list[str]]] = None):
    """Size, checksum, row count and schema of one present, listed shard; the open ParquetFile or None.

    ``schema`` gives the metadata (version, kind) the file must carry; its columns are checked by
    ``schema_problems`` (default: exactly ``schema``'s columns, ``schema.shard_schema_problems``)."""
    path = mf.join(out_dir, *rel.split("/"))
    rep.checked_shards += 1
    try:
        sha, size = _sha256_of(path)
    except Exception as exc:  # noqa: BLE001
        rep.add(f"{rel}: cannot read: {exc}")
        return None
    if size != shard["bytes"]:
        rep.add(f"{rel}: size {size} bytes, manifest says {shard['bytes']}")
    if sha != shard["sha256"]:
        rep.add(f"{rel}: sha256 {sha[:12]}… does not match the manifest's {shard['sha256'][:12]}… (modified or corrupt)")
        return None
    try:
        pf = mf.open_parquet(path)
    except Exception as exc:  # noqa: BLE001
        rep.add(f"{rel}: not a readable Parquet file: {exc}")
        return None
    if pf.metadata.num_rows != shard["rows"]:
        rep.add(f"{rel}: {pf.metadata.num_rows} rows, manifest says {shard['rows']}")
    meta = pf.schema_arrow.metadata or {}
    for field_ in (b"unicurate.schema_version", b"unicurate.kind"):
        want = (schema.metadata or {}).get(field_)
        if want is not None and meta.get(field_) != want:
            got = meta.get(field_)
            rep.add(f"{rel}: {field_.decode()} is {got.decode() if got else 'missing'} in the file, this unicurate "
                    f"writes and reads {want.decode()} (schema.py)")
            return None
    problems = (schema_problems or (lambda got: shard_schema_problems(got, schema)))(pf.schema_arrow)
    if problems:
        rep.add(f"{rel}: schema differs from {label}: {'; '.join(problems)}")
        return None
    return pf


def _validate_synthesis(rep: Report, manifest: dict, check_rows: bool) -> Report:
    """Synthesis outputs: shards, one images row per input image, every sample tied to its image."""
    out_dir = rep.out_dir
    version = manifest.get("schema_version")
    if version != SYNTHESIS_SCHEMA_VERSION:
        rep.add(f"manifest schema_version {version!r} is not one this unicurate knows ({SYNTHESIS_SCHEMA_VERSION})")
        return rep
    shards = manifest.get("shards", {})
    listed = {s["path"]: (kind, s) for kind in SYNTHESIS_DIRS for s in shards.get(kind, [])}
    present = _present_vs_listed(rep, SYNTHESIS_DIRS, listed)
    totals = {k: 0 for k in SYNTHESIS_DIRS}
    images: dict[str, dict] = {}
    per_image = {k: {} for k in ("subject", "edit", "rejected")}
    keys: dict[str, str] = {}
    cols = {"images": ["source_key", "status", "reject_reasons", "subjects", "edits", "rejected"],
            "subject": ["key", "source_key"], "edit": ["key", "source_key", "edit_type"],
            "rejected": ["key", "source_key", "kind", "edit_type", "reject_reasons"]}
    for rel, (kind, shard) in sorted(listed.items()):
        totals[kind] += int(shard["rows"])
        if rel not in present:
            continue
        pf = _check_file(rep, out_dir, rel, shard, SYNTHESIS_SCHEMAS[kind], f"{version} {kind}")
        if pf is None or not check_rows:
            continue
        t = pf.read(columns=cols[kind]).to_pylist()
        rep.rows += len(t)
        for row in t:
            if kind == "images":
                sk = row["source_key"]
                if sk in images:
                    rep.add(f"{rel}: input image {sk} has two rows in images/")
                images[sk] = dict(row, shard=rel)
                if row["status"] not in IMAGE_STATUSES:
                    rep.add(f"{rel}: image {sk} has unknown status {row['status']!r}")
                if (row["status"] == "produced") == bool(row["reject_reasons"]):
                    rep.add(f"{rel}: image {sk} is {row['status']} with reasons {row['reject_reasons']}")
                bad = [r for r in row["reject_reasons"] if r not in SYN_REASON_CODES]
                if bad:
                    rep.add(f"{rel}: image {sk} has unknown reason code(s) {bad}")
                continue
            if row["key"] in keys:
                rep.add(f"{rel}: key {row['key']} appears twice (also in {keys[row['key']]})")
            keys[row["key"]] = rel
            per_image[kind][row["source_key"]] = per_image[kind].get(row["source_key"], 0) + 1
            if kind == "edit" and row["edit_type"] not in EDIT_TYPES:
                rep.add(f"{rel}: {row['key']} has unknown edit_type {row['edit_type']!r}")
            if kind == "rejected":
                if not row["reject_reasons"]:
                    rep.add(f"{rel}: rejected {row['key']} has no reasons")
                bad = [r for r in row["reject_reasons"] if r not in SYN_REASON_CODES]
                if bad:
                    rep.add(f"{rel}: rejected {row['key']} has unknown reason code(s) {bad}")
    counts = manifest.get("counts", {})
    inputs = counts.get("inputs")
    if inputs is None:
        rep.add(f"{mf.MANIFEST_NAME}: no counts.inputs")
    elif inputs != totals["images"]:
        rep.add(f"{mf.MANIFEST_NAME}: images lost or duplicated: {inputs} input images but {totals['images']} rows "
                f"in images/")
    for kind in SYNTHESIS_DIRS:
        if counts.get(kind) is not None and counts[kind] != totals[kind]:
            rep.add(f"{mf.MANIFEST_NAME}: counts.{kind} = {counts[kind]} but its {kind} shards hold {totals[kind]} "
                    f"rows")
    if check_rows:
        for kind, field_ in (("subject", "subjects"), ("edit", "edits"), ("rejected", "rejected")):
            for sk, n in per_image[kind].items():
                if sk not in images:
                    rep.add(f"{kind}/: {n} row(s) from image {sk}, which has no row in images/")
                elif images[sk][field_] != n:
                    rep.add(f"{kind}/: image {sk} has {n} row(s) but its images/ row says {images[sk][field_]}")
        for sk, row in images.items():
            made = per_image["subject"].get(sk, 0) + per_image["edit"].get(sk, 0)
            if row["status"] == "produced" and not made:
                rep.add(f"{row['shard']}: image {sk} is 'produced' but has no subject or edit rows")
            if row["status"] != "produced" and made:
                rep.add(f"{row['shard']}: image {sk} is {row['status']!r} but has {made} sample(s)")
            for kind in ("subject", "edit", "rejected"):
                if per_image[kind].get(sk, 0) == 0 and row[{"subject": "subjects", "edit": "edits",
                                                            "rejected": "rejected"}[kind]]:
                    rep.add(f"{row['shard']}: image {sk} says it has {kind} rows, none found")
    rep.kind = "synthesis"
    return rep


def format_report(rep: Report, manifest: Optional[dict] = None) -> str:
    if rep.ok and rep.kind == "synthesis":
        return (f"OK {rep.out_dir}: {rep.checked_shards} shards, {rep.rows} rows; checksums, row counts, schema, "
                f"unique keys, one images/ row per input image and every sample tied to its image all verified")
    if rep.ok:
        return (f"OK {rep.out_dir}: {rep.checked_shards} shards, {rep.rows} rows; checksums, row counts, "
                f"schema, unique keys and inputs == kept + rejected all verified")
    lines = [f"INVALID {rep.out_dir}: {len(rep.problems)} problem(s)"]
    lines += [f"  - {p}" for p in rep.problems]
    return "\n".join(lines)
