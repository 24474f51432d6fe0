"""The CLIP embeddings a curate run writes beside its shards (``output.embeddings: true``), in clip-retrieval's layout.

    OUT/embeddings/kept/img_emb/img_emb_00000.npy       float16 (rows, dim), L2-normalised image embeddings
    OUT/embeddings/kept/text_emb/text_emb_00000.npy     float16 (rows, dim), the captions' embeddings
    OUT/embeddings/kept/metadata/metadata_00000.parquet  key, url, caption, clip_score: row i describes row i above
    OUT/embeddings/rejected/...                          the same for the rejected shards

File set ``i`` belongs to shard ``part-i-of-N`` of the same status, in the shard's row order. It holds every row of
that shard that reached the models and was scored: every kept row, so a kept shard and its files align row for row;
a rejected shard's rows that were never scored (download, decode and rule rejects, score errors) have no
embedding, and the metadata names the rows that do. A shard without a scored row has no file set (an empty .npy
has no dimension to share with the others). autofaiss, clip-retrieval's ``clip_back`` and NeMo Curator's
readers take the folders as they are (``img_emb/``, ``text_emb/``, ``metadata/``, files matched by number).

The manifest lists each file set (``embeddings``: status -> [{index, rows, files: {kind: {path, bytes, sha256}}}]);
``validate`` checks them.
"""

from __future__ import annotations

import io
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unicurate.manifests import manifest as mf

EMBEDDINGS_DIR = "embeddings"
VECTORS = {"img_emb": "clip_image_embedding", "text_emb": "clip_text_embedding"}  # file kind -> unit column
KINDS = (*VECTORS, "metadata")
METADATA_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("url", pa.string()),
                             pa.field("caption", pa.string()), pa.field("clip_score", pa.float32())])


def rel_path(status: str, kind: str, index: int) -> str:
    ext = "parquet" if kind == "metadata" else "npy"
    return f"{EMBEDDINGS_DIR}/{status}/{kind}/{kind}_{index:05d}.{ext}"


def npy_bytes(vectors: list[bytes], dim: int) -> bytes:
    """Packed float16 vectors as one .npy file."""
    buf = io.BytesIO()
    arr = np.frombuffer(b"".join(vectors), dtype=np.float16).reshape(len(vectors), dim)
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class EmbeddingWriter:
    """The embedding files of one shard of one status: rows added in the shard's order; :meth:`close` writes the
    three files (atomically, through FileSystems) and returns the manifest entry. Memory: the shard's vectors."""

    def __init__(self, out_dir: str, status: str, index: int):
        self.out_dir, self.status, self.index = out_dir, status, index
        self.meta: list[dict] = []
        self.vectors: dict[str, list[bytes]] = {kind: [] for kind in VECTORS}

    def add(self, row: dict) -> None:
        """Add the row when it was scored (both embeddings present)."""
        blobs = {kind: row.get(column) for kind, column in VECTORS.items()}
        if not all(blobs.values()):
            return
        for kind, blob in blobs.items():
            self.vectors[kind].append(blob)
        self.meta.append({c: row.get(c) for c in METADATA_SCHEMA.names})

    def close(self) -> Optional[dict]:
        """Write the files; returns the manifest entry (None, and nothing written, when no row was added)."""
        if not self.meta:
            return None
        files = {}
        for kind, vectors in self.vectors.items():
            dim = len(vectors[0]) // 2
            files[kind] = mf.write_bytes_atomic(self.out_dir, rel_path(self.status, kind, self.index),
                                                npy_bytes(vectors, dim))
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(self.meta, schema=METADATA_SCHEMA), buf, compression="zstd")
        files["metadata"] = mf.write_bytes_atomic(self.out_dir, rel_path(self.status, "metadata", self.index),
                                                  buf.getvalue())
        return {"index": self.index, "rows": len(self.meta), "files": files}


def entries(manifest: dict) -> Iterator[tuple[str, dict]]:
    """(status, file set entry) for every file set the manifest lists."""
    for status, sets in sorted((manifest.get("embeddings") or {}).items()):
        for entry in sets:
            yield status, entry


def read(out_dir: str, entry: dict, kinds=tuple(VECTORS)) -> tuple[list[str], dict[str, np.ndarray]]:
    """The keys of a file set and its vectors by kind (``img_emb``, ``text_emb``: float16 arrays)."""
    return parse({kind: mf.read_bytes(out_dir, entry["files"][kind]["path"]) for kind in (*kinds, "metadata")})


def parse(blobs: dict[str, bytes]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The keys and vectors of a file set's files as read (``metadata`` and vector kinds -> their bytes)."""
    vectors = {kind: np.load(io.BytesIO(b), allow_pickle=False) for kind, b in blobs.items() if kind in VECTORS}
    keys = pq.read_table(io.BytesIO(blobs["metadata"]), columns=["key"]).column("key").to_pylist()
    return keys, vectors


def present(out_dir: str) -> list[str]:
    """The relative paths of the files under OUT/embeddings/ (temporary files of interrupted writes included)."""
    from apache_beam.io.filesystems import FileSystems

    prefix = mf.join(out_dir, EMBEDDINGS_DIR)
    try:
        found = FileSystems.match([mf.join(prefix, "*", "*", "*")])[0].metadata_list
    except Exception:  # noqa: BLE001 - no embeddings folder
        return []
    return sorted(EMBEDDINGS_DIR + "/" + m.path[len(prefix):].lstrip("/") for m in found)


def remove_stale(out_dir: str, keep: set[str]) -> list[str]:
    """Delete files under OUT/embeddings/ that ``keep`` (relative paths) does not list: an earlier run's with
    another shard count or without embeddings, and interrupted writes. Returns what was removed."""
    from apache_beam.io.filesystems import FileSystems

    stale = [rel for rel in present(out_dir) if rel not in keep]
    if stale:
        FileSystems.delete([mf.join(out_dir, *rel.split("/")) for rel in stale])
    return stale


def describe(manifest: dict) -> Optional[str]:
    """One line on the run's embedding files, or None when it wrote none."""
    sets = list(entries(manifest))
    if not sets:
        return None
    rows = {s: sum(e["rows"] for st, e in sets if st == s) for s in sorted({st for st, _ in sets})}
    return "embeddings: " + ", ".join(f"{n} {s}" for s, n in rows.items()) + f" rows in {EMBEDDINGS_DIR}/"
