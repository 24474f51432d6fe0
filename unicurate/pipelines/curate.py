"""The Beam curate pipeline.

    splits ─ read rows ─ key ─ group repeats of a url ─ reshuffle ─ batch ─ download+decode+rule filters
        ─ batch ─ model scores (CLIP, aesthetic, NSFW, watermark, OCR) ─ model decisions (pipelines/score.py)
        ─┬─ (sha256 groups) ─ exact-duplicate decisions ─┐
         ├─ (pHash bands)   ─ near-duplicate decisions ──┤  CoGroupByKey by shard ─ write kept/rejected shards
         └─ rows ─────────────────────────────────────────┘  (common)                ─ manifest.json (last)

Images travel through exactly one shuffle (the shard grouping, which is what
makes shard contents deterministic); duplicate decisions are small records
joined to their rows by shard, not broadcast as side inputs.
"""

from __future__ import annotations

import logging
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from unicurate.config import CurateRecipe
from unicurate.filters import dedup as dd
from unicurate.filters import rules
from unicurate.manifests import manifest as mf
from unicurate.models import zoo
from unicurate.download import ingest
from unicurate.pipelines import common, perworker
from unicurate.pipelines import score as sc
from unicurate.pipelines.common import Plan, by_shard, shard_count
from unicurate.manifests.funnel import format_funnel
from unicurate.schema import CURATED_COLUMNS, CURATED_SCHEMA, CURATED_SCHEMA_VERSION, KEPT, REJECTED, Reason, shard_name

log = logging.getLogger("unicurate")
_NS = perworker.NAMESPACE


# ------------------------------------------------------------------ progress
def _describe_fetch(c: dict, rate: float) -> str:
    done, ok = c.get("done", 0), c.get("ok", 0)
    return f"{done} fetched, {ok} decoded, {done - ok} failed, {rate:.1f}/s"


def _progress() -> perworker.Progress:
    return perworker.progress("fetch", _describe_fetch)


# ------------------------------------------------------------------ stages
def assign_repeat_keys(item) -> Iterator[dict]:
    """Rows sharing (source, url): the first in input order keeps the key, the rest are repeats."""
    _, rows = item
    rows = sorted(rows, key=lambda r: r["order"])
    first = rows[0]
    yield first
    for n, row in enumerate(rows[1:], 1):
        row = dict(row)
        row["key"] = ingest.row_key(row["source"], row["url"], n)
        row["reject_reasons"] = [Reason.DUPLICATE_URL.value]
        row["duplicate_of"] = first["key"]
        row["error"] = None
        yield row


