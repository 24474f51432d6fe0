"""Integrity validation of an output folder against its manifest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

import pyarrow.parquet as pq

from unicurate.manifests import manifest as mf
from unicurate.schema import KEPT, REJECTED, REASON_CODES, SCHEMAS


@dataclass
class Report:
    out_dir: str
    problems: list[str] = field(default_factory=list)
    checked_shards: int = 0
    rows: int = 0

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


def _open_parquet(path: str) -> pq.ParquetFile:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return pq.ParquetFile(FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED))


def validate(out_dir: str, check_rows: bool = True) -> Report:
    """Check manifest vs. shards: presence, checksums, row counts, schema, invariants, unique keys."""
    rep = Report(out_dir)
    try:
        manifest = mf.read_manifest(out_dir)
    except FileNotFoundError as exc:
        rep.add(str(exc))
        return rep
    except ValueError as exc:
        rep.add(f"{mf.join(out_dir, mf.MANIFEST_NAME)} is not valid JSON: {exc}")
        return rep

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

    present = {rel for sub in mf.SHARD_DIRS for rel in mf.list_shard_files(out_dir, sub)}
    for rel in sorted(present - set(listed)):
        rep.add(f"{rel}: shard file is not listed in the manifest (left from another run?)")

    seen_keys: dict[str, str] = {}
    for rel, shard in listed.items():
        path = mf.join(out_dir, *rel.split("/"))
        if rel not in present:
            rep.add(f"{rel}: listed in the manifest but missing")
            continue
        rep.checked_shards += 1
        try:
            sha, size = _sha256_of(path)
        except Exception as exc:  # noqa: BLE001
            rep.add(f"{rel}: cannot read: {exc}")
            continue
        if size != shard["bytes"]:
            rep.add(f"{rel}: size {size} bytes, manifest says {shard['bytes']}")
        if sha != shard["sha256"]:
            rep.add(f"{rel}: sha256 {sha[:12]}… does not match the manifest's {shard['sha256'][:12]}… (modified or corrupt)")
            continue
        try:
            pf = _open_parquet(path)
        except Exception as exc:  # noqa: BLE001
            rep.add(f"{rel}: not a readable Parquet file: {exc}")
            continue
        rows = pf.metadata.num_rows
        if rows != shard["rows"]:
            rep.add(f"{rel}: {rows} rows, manifest says {shard['rows']}")
        file_schema = pf.schema_arrow
        if not file_schema.remove_metadata().equals(schema.remove_metadata()):
            rep.add(f"{rel}: schema differs from {version}")
            continue
        if check_rows:
            table = pf.read(columns=["key", "status", "reject_reasons"])
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

    counts = manifest.get("counts", {})
    inputs = counts.get("inputs")
    if inputs is None:
        rep.add("manifest has no counts.inputs")
    elif inputs != totals[KEPT] + totals[REJECTED]:
        rep.add(
            f"rows lost or duplicated: inputs {inputs} != kept {totals[KEPT]} + rejected {totals[REJECTED]}"
        )
    for sub in (KEPT, REJECTED):
        if counts.get(sub) is not None and counts[sub] != totals[sub]:
            rep.add(f"manifest counts.{sub} = {counts[sub]} but its {sub} shards hold {totals[sub]} rows")
    return rep


def format_report(rep: Report, manifest: Optional[dict] = None) -> str:
    if rep.ok:
        return (f"OK {rep.out_dir}: {rep.checked_shards} shards, {rep.rows} rows; checksums, row counts, "
                f"schema, unique keys and inputs == kept + rejected all verified")
    lines = [f"INVALID {rep.out_dir}: {len(rep.problems)} problem(s)"]
    lines += [f"  - {p}" for p in rep.problems]
    return "\n".join(lines)
