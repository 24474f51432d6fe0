"""The Beam curate pipeline, in work units (``unicurate.units``).

    units ─ CurateUnits: per unit, resumed from its file (valid completion record) or fetched, decoded,
            rule-filtered and scored into it ─ one brief per row (position, key, sha256, pHash, ok, CLIP score)
        ─ GroupByKey(url key) ─ repeated urls ─┬─ decisions
                                               └─ first rows ─ CLIP cutoff (keep_top_fraction, ApproximateQuantiles)
                                                             ─ exact groups (sha256) ─ decisions
                                                             ─ near groups (pHash bands) ─ decisions
              └─ (filters.semantic_dedup) the passing rows' image embeddings, less the rows rejected above
                 ─ SemanticDedup (pipelines/semantic: k-means, clusters, pairwise cosine) ─ decisions
        decisions by final shard ─ CoGroupByKey (common) ─ WriteShards: the shard's rows streamed out of the unit
        files, row group by row group, decisions applied ─ kept/ + rejected/ (+ embeddings/ with
        output.embeddings) ─ manifest.json (pending, last)

Image bytes never cross a shuffle: they stay in the unit files until the final shards are written (semantic dedup
shuffles the image embeddings, float16). A final shard holds the rows of consecutive input positions
(``output.rows_per_shard`` of them), read from the units that hold them, so its contents are the same whatever ran
where.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from unicurate.config import CurateRecipe
from unicurate.download import ingest
from unicurate.filters import dedup as dd
from unicurate.manifests import embeddings as emb
from unicurate.manifests import manifest as mf
from unicurate.manifests.funnel import format_funnel
from unicurate.models import zoo
from unicurate.pipelines import common, perworker
from unicurate.pipelines.common import Plan, with_model_hints
from unicurate.pipelines.semantic import SemanticDedup
from unicurate.schema import CURATED_SCHEMA, CURATED_SCHEMA_VERSION, KEPT, REJECTED, shard_name
from unicurate.units import curate as uc
from unicurate.units import folder, store
from unicurate.units.plan import Unit, UnitPlan

log = logging.getLogger("unicurate")
_NS = perworker.NAMESPACE
UNITS_TAG = "units"
MEMBERS_TAG = "members"
REPEATS_TAG = "repeats"
QUANTILES = 1000  # cutoff resolution for keep_top_fraction: 0.1% of the run


def _describe_fetch(c: dict, rate: float) -> str:
    done, ok = c.get("done", 0), c.get("ok", 0)
    return f"{done} fetched, {ok} decoded, {done - ok} failed, {rate:.1f}/s"


def _decider(recipe: CurateRecipe):
    from unicurate.filters.scoring import ModelDecider

    return ModelDecider(recipe.filters) if recipe.filters.model_filters() else None


class CurateUnitsDoFn(perworker.ModelDoFn):
    """Each unit: resumed when its completion record is valid for this data recipe and its file intact, else
    curated into its file (:class:`unicurate.units.curate.UnitCurator`). Yields the briefs of its rows, its
    record on ``UNITS_TAG`` and, with semantic dedup, its candidates on ``MEMBERS_TAG``. One Fetcher and one set
    of models per worker process (``shared.Shared``); the models load on a background thread while the first
    downloads run."""

    def __init__(self, recipe: CurateRecipe, recipe_hash: str, cpu_threads: Optional[int] = None):
        super().__init__(tag="scorer", stage="units", cpu_threads=cpu_threads)
        self.recipe, self.recipe_hash = recipe, recipe_hash
        self._fetcher_handle = shared.Shared()
        self.processed = Metrics.counter(_NS, "units_processed")
        self.resumed = Metrics.counter(_NS, "units_resumed")
        self.fetched = Metrics.counter(_NS, "fetched")
        self.model_counters = {"model_batches": self.batches, "model_rows": Metrics.counter(_NS, "model_rows"),
                               "score_errors": Metrics.counter(_NS, "score_errors")}

    def build(self):
        if not self.recipe.filters.model_filters():
            return None
        from unicurate.filters.scoring import ModelScorer

        keep = tuple(uc.EMBEDDINGS.values()) if self.recipe.wants_embeddings() else ()
        return ModelScorer(self.recipe.filters, self.recipe.models, runtime=self.runtime(self.recipe.models),
                           keep=keep)

    def setup(self):
        from unicurate.download.fetch import Fetcher

        super().setup()
        r = self.recipe
        self.plan = folder.read_plan(r.output.path)
        self.decider = _decider(r)

        def build_fetcher():
            return Fetcher(r.download, r.resize, prefilter=uc.make_prefilter(r.filters),
                           keep_rejected_images=r.output.keep_rejected_images, compute_phash=True)

        self._fetcher_holder, _ = perworker.acquire(self._fetcher_handle, build_fetcher, tag="fetcher")
        scorer = self.loaded if r.filters.model_filters() else None
        self.curator = uc.UnitCurator(r, self._fetcher_holder.value, scorer, self.decider)
        self.progress = perworker.progress("fetch", _describe_fetch)

    def process(self, unit: Unit) -> Iterator:
        self.span.mark()
        out_dir = self.recipe.output.path
        record = store.read_record(out_dir, unit.index)
        if store.record_fits(record, unit, self.recipe_hash) and store.file_intact(out_dir, record):
            briefs, members = uc.brief_from_file(out_dir, unit, self.decider, self.curator.semantic)
            self.resumed.inc()
        else:
            if record is not None:
                log.warning("unit %d: its completion record does not match its file or this run; redoing it",
                            unit.index)

            def fetched(ok: bool) -> None:
                self.progress.add(done=1, ok=int(ok))
                self.fetched.inc()

            before = dict(self.curator.counts)
            record, briefs, members = self.curator.run(self.plan, unit, self.recipe_hash, fetched)
            self.processed.inc()
            for name, counter in self.model_counters.items():
                counter.inc(self.curator.counts.get(name, 0) - before.get(name, 0))
        yield beam.pvalue.TaggedOutput(UNITS_TAG, record)
        for m in members:
            yield beam.pvalue.TaggedOutput(MEMBERS_TAG, (m.pos, (m.key, m.clip_score, m.embedding)))
        yield from map(tuple, briefs)  # plain tuples: Beam codes them compactly (a NamedTuple pickles its class)
        self.span.mark()

    def teardown(self):
        perworker.emit_progress("fetch")


# ------------------------------------------------------------------ run-wide decisions on briefs
# briefs travel as plain tuples (``tuple(uc.Brief)``); each step reads them as ``uc.Brief``
_brief = uc.Brief._make


def by_url(t: tuple) -> tuple[str, tuple]:
    """(url key, the brief without its key): what the grouping by url shuffles."""
    b = _brief(t)
    return b.key, (b.pos, b.sha256, b.phash, b.ok, b.clip_score)


def split_repeats(item) -> Iterator:
    """Briefs sharing a url key (same source and url): the first in input order goes on; each later one becomes a
    repeat decision (position, (occurrence number, key of the first))."""
    key, rest = item
    rest = sorted(rest)  # by position
    pos, sha256, phash, ok, clip_score = rest[0]
    yield tuple(uc.Brief(pos, key, sha256, phash, ok, clip_score))
    for n, later in enumerate(rest[1:], 1):
        yield beam.pvalue.TaggedOutput(REPEATS_TAG, (later[0], (n, key)))


def clip_scores(t: tuple) -> list[float]:
    b = _brief(t)
    return [b.clip_score] if b.clip_score is not None else []


def passes_cutoff(clip_score: Optional[float], cutoff: Optional[float], decider) -> bool:
    """A CLIP score is within the run's top fraction (no cutoff, or no score: nothing to cut)."""
    if cutoff is None or clip_score is None:
        return True
    return not decider.reasons([{"clip_score": clip_score}], clip_min_score=cutoff)[0]


