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

BLOCK = 1024  # members compared at once within a cluster
KEPT_CHUNK = 65536  # kept members compared with a block at once: memory is BLOCK x KEPT_CHUNK floats at most


class SemanticDedupConfig(Section):
    """SemDeDup on the CLIP image embeddings: k-means, then pairwise cosine within each cluster; the best
    clip_score of each group of near copies is kept. Needs filters.clip_score (its embeddings and scores)."""

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
    """Packed embeddings as a float32 matrix, rows renormalised (float16 rounding moved them off the sphere); filled
    in place, row by row, so memory is the matrix itself."""
    if not blobs:
        return np.empty((0, 0), dtype=np.float32)
    m = np.empty((len(blobs), len(blobs[0]) // 2), dtype=np.float32)
    for i, b in enumerate(blobs):
        m[i] = np.frombuffer(b, dtype=np.float16)
    norms = np.sqrt(np.einsum("ij,ij->i", m, m))
    norms[norms == 0] = 1.0
    m /= norms[:, None]
    return m


MIN_POINTS_PER_CENTROID = 39  # below this faiss warns that the clustering is unreliable


def cluster_count(n_candidates: int, cfg: SemanticDedupConfig) -> int:
    """``candidates / cluster_rows`` clusters, at most ``max_clusters``, and few enough that each has the points
    faiss needs to place it."""
    return max(1, min(cfg.max_clusters, math.ceil(n_candidates / cfg.cluster_rows),
                      n_candidates // MIN_POINTS_PER_CENTROID))


def in_sample(key: str, n_candidates: int, cfg: SemanticDedupConfig) -> bool:
    """Whether a candidate trains the k-means: a key-hash draw at rate ``train_rows / n_candidates``, so the same
    keys train it on every run and every runner. (Training on all of them, not faiss's default 256 per centroid:
    better centroids split fewer groups of copies between clusters.)"""
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
    k = max(1, min(cluster_count(n_candidates, cfg), len(pairs) // MIN_POINTS_PER_CENTROID))
    if k == 1:
        c = x.mean(axis=0, keepdims=True)
        return c / max(float(np.linalg.norm(c)), 1e-12)
    km = faiss.Kmeans(x.shape[1], k, niter=cfg.iterations, seed=cfg.seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=math.ceil(len(pairs) / k))
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


_INDEX: dict = {}  # the centroids' faiss index, built once per worker process (keyed by the centroids' identity)


def _centroid_index(centroids: np.ndarray):
    import faiss

    key = (id(centroids), centroids.shape)
    if key not in _INDEX:
        _INDEX.clear()
        index = faiss.IndexFlatIP(centroids.shape[1])
        index.add(centroids)
        _INDEX[key] = (index, centroids)  # the array too: its id stays unique while it is held here
    return _INDEX[key][0]


def assign(members: Sequence[Member], centroids: Optional[np.ndarray], chunk: int = 65536) -> list[int]:
    """The nearest centroid (highest inner product) of each member (cluster 0 for all when there are none), in
    chunks of ``chunk`` members. faiss computes each row's distances with its SIMD loop, never BLAS, so a member's
    cluster does not depend on how many rows are searched with it (BLAS, used from 20 rows up, rounds
    differently, and runners cut batches as they go)."""
    if centroids is None or len(centroids) == 1 or not members:
        return [0] * len(members)
    import faiss

    faiss.cvar.distance_compute_blas_threshold = 1 << 30
    index = _centroid_index(centroids)
    out: list[int] = []
    for start in range(0, len(members), chunk):
        _, nearest = index.search(unpack([m.embedding for m in members[start:start + chunk]]), 1)
        out += [int(c) for c in nearest[:, 0]]
    return out


def decide(members: Sequence[Member], cfg: SemanticDedupConfig) -> list[tuple[int, str]]:
    """Every step in one process: sample, k-means, nearest centroid, losers per cluster (what-if; the pipeline runs
    the same steps as Beam transforms, ``unicurate.pipelines.semantic``)."""
    n = len(members)
    centroids = train_centroids([(m.key, m.embedding) for m in members if in_sample(m.key, n, cfg)], n, cfg)
    clusters: dict[int, list[Member]] = {}
    for m, c in zip(members, assign(members, centroids)):
        clusters.setdefault(c, []).append(m)
    return [loser for c in sorted(clusters) for loser in cluster_losers(clusters[c], cfg.threshold)]


def set_threads(threads: Optional[int]) -> None:
    """faiss's OpenMP threads in this process (the worker's share of the cores, as every model stage gets)."""
    if threads:
        import faiss

        faiss.omp_set_num_threads(threads)


def rank(member: Member) -> tuple:
    """Best first: the higher clip_score, then the earlier input position."""
    score = member.clip_score if member.clip_score is not None and not math.isnan(member.clip_score) else -math.inf
    return (-score, member.pos)


def _nearest_kept(x: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x``: the index of its most similar row of ``kept`` and that cosine, ``kept`` taken
    :data:`KEPT_CHUNK` rows at a time (memory stays bounded however large a cluster is)."""
    best = np.zeros(len(x), dtype=np.int64)
    best_sim = np.full(len(x), -np.inf, dtype=np.float32)
    for start in range(0, len(kept), KEPT_CHUNK):
        sims = x @ kept[start:start + KEPT_CHUNK].T
        j = np.argmax(sims, axis=1)
        s = sims[np.arange(len(x)), j]
        better = s > best_sim
        best[better], best_sim[better] = j[better] + start, s[better]
    return best, best_sim


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
        near, near_sim = _nearest_kept(x, kept)  # the block against everything kept before it
        within = x @ x.T  # and against itself, for the members of the block kept on the way
        new_rows: list[int] = []  # members of this block kept so far
        for i, m in enumerate(block):
            best_key, best_sim = None, -math.inf
            if kept_keys:
                best_key, best_sim = kept_keys[near[i]], float(near_sim[i])
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