class ReadSplitDoFn(beam.DoFn):
    """One input split (a file, or a parquet row group) -> its rows."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.span = perworker.StageSpan("read")

    def setup(self):
        perworker.fast_exit_when_done()

    def process(self, split: ingest.Split) -> Iterator[dict]:
        self.span.mark()
        yield from ingest.read_split(split, self.cfg)
        self.span.mark()


class FetchDoFn(beam.DoFn):
    """Downloads, decodes, resizes and rule-filters batches of rows.

    One Fetcher (thread pool + Resizer) per worker process via ``shared.Shared``.
    """

    def __init__(self, recipe: CurateRecipe):
        self.recipe = recipe
        self._shared = shared.Shared()
        self.fetched = Metrics.counter(_NS, "fetched")
        self.failed = Metrics.counter(_NS, "fetch_failed")
        self.span = perworker.StageSpan("fetch")

    def setup(self):
        from unicurate.download.fetch import Fetcher

        r = self.recipe
        filters = rules.rule_filters(r.filters)

        def prefilter(row, fetched):
            probe = {
                "caption": row.get("caption"),
                "original_width": fetched.original_width,
                "original_height": fetched.original_height,
            }
            columns, reasons = rules.apply(filters, [probe])
            problem = (columns.get("caption_problem") or [None])[0]
            if problem and fetched.error is None:
                fetched.error = problem
            return reasons[0]

        def build():
            return Fetcher(r.download, r.resize, prefilter=prefilter,
                           keep_rejected_images=r.output.keep_rejected_images, compute_phash=True)

        self._holder, _ = perworker.acquire(self._shared, build, tag="fetcher")
        self.fetcher = self._holder.value

    def process(self, batch: list[dict]) -> Iterator[dict]:
        self.span.mark()
        todo = []
        for row in batch:
            if row["reject_reasons"]:  # invalid input or repeated url: nothing to download
                yield finish_row(row, None)
            else:
                todo.append(row)
        progress = _progress()
        for row, fetched in self.fetcher.fetch(todo):
            ok = fetched.image is not None or (fetched.sha256 is not None and fetched.original_width is not None)
            progress.add(done=1, ok=int(ok))
            self.fetched.inc()
            if fetched.reasons and fetched.error:
                self.failed.inc()
            yield finish_row(row, fetched)
        self.span.mark()

    def teardown(self):
        perworker.emit_progress("fetch")


def finish_row(row: dict, fetched) -> dict:
    """Merge input row and fetch result into a curated-schema row (plus the internal ``order``)."""
    out = {c: None for c in CURATED_COLUMNS}
    out.update({k: row.get(k) for k in ("key", "url", "caption", "source", "input_file", "input_row", "metadata",
                                        "error", "duplicate_of")})
    out["order"] = tuple(row["order"])
    reasons = list(row["reject_reasons"])
    if fetched is not None:
        reasons.extend(fetched.reasons)
        out["error"] = fetched.error
        for name in ("image", "image_format", "original_format", "width", "height", "original_width",
                     "original_height", "download_bytes", "sha256", "phash"):
            out[name] = getattr(fetched, name)
    out["caption_words"] = rules.count_words(out["caption"])
    out["reject_reasons"] = reasons
    return out


def light_record(row: dict, value_field: str) -> dd.Rec:
    return dd.Rec(tuple(row["order"]), row["key"], not row["reject_reasons"], row.get(value_field))


class WriteShardsDoFn(beam.DoFn):
    """Applies duplicate decisions to one shard's rows and writes its kept and rejected files."""

    def __init__(self, recipe: CurateRecipe):
        self.recipe = recipe
        self.span = perworker.StageSpan("write")

    def setup(self):
        perworker.fast_exit_when_done()

    def process(self, item, n_shards: int) -> Iterator[dict]:
        self.span.mark()
        index, grouped = item
        exact = dict(grouped["exact"])
        near: dict[str, tuple] = {}
        for loser, (order, winner) in grouped["near"]:
            if loser not in near or tuple(order) < tuple(near[loser][0]):
                near[loser] = (tuple(order), winner)
        kept, rejected = [], []
        for row in sorted(grouped["rows"], key=lambda r: r["key"]):
            row = dict(row)
            row.pop("order", None)
            reasons = row["reject_reasons"]
            if row["key"] in exact:
                reasons.append(Reason.DUPLICATE.value)
                row["duplicate_of"] = exact[row["key"]]
            elif row["key"] in near and not reasons:
                reasons.append(Reason.NEAR_DUPLICATE.value)
                row["duplicate_of"] = near[row["key"]][1]
            row["status"] = REJECTED if reasons else KEPT
            if reasons and not self.recipe.output.keep_rejected_images:
                row["image"] = None
            (rejected if reasons else kept).append(row)
        out_dir = self.recipe.output.path
        name = shard_name(index, n_shards)
        rg = self.recipe.output.row_group_rows
        shards = {sub: mf.write_shard(out_dir, f"{sub}/{name}", rows_, CURATED_SCHEMA, rg).to_json()
                  for sub, rows_ in ((KEPT, kept), (REJECTED, rejected))}
        yield {"shards": shards, "funnel": mf.funnel_counts(r["reject_reasons"] for r in kept + rejected)}
        self.span.mark()


class WriteManifestDoFn(common.WriteManifestDoFn):
    KIND, SCHEMA_VERSION, DIRS = "curated", CURATED_SCHEMA_VERSION, (KEPT, REJECTED)

    def merge_funnel(self, parts) -> dict:
        return mf.merge_funnels(parts)

    def unloaded_models(self) -> list[dict]:
        return zoo.unloaded_records(zoo.specs_for_recipe(self.recipe), "not loaded: no row reached the model stage")

    def fields(self, clip_cutoff: Optional[float]) -> dict:
        return {"model_filters": self.recipe.filters.model_filters(), "clip_score_cutoff": clip_cutoff}