def with_cutoff(t: tuple, cutoff: Optional[float], decider) -> tuple:
    """The brief with the CLIP top-fraction cutoff applied to ``ok``."""
    b = _brief(t)
    return tuple(b._replace(ok=passes_cutoff(b.clip_score, cutoff, decider))) if b.ok else t


def within_cutoff(member: tuple, cutoff: Optional[float], decider) -> bool:
    """A semantic dedup candidate (pos, key, clip_score, embedding) passes the CLIP top-fraction cutoff."""
    return passes_cutoff(member[2], cutoff, decider)


def sha_group(t: tuple) -> list[tuple[str, tuple]]:
    """(sha256, (position, key, ok)): what the grouping by sha256 shuffles."""
    b = _brief(t)
    return [(b.sha256, (b.pos, b.key, b.ok))] if b.sha256 else []


def phash_bands(t: tuple, max_distance: int) -> list[tuple[tuple, tuple]]:
    """(band, (position, key, pHash)) of a row that passed: what the grouping by pHash band shuffles."""
    b = _brief(t)
    return [(band, (b.pos, b.key, b.phash)) for band in dd.phash_bands(b.phash, max_distance)] \
        if b.phash and b.ok else []


def exact_decisions(item) -> Iterator[tuple[int, str]]:
    """(loser position, key of the kept copy) for briefs sharing a sha256."""
    recs = [dd.Rec(pos, key, ok, item[0]) for pos, key, ok in item[1]]
    pos_of = {r.key: r.order for r in recs}
    for loser, winner in dd.exact_losers(recs):
        yield pos_of[loser], winner


