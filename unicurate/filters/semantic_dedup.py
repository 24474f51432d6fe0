"""Semantic deduplication (SemDeDup, Abbas et al. 2023) on the CLIP image embeddings. No Beam here.

    candidates (rows that passed every other filter and dedup) ─ a deterministic sample ─ k-means (faiss)
        ─ each candidate to its nearest centroid ─ per cluster: members ranked by clip_score (then input order),
          each one a duplicate of the best-ranked *kept* member within ``threshold`` cosine, else kept

Pure functions over small records; the Beam graph (``unicurate.pipelines.semantic``) samples, trains, assigns and
groups, and calls these. Only embeddings cross it, never image bytes. Two rows in different clusters are never
compared (SemDeDup's approximation: near copies are nearly always closest to the same centroid).

Embeddings travel as float16 bytes of an L2-normalised vector (:func:`pack`), as unit files and the embedding
files hold them.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
from pydantic import Field

from unicurate.sections import Section

BLOCK = 1024  # members compared at once within a cluster: memory is BLOCK x (kept so far) floats


class SemanticDedupConfig(Section):
    """SemDeDup on the CLIP image embeddings: k-means, then pairwise cosine within each cluster; the best
    clip_score of each group of near copies is kept. Needs ``filters.clip_score`` (its embeddings and scores)."""

    threshold: float = Field(0.95, gt=0.0, le=1.0,
                             description="cosine of two image embeddings at or above which they are copies "
                                         "(SemDeDup's 1 - eps)")
    cluster_rows: int = Field(1000, ge=2, description="average rows per k-means cluster: the run's candidates "
                                                      "divided by this is the cluster count")
    max_clusters: int = Field(50_000, ge=1, description="most k-means clusters (SemDeDup used 50,000 on LAION-440M)")
    train_rows: int = Field(100_000, ge=100, description="most candidates the k-means is trained on (a sample "
                                                          "chosen by key hash, so the same on every run)")
    iterations: int = Field(20, ge=1, le=300, description="k-means iterations")
    seed: int = Field(0, description="seeds the k-means initialisation")


class Member(NamedTuple):
    """A candidate: its input position, key, clip_score (the rank) and packed image embedding."""

    pos: int
    key: str
    clip_score: float
    embedding: bytes


def pack(vector) -> bytes:
    """An embedding as stored: L2-normalised, float16 bytes."""
    v = np.asarray(vector, dtype=np.float32).ravel()
    n = float(np.linalg.norm(v))
    return (v / n if n > 0 else v).astype(np.float16).tobytes()


def unpack(blobs: Sequence[bytes]) -> np.ndarray:
    """Packed embeddings as a float32 matrix, rows renormalised (float16 rounding moved them off the sphere)."""
    m = np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(len(blobs), -1).astype(np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms > 0, norms, 1.0)


def cluster_count(n_candidates: int, cfg: SemanticDedupConfig) -> int:
    return max(1, min(cfg.max_clusters, math.ceil(n_candidates / cfg.cluster_rows), n_candidates))


def in_sample(key: str, n_candidates: int, cfg: SemanticDedupConfig) -> bool:
    """Whether a candidate trains the k-means: a key-hash draw at rate ``train_rows / n_candidates``, so the same
    keys train it on every run and every runner."""
    if n_candidates <= cfg.train_rows:
        return True
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return h < (cfg.train_rows / n_candidates) * 2 ** 64


def train_centroids(sample: Iterable[tuple[str, bytes]], n_candidates: int,
                    cfg: SemanticDedupConfig) -> Optional[np.ndarray]:
    """Spherical k-means (faiss) on the sampled (key, packed embedding) pairs; the unit-norm centroids as a float32
    matrix, or None when there is nothing to cluster. The sample is sorted by key first: the result does not depend
    on the order the runner delivered it in."""
    import faiss

    pairs = sorted(sample)
    if not pairs or n_candidates < 2:
        return None
    x = unpack([b for _, b in pairs])
    k = min(cluster_count(n_candidates, cfg), len(pairs))
    if k == 1:
        c = x.mean(axis=0, keepdims=True)
        return c / max(float(np.linalg.norm(c)), 1e-12)
    km = faiss.Kmeans(x.shape[1], k, niter=cfg.iterations, seed=cfg.seed, spherical=True, verbose=False,
                      max_points_per_centroid=max(256, math.ceil(len(pairs) / k)))
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(members: Sequence[Member], centroids: Optional[np.ndarray]) -> list[int]:
    """The nearest centroid (highest inner product) of each member (cluster 0 for all when there are none)."""
    if centroids is None or len(centroids) == 1 or not members:
        return [0] * len(members)
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    _, nearest = index.search(unpack([m.embedding for m in members]), 1)
    return [int(c) for c in nearest[:, 0]]


def rank(member: Member) -> tuple:
    """Best first: the higher clip_score, then the earlier input position."""
    score = member.clip_score if member.clip_score is not None and not math.isnan(member.clip_score) else -math.inf
    return (-score, member.pos)


def cluster_losers(members: Iterable[Member], threshold: float) -> Iterator[tuple[int, str]]:
    """(loser position, key of the kept member it copies) within one cluster. Members are taken best first; one
    within ``threshold`` cosine of an already kept member is a copy of the nearest such member, else it is kept.
    Every ``duplicate_of`` therefore names a kept row, and a group of copies keeps exactly its best member."""
    ordered = sorted(members, key=rank)
    if len(ordered) < 2:
        return
    dim = len(ordered[0].embedding) // 2
    kept = np.empty((0, dim), dtype=np.float32)
    kept_keys: list[str] = []
    for start in range(0, len(ordered), BLOCK):
        block = ordered[start:start + BLOCK]
        x = unpack([m.embedding for m in block])
        to_kept = x @ kept.T  # the block against everything kept before it
        within = x @ x.T  # and against itself, for the members of the block kept on the way
        new_rows: list[int] = []  # members of this block kept so far
        for i, m in enumerate(block):
            best_key, best_sim = None, -math.inf
            if kept_keys:
                j = int(np.argmax(to_kept[i]))
                best_key, best_sim = kept_keys[j], float(to_kept[i, j])
            if new_rows:
                sims = within[i, new_rows]
                j = int(np.argmax(sims))
                if sims[j] > best_sim:
                    best_key, best_sim = block[new_rows[j]].key, float(sims[j])
            if best_sim >= threshold:
                yield m.pos, best_key
            else:
                new_rows.append(i)
        if new_rows:
            kept = np.concatenate([kept, x[new_rows]])
            kept_keys += [block[r].key for r in new_rows]