def build(p: beam.Pipeline, recipe: CurateRecipe, plan: Plan, beam_options: dict):
    """Add the curate pipeline to ``p`` (``plan.inputs``: the input splits); returns the PCollection holding the
    manifest path."""
    cfg = recipe
    in_cfg = cfg.input
    rows = (
        p
        | "Splits" >> beam.Create(plan.inputs, reshuffle=True)
        | "ReadRows" >> beam.ParDo(ReadSplitDoFn(in_cfg))
    )
    n_inputs = rows | "CountInputs" >> beam.combiners.Count.Globally()
    n_shards = n_inputs | "ShardCount" >> beam.Map(shard_count, cfg.output.rows_per_shard)

    fetched = (
        rows
        | "KeyByUrl" >> beam.Map(lambda r: (r["key"], r))
        | "GroupRepeatedUrls" >> beam.GroupByKey()
        # the group by url already spreads rows over workers (by url hash) and breaks fusion with the read:
        # no extra Reshuffle (it cost one more pass of every row through the runner)
        | "RepeatKeys" >> beam.FlatMap(assign_repeat_keys)
        | "Batch" >> beam.BatchElements(min_batch_size=min(16, cfg.download.thread_count),
                                        max_batch_size=max(16, cfg.download.thread_count * 4))
        | "DownloadDecodeFilter" >> beam.ParDo(FetchDoFn(cfg))
    )

    if cfg.filters.model_filters():
        fetched, clip_cutoff, model_records = sc.add_model_stages(
            fetched, cfg, perworker.cpu_threads_per_process(beam_options))
    else:
        clip_cutoff = p | "NoModels" >> beam.Create([None])
        model_records = p | "NoModelRecords" >> beam.Create([[]])

    keyed = {"rows": fetched | "RowsByShard" >> by_shard(lambda r: r["key"], n_shards)}

    dcfg = cfg.filters.dedup
    empty = p | "NoDecisions" >> beam.Create([])
    if dcfg.exact:
        keyed["exact"] = (
            fetched
            | "ShaRecords" >> beam.FlatMap(lambda r: [(r["sha256"], light_record(r, "sha256"))] if r["sha256"] else [])
            | "GroupBySha" >> beam.GroupByKey()
            | "ExactLosers" >> beam.FlatMap(lambda kv: dd.exact_losers(kv[1]))
            | "ExactByShard" >> by_shard(lambda lw: lw[0], n_shards)
        )
    else:
        keyed["exact"] = empty | "NoExact" >> beam.Map(lambda x: x)
    if dcfg.near:
        md = dcfg.max_distance
        keyed["near"] = (
            fetched
            | "PhashBands" >> beam.FlatMap(
                lambda r: [(band, light_record(r, "phash")) for band in dd.phash_bands(r["phash"], md)]
                if r["phash"] and not r["reject_reasons"] else [])
            | "GroupByBand" >> beam.GroupByKey()
            | "NearLosers" >> beam.FlatMap(lambda kv: dd.near_losers(kv[1], md))
            | "NearByShard" >> by_shard(lambda lw: lw[0], n_shards)
        )
    else:
        keyed["near"] = empty | "NoNear" >> beam.Map(lambda x: x)

    results = (
        common.group_by_shard(keyed, n_shards)
        | "WriteShards" >> beam.ParDo(WriteShardsDoFn(cfg), beam.pvalue.AsSingleton(n_shards))
    )
    return common.write_manifest(results, WriteManifestDoFn(cfg, beam_options), n_inputs, model_records,
                                 clip_cutoff)


def count_inputs(splits: list[ingest.Split]) -> int:
    """The input rows, counted by the driver before the pipeline runs: what the finished run must account for.

    Parquet row groups from their footers; text files by one streaming pass each, files side by side (on gs://
    the pass is mostly waiting on reads)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(splits)))) as pool:
        return sum(pool.map(ingest.count_rows, splits))


def prepare(recipe: CurateRecipe, count: bool = True) -> Plan:
    """Everything that must succeed before any work: inputs found, readable, with the right columns; the plan
    holds the input splits and (``count``) the rows they hold."""
    files = ingest.expand_inputs(recipe.input)
    ingest.preflight(files, recipe.input)
    splits = ingest.plan_splits(files)
    n_inputs = count_inputs(splits) if count else None
    n_files = len({s.file.path for s in splits})
    return Plan(splits, n_inputs, f"curate: {n_files} input file(s), {len(splits)} split(s)"
                + (f", {n_inputs} rows" if n_inputs is not None else "") + f" -> {recipe.output.path}")


PIPELINE = common.Pipeline("curate", prepare, build, format_funnel)