def near_decisions(item, max_distance: int) -> Iterator[tuple[int, tuple]]:
    """(loser position, (winner position, winner key)) for briefs sharing a pHash band."""
    recs = [dd.Rec(pos, key, True, phash) for pos, key, phash in item[1]]
    pos_of = {r.key: r.order for r in recs}
    for loser, winner in dd.near_losers(recs, max_distance):
        yield pos_of[loser], winner


def cutoff_from_quantiles(quantiles: list, keep_top_fraction: float) -> Optional[float]:
    """The clip_score a row needs to be in the run's top ``keep_top_fraction`` (None: nothing scored)."""
    if not quantiles:
        return None
    n = len(quantiles) - 1
    if n <= 0:
        return float(quantiles[0])
    pos = round((1.0 - keep_top_fraction) * n)
    return float(quantiles[min(max(pos, 0), n)])


class WriteShardsDoFn(beam.DoFn):
    """One final shard: the rows of its positions streamed out of the unit files (a row group at a time), the
    run-wide decisions applied, written to kept/ and rejected/ (each row group by row group), and with
    ``output.embeddings`` the embedding files of both (``unicurate.manifests.embeddings``)."""

    def __init__(self, recipe: CurateRecipe, n_rows: int, n_shards: int):
        self.recipe, self.n_rows, self.n_shards = recipe, n_rows, n_shards
        self.span = perworker.StageSpan("write")

    def setup(self):
        perworker.fast_exit_when_done()
        self.plan = folder.read_plan(self.recipe.output.path)
        self.decider = _decider(self.recipe)

    def process(self, item, clip_cutoff: Optional[float]) -> Iterator[dict]:
        self.span.mark()
        index, grouped = item
        near: dict[int, tuple] = {}
        for loser, (order, winner) in grouped["near"]:
            if loser not in near or order < near[loser][0]:
                near[loser] = (order, winner)
        decisions = uc.Decisions(dict(grouped["repeats"]), dict(grouped["exact"]), near, clip_cutoff,
                                 dict(grouped["semantic"]))
        out = self.recipe.output
        start, stop = shard_range(index, out.rows_per_shard, self.n_rows)
        name = shard_name(index, self.n_shards)
        reasons = []
        vectors = {s: emb.EmbeddingWriter(out.path, s, index) for s in (KEPT, REJECTED)} if out.embeddings else None
        with mf.ShardWriter(out.path, f"{KEPT}/{name}", CURATED_SCHEMA, out.row_group_rows) as kept, \
                mf.ShardWriter(out.path, f"{REJECTED}/{name}", CURATED_SCHEMA, out.row_group_rows) as rejected:
            for row in store.rows_between(out.path, self.plan, start, stop):
                row = uc.final_row(row, decisions, self.decider, out.keep_rejected_images)
                (kept if row["status"] == KEPT else rejected).write(row)
                if vectors is not None:
                    vectors[row["status"]].add(row)
                reasons.append(row["reject_reasons"])
            if len(reasons) != stop - start:
                raise RuntimeError(f"shard {index}: read {len(reasons)} rows from the unit files, expected "
                                   f"{stop - start} (positions {start}..{stop - 1})")
            shards = {KEPT: kept.close().to_json(), REJECTED: rejected.close().to_json()}
        result = {"shards": shards, "funnel": mf.funnel_counts(reasons)}
        if vectors is not None:
            result["embeddings"] = {s: entry for s, w in vectors.items() if (entry := w.close()) is not None}
        yield result
        self.span.mark()


