"""The Beam synthesize pipeline.

    kept shards of a curate run ─ read rows ─ reshuffle ─ BatchElements
        ─ SynthesizeDoFn (one Synthesizer per worker process: GroundingDINO + SAM + CLIP + inpainter)
        ─ image results keyed by shard ─ GroupByKey ─ write subject/ edit/ rejected/ images/ shards
        ─ manifest.json (last)

Every curated image ends in exactly one ``images`` row (produced, no_object,
all_rejected or image_error); its samples and rejections share its shard
index, so a shard's four files describe the same images.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from unicurate.config import SynthesizeRecipe
from unicurate.manifests import manifest as mf
from unicurate.models import zoo
from unicurate.pipelines import perworker
from unicurate.pipelines.curate import shard_of
from unicurate.download.ingest import InputError
from unicurate.pipelines.score import with_model_hints
from unicurate.schema import (CURATED_SCHEMA_VERSION, EDIT_TYPES, KEPT, SYNTHESIS_DIRS, SYNTHESIS_SCHEMA_VERSION,
                              SYNTHESIS_SCHEMAS, shard_name)

log = logging.getLogger("unicurate")
_NS = perworker.NAMESPACE
MODELS_TAG = perworker.ModelDoFn.MODELS_TAG
READ_COLUMNS = ["key", "caption", "image", "width", "height"]


# ------------------------------------------------------------------ input
def prepare(recipe: SynthesizeRecipe) -> tuple[dict, list[str], Optional[list[str]]]:
    """Check the curate run: (its manifest, kept shard paths, the selected keys when input.max_images)."""
    src = recipe.input.path
    try:
        cur = mf.read_manifest(src)
    except FileNotFoundError as exc:
        raise InputError(f"input.path: {exc}. Give the output folder of a finished `unicurate run` of a "
                         "curate recipe") from None
    except ValueError as exc:
        raise InputError(f"input.path: {mf.join(src, mf.MANIFEST_NAME)} is not valid JSON: {exc}") from None
    if cur.get("kind") != "curated" or cur.get("schema_version") != CURATED_SCHEMA_VERSION:
        raise InputError(f"input.path: {src} holds a {cur.get('kind')!r} output with schema "
                         f"{cur.get('schema_version')!r}; synthesize reads curate outputs ({CURATED_SCHEMA_VERSION})")
    shards = [s for s in cur.get("shards", {}).get(KEPT, []) if s.get("rows")]
    paths = [mf.join(src, *s["path"].split("/")) for s in shards]
    from apache_beam.io.filesystems import FileSystems

    missing = [p for p in paths if not FileSystems.exists(p)]
    if missing:
        raise InputError(f"input.path: {len(missing)} kept shard(s) listed in the manifest are missing, e.g. "
                         f"{missing[0]}; check the folder with `unicurate validate {src}`")
    keys = None
    if recipe.input.max_images is not None:
        all_keys = sorted(k for p in paths for k in _read_column(p, "key"))
        keys = all_keys[: recipe.input.max_images]
    return cur, paths, keys


def _read_column(path: str, column: str) -> list:
    return mf.open_parquet(path).read(columns=[column]).column(column).to_pylist()


def read_kept_shard(path: str, keys: Optional[frozenset]) -> Iterator[dict]:
    pf = mf.open_parquet(path)
    for batch in pf.iter_batches(batch_size=64, columns=READ_COLUMNS):
        for row in batch.to_pylist():
            if keys is None or row["key"] in keys:
                yield row


# ------------------------------------------------------------------ model stage
def _describe(c: dict, rate: float) -> str:
    return f"{c['images']} images synthesized, {c['samples']} samples, {rate:.2f} images/s"


class SynthesizeDoFn(perworker.ModelDoFn):
    """Runs a Synthesizer on batches of curated rows; models load once per worker process."""

    def __init__(self, recipe: SynthesizeRecipe, cpu_threads: Optional[int] = None):
        super().__init__(tag=f"syn-{recipe.recipe_hash()}", stage="synthesize", cpu_threads=cpu_threads)
        self.recipe = recipe
        self.images = Metrics.counter(_NS, "images")
        self.samples = Metrics.counter(_NS, "samples")

    def build(self):
        from unicurate.synthesis.synthesizer import Synthesizer

        return Synthesizer(self.recipe)

    def records(self) -> list[dict]:
        return self.model.records

    def process(self, batch: list[dict]) -> Iterator:
        yield from self.started()
        results = self.model.process(batch)
        self.span.mark()
        self.batches.inc()
        self.images.inc(len(results))
        n = sum(len(r.subject) + len(r.edit) for r in results)
        self.samples.inc(n)
        perworker.progress("synthesize", _describe, every=5.0).add(images=len(results), samples=n)
        for res in results:
            yield {"image": res.image, "subject": res.subject, "edit": res.edit, "rejected": res.rejected}


# ------------------------------------------------------------------ funnel
def funnel_part(results: list[dict]) -> dict:
    """Counts over some image results (merged with :func:`merge_funnel`)."""
    c: Counter = Counter()
    for res in results:
        img = res["image"]
        c["images"] += 1
        c[f"status:{img['status']}"] += 1
        c["detections"] += img["detections"]
        c["objects_accepted"] += img["objects_accepted"]
        c["subjects"] += len(res["subject"])
        for e in res["edit"]:
            c[f"edit:{e['edit_type']}"] += 1
        for rj in res["rejected"]:
            scope = "object" if rj["kind"] == "object" else f"edit:{rj['edit_type']}"
            c[f"rejected:{scope}"] += 1
            for code in rj["reject_reasons"]:
                c[f"reason:{scope}:{code}"] += 1
    return dict(c)


def merge_funnel(parts) -> dict:
    c: Counter = Counter()
    for p in parts:
        c.update(p)
    statuses = {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("status:")}
    edits = {}
    for t in EDIT_TYPES:
        made, rej = c.get(f"edit:{t}", 0), c.get(f"rejected:edit:{t}", 0)
        reasons = {k.rsplit(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith(f"reason:edit:{t}:")}
        if made or rej:
            edits[t] = {"written": made, "rejected": rej, "reasons": reasons}
    obj_reasons = {k.rsplit(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("reason:object:")}
    return {
        "images": c.get("images", 0),
        "image_status": {s: statuses.get(s, 0) for s in ("produced", "no_object", "all_rejected", "image_error")},
        "objects": {"detected": c.get("detections", 0), "accepted": c.get("objects_accepted", 0),
                    "rejected": c.get("rejected:object", 0), "reasons": obj_reasons},
        "subjects": c.get("subjects", 0),
        "edits": edits,
    }


# ------------------------------------------------------------------ writing
class WriteSynShardsDoFn(beam.DoFn):
    def __init__(self, recipe: SynthesizeRecipe):
        self.recipe = recipe

    def process(self, item, n_shards: int) -> Iterator[dict]:
        index, results = item
        results = sorted((r for r in results if r is not None), key=lambda r: r["image"]["source_key"])
        out_dir = self.recipe.output.path
        name = shard_name(index, n_shards)
        rg = self.recipe.output.row_group_rows
        rows = {"images": [r["image"] for r in results]}
        for kind in ("subject", "edit", "rejected"):
            rows[kind] = [x for r in results for x in sorted(r[kind], key=lambda x: x["key"])]
        infos = {}
        for kind in SYNTHESIS_DIRS:
            infos[kind] = mf.write_shard(out_dir, f"{kind}/{name}", rows[kind], SYNTHESIS_SCHEMAS[kind], rg).to_json()
        yield {"shards": infos, "funnel": funnel_part(results)}


class WriteSynManifestDoFn(beam.DoFn):
    def __init__(self, recipe: SynthesizeRecipe, beam_options: dict, source: dict):
        self.recipe, self.beam_options, self.source = recipe, beam_options, source

    def process(self, shard_results: list[dict], n_inputs: int, model_records: list[str]) -> Iterator[str]:
        from unicurate.pipelines.score import merge_model_records

        out_dir = self.recipe.output.path
        shards: dict[str, list] = {k: [] for k in SYNTHESIS_DIRS}
        for res in shard_results:
            for kind, info in res["shards"].items():
                shards[kind].append(info)
        for k in shards:
            shards[k].sort(key=lambda s: s["path"])
        keep = {s["path"] for k in shards for s in shards[k]}
        stale = mf.remove_stale_shards(out_dir, keep, dirs=SYNTHESIS_DIRS)
        funnel = merge_funnel(r["funnel"] for r in shard_results)
        models = (merge_model_records(model_records) if model_records
                  else zoo.unloaded_records(zoo.synthesis_specs(self.recipe), "not loaded: the input had no kept images"))
        counts = {"inputs": n_inputs, **{k: sum(s["rows"] for s in shards[k]) for k in SYNTHESIS_DIRS}}
        manifest = {
            **mf.manifest_header("synthesis", SYNTHESIS_SCHEMA_VERSION, self.recipe),
            "source": self.source,
            "models": models,
            "uncalibrated": any(not m.get("calibrated", True) for m in models),
            "beam_options": self.beam_options,
            "counts": counts,
            "funnel": funnel,
            "shards": shards,
            "removed_stale_shards": stale,
        }
        # pending until the driver has checked the run against its own count of the inputs (runner)
        mf.write_json_atomic(mf.join(out_dir, mf.PENDING_MANIFEST_NAME), manifest)
        yield mf.join(out_dir, mf.PENDING_MANIFEST_NAME)


def shard_count(n_images: int, per_shard: int) -> int:
    return max(1, math.ceil(n_images / per_shard))


def build(p: beam.Pipeline, recipe: SynthesizeRecipe, paths: list[str], keys: Optional[list[str]], n_inputs: int,
          beam_options: dict, source: dict):
    """Add the synthesize pipeline to ``p``; returns the PCollection holding the manifest path."""
    m = recipe.models
    n_shards = shard_count(n_inputs, recipe.output.images_per_shard)
    wanted = frozenset(keys) if keys is not None else None
    rows = (
        p
        | "KeptShards" >> beam.Create(paths, reshuffle=True)
        | "ReadKeptRows" >> beam.FlatMap(read_kept_shard, wanted)
    )
    # what the pipeline read, recorded as counts.inputs: the driver checks it against its own count (n_inputs)
    n_read = rows | "CountInputs" >> beam.combiners.Count.Globally()
    results = (
        rows
        | "SpreadImages" >> beam.Reshuffle()
        | "BatchImages" >> beam.BatchElements(min_batch_size=m.batch_bounds[0], max_batch_size=m.batch_bounds[1])
        | "Synthesize" >> with_model_hints(beam.ParDo(SynthesizeDoFn(recipe, perworker.cpu_threads_per_process(beam_options))), recipe).with_outputs(
            MODELS_TAG, main="results")
    )
    keyed = results.results | "ByShard" >> beam.Map(lambda r: (shard_of(r["image"]["source_key"], n_shards), r))
    slots = p | "ShardSlots" >> beam.Create([(i, None) for i in range(n_shards)])
    written = (
        (keyed, slots)
        | "WithSlots" >> beam.Flatten()
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteSynShardsDoFn(recipe), n_shards)
    )
    records = (
        results[MODELS_TAG]
        | "DistinctModelRecords" >> beam.Distinct()
        | "ModelRecords" >> beam.combiners.ToList()
    )
    return (
        written
        | "CollectShards" >> beam.combiners.ToList()
        | "WriteManifest" >> beam.ParDo(WriteSynManifestDoFn(recipe, beam_options, source),
                                        beam.pvalue.AsSingleton(n_read), beam.pvalue.AsSingleton(records))
    )
