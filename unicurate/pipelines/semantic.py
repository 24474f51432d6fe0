"""Semantic dedup as Beam transforms (SemDeDup; the decisions themselves are ``unicurate.filters.semantic_dedup``).

    members (pos, (key, clip_score, embedding)) ─┬─ CoGroupByKey(pos) with the positions already rejected run-wide
    rejected positions (pos) ────────────────────┘   (repeats, exact and near copies, the CLIP cutoff) ─ candidates
        candidates ─ Count ─────────────────────────────────┐
        candidates ─ key-hash sample ─ ToList ─ k-means (faiss) ─ centroids ─┐
        candidates ─ BatchElements ─ nearest centroid ─ GroupByKey(cluster) ─ pairwise cosine per cluster
            ─ (loser position, key of the kept copy)

Only embeddings (float16, 1 KB for 512 dimensions) and small fields travel; the sample the k-means trains on is
bounded by ``train_rows``, a cluster by the data (``cluster_rows`` on average).
"""

from __future__ import annotations

from typing import Iterator, Optional

import apache_beam as beam

from unicurate.filters import semantic_dedup as sd


def _candidates(item) -> Iterator[tuple]:
    """The member of a position nothing else rejected (the CoGroupByKey's output, flattened; one per position)."""
    _pos, grouped = item
    if not grouped["rejected"]:
        yield from list(grouped["member"])[:1]


def _sampled(member: tuple, n: int, cfg: sd.SemanticDedupConfig) -> list[tuple[str, bytes]]:
    m = sd.Member(*member)
    return [(m.key, m.embedding)] if sd.in_sample(m.key, n, cfg) else []


def _train(sample: list, n: int, cfg: sd.SemanticDedupConfig, threads: Optional[int]):
    sd.set_threads(threads)
    return sd.train_centroids(sample, n, cfg)


def _assigned(batch: list[tuple], centroids, threads: Optional[int]) -> list[tuple[int, tuple]]:
    sd.set_threads(threads)
    members = [sd.Member(*m) for m in batch]
    return list(zip(sd.assign(members, centroids), batch))


def _losers(item, threshold: float) -> Iterator[tuple[int, str]]:
    _cluster, members = item
    yield from sd.cluster_losers((sd.Member(*m) for m in members), threshold)


class SemanticDedup(beam.PTransform):
    """(members, rejected) -> (loser position, key of the kept row it copies).

    ``members``: (pos, (key, clip_score, packed embedding)) of the rows that passed everything decided within their
    unit; ``rejected``: positions rejected by a run-wide decision since (any value). ``keep``: a predicate on a
    member tuple (the CLIP top-fraction cutoff, given as a side input ``cutoff``), or None. ``threads``: faiss's
    threads per worker process (None: its default, every core)."""

    def __init__(self, cfg: sd.SemanticDedupConfig, keep=None, cutoff: Optional[beam.PCollection] = None,
                 threads: Optional[int] = None):
        super().__init__()
        self.cfg, self.keep, self.cutoff, self.threads = cfg, keep, cutoff, threads

    def expand(self, pcolls):
        members, rejected = pcolls
        cfg = self.cfg
        candidates = (
            {"member": members | "MemberTuples" >> beam.Map(lambda kv: (kv[0], (kv[0], *kv[1]))),
             "rejected": rejected | "RejectedPositions" >> beam.Map(lambda pos: (pos, None))}
            | "JoinRejected" >> beam.CoGroupByKey()
            | "Candidates" >> beam.FlatMap(_candidates)
        )
        if self.keep is not None:
            candidates = candidates | "ApplyCutoff" >> beam.Filter(self.keep, beam.pvalue.AsSingleton(self.cutoff))
        n = candidates | "CountCandidates" >> beam.combiners.Count.Globally()
        centroids = (
            candidates
            | "Sample" >> beam.FlatMap(_sampled, beam.pvalue.AsSingleton(n), cfg)
            | "CollectSample" >> beam.combiners.ToList()
            | "KMeans" >> beam.Map(_train, beam.pvalue.AsSingleton(n), cfg, self.threads)
        )
        return (
            candidates
            | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=4096)
            | "NearestCentroid" >> beam.FlatMap(_assigned, beam.pvalue.AsSingleton(centroids), self.threads)
            | "GroupByCluster" >> beam.GroupByKey()
            | "ClusterLosers" >> beam.FlatMap(_losers, cfg.threshold)
        )