def shard_range(index: int, rows_per_shard: int, n_rows: int) -> tuple[int, int]:
    """The input positions final shard ``index`` holds."""
    return min(index * rows_per_shard, n_rows), min((index + 1) * rows_per_shard, n_rows)


class WriteManifestDoFn(common.WriteManifestDoFn):
    KIND, SCHEMA_VERSION, DIRS = "curated", CURATED_SCHEMA_VERSION, (KEPT, REJECTED)

    def merge_funnel(self, parts) -> dict:
        return mf.merge_funnels(parts)

    def unloaded_models(self) -> list[dict]:
        return zoo.unloaded_records(zoo.specs_for_recipe(self.recipe), "not loaded: no row reached the model stage")

    def fields(self, clip_cutoff: Optional[float]) -> dict:
        return {"model_filters": self.recipe.filters.model_filters(), "clip_score_cutoff": clip_cutoff}

    def from_shards(self, shard_results: list[dict]) -> dict:
        """The embedding file sets, by status in shard order (an earlier run's files that are not among them are
        removed)."""
        sets = {s: sorted((r["embeddings"][s] for r in shard_results if s in r.get("embeddings", {})),
                          key=lambda e: e["index"]) for s in self.DIRS}
        listed = {f["path"] for entries in sets.values() for e in entries for f in e["files"].values()}
        emb.remove_stale(self.recipe.output.path, listed)
        return {"embeddings": sets} if self.recipe.output.embeddings else {}


def build(p: beam.Pipeline, recipe: CurateRecipe, plan: Plan, beam_options: dict):
    """Add the curate pipeline to ``p`` (``plan.units``: the :class:`UnitPlan`, None in a dry run); returns the
    PCollection holding the pending manifest's path."""
    cfg = recipe
    uplan: Optional[UnitPlan] = plan.units
    n_rows = uplan.n_rows if uplan is not None else 0
    n_shards = common.shard_count(n_rows, cfg.output.rows_per_shard)
    decider = _decider(cfg)
    units = (
        p
        | "Units" >> beam.Create(uplan.units() if uplan is not None else [], reshuffle=True)
        | "CurateUnits" >> with_model_hints(beam.ParDo(CurateUnitsDoFn(
            cfg, cfg.recipe_hash(), perworker.cpu_threads_per_process(beam_options))), cfg).with_outputs(
            UNITS_TAG, MEMBERS_TAG, main="briefs")
    )
    firsts = (
        units.briefs
        | "KeyByUrl" >> beam.Map(by_url)
        | "GroupRepeatedUrls" >> beam.GroupByKey()
        | "SplitRepeats" >> beam.FlatMap(split_repeats).with_outputs(REPEATS_TAG, main="firsts")
    )
    c = cfg.filters.clip_score
    if c is not None and c.keep_top_fraction is not None:
        clip_cutoff = (
            firsts.firsts
            | "ClipScores" >> beam.FlatMap(clip_scores)
            | "ClipQuantiles" >> beam.ApproximateQuantiles.Globally(QUANTILES + 1)
            | "ClipCutoff" >> beam.Map(cutoff_from_quantiles, c.keep_top_fraction)
        )
        live = firsts.firsts | "ApplyClipCutoff" >> beam.Map(with_cutoff, beam.pvalue.AsSingleton(clip_cutoff),
                                                             decider)
    else:
        clip_cutoff = p | "NoClipCutoff" >> beam.Create([None])
        live = firsts.firsts

    def by_shard(name: str, pcoll):
        rps = cfg.output.rows_per_shard
        return pcoll | f"{name}ByShard" >> beam.Map(lambda d: (d[0] // rps, d))

    keyed = {"repeats": by_shard("Repeats", firsts[REPEATS_TAG])}
    dcfg = cfg.filters.dedup
    empty = p | "NoDecisions" >> beam.Create([])
    if dcfg.exact:
        keyed["exact"] = by_shard("Exact", (
            live
            | "ShaGroups" >> beam.FlatMap(sha_group)
            | "GroupBySha" >> beam.GroupByKey()
            | "ExactLosers" >> beam.FlatMap(exact_decisions)))
    else:
        keyed["exact"] = empty | "NoExact" >> beam.Map(lambda x: x)
    if dcfg.near:
        md = dcfg.max_distance
        keyed["near"] = by_shard("Near", (
            live
            | "PhashBands" >> beam.FlatMap(phash_bands, md)
            | "GroupByBand" >> beam.GroupByKey()
            | "NearLosers" >> beam.FlatMap(near_decisions, md)))
    else:
        keyed["near"] = empty | "NoNear" >> beam.Map(lambda x: x)
    if cfg.filters.semantic_dedup is not None:
        rejected = ([keyed[k] for k in ("repeats", "exact", "near")]
                    | "RejectedRunWide" >> beam.Flatten() | "RejectedPositions" >> beam.Map(lambda kv: kv[1][0]))
        keep = None
        if c is not None and c.keep_top_fraction is not None:
            keep = functools.partial(within_cutoff, decider=decider)
        keyed["semantic"] = by_shard("Semantic", (units[MEMBERS_TAG], rejected) | "SemanticDedup" >> SemanticDedup(
            cfg.filters.semantic_dedup, keep, clip_cutoff, perworker.cpu_threads_per_process(beam_options)))
    else:
        keyed["semantic"] = empty | "NoSemantic" >> beam.Map(lambda x: x)

    n_shards_pc = p | "ShardCount" >> beam.Create([n_shards])
    results = (
        common.group_by_shard(keyed, n_shards_pc)
        | "WriteShards" >> beam.ParDo(WriteShardsDoFn(cfg, n_rows, n_shards), beam.pvalue.AsSingleton(clip_cutoff))
    )
    model_records = (
        units[UNITS_TAG]
        | "UnitModels" >> beam.FlatMap(lambda rec: [json.dumps(rec["models"], sort_keys=True)] if rec["models"] else [])
    )
    model_records = common.collect_model_records(model_records)
    # counted after the run-wide grouping by url: a brief lost before it shows as a missing input row
    n_inputs = ((firsts.firsts, firsts[REPEATS_TAG]) | "RowsAfterGrouping" >> beam.Flatten()
                | "CountInputs" >> beam.combiners.Count.Globally())
    return common.write_manifest(results, WriteManifestDoFn(cfg, beam_options), n_inputs, model_records,
                                 clip_cutoff)


def count_inputs(splits: list[ingest.Split]) -> list[int]:
    """The rows of each input split, counted by the driver before the pipeline runs: what the finished run must
    account for. Parquet row groups from their footers; text files by one streaming pass each, files side by
    side (on gs:// the pass is mostly waiting on reads)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(splits)))) as pool:
        return list(pool.map(ingest.count_rows, splits))


def prepare(recipe: CurateRecipe, count: bool = True) -> Plan:
    """Everything that must succeed before any work: inputs found, readable, with the right columns; the plan
    holds the cut into work units, made from the rows the input splits hold (``count``; a dry run counts
    nothing and has no units)."""
    files = ingest.expand_inputs(recipe.input)
    ingest.preflight(files, recipe.input)
    splits = ingest.plan_splits(files)
    uplan = UnitPlan(tuple(splits), tuple(count_inputs(splits)), recipe.input.rows_per_unit) if count else None
    n_files = len({s.file.path for s in splits})
    what = (f", {uplan.n_rows} rows in {uplan.n_units} unit(s) of up to {uplan.rows_per_unit}" if uplan is not None
            else f", cut into work units of up to {recipe.input.rows_per_unit} rows when the run starts")
    return Plan(splits, uplan.n_rows if uplan is not None else None,
                f"curate: {n_files} input file(s), {len(splits)} split(s){what} -> {recipe.output.path}",
                units=uplan)


PIPELINE = common.Pipeline("curate", prepare, build, format_funnel)
