"""The Beam synthesize pipeline.

    kept shards of a curate run ─ read rows ─ reshuffle ─ BatchElements
        ─ SynthesizeDoFn (one Synthesizer per worker process: GroundingDINO + SAM + CLIP + inpainter)
        ─ image results keyed by shard ─ group by shard (common) ─ write subject/ edit/ rejected/ images/ shards
        ─ manifest.json (last)

Every curated image ends in exactly one ``images`` row (produced, no_object,
all_rejected or image_error); its samples and rejections share its shard
index, so a shard's four files describe the same images.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from unicurate.config import SynthesizeRecipe
from unicurate.manifests import curated
from unicurate.manifests import manifest as mf
from unicurate.models import zoo
from unicurate.download.ingest import InputError
from unicurate.pipelines import common, perworker
from unicurate.pipelines.common import Plan, by_shard, collect_model_records, shard_count, with_model_hints
from unicurate.manifests.funnel import format_synthesis_funnel
from unicurate.schema import (CURATED_SCHEMA_VERSION, EDIT_TYPES, KEPT, SYNTHESIS_DIRS, SYNTHESIS_SCHEMA_VERSION,
                              SYNTHESIS_SCHEMAS, shard_name)

log = logging.getLogger("unicurate")
_NS = perworker.NAMESPACE
MODELS_TAG = perworker.ModelDoFn.MODELS_TAG
READ_COLUMNS = ["key", "caption", "image", "width", "height"]


# ------------------------------------------------------------------ input
@dataclass(frozen=True)
class KeptImages:
    """What a synthesize run reads: the kept shards of a curate run, the selected keys (``input.max_images``;
    None: all), and the manifest's ``source`` record of that run."""

    paths: list[str]
    keys: Optional[list[str]]
    source: dict


def prepare(recipe: SynthesizeRecipe, count: bool = True) -> Plan:
    """Check the curate run; the plan holds its kept images and their number (from its manifest: ``count`` costs
    nothing here, so they are always counted)."""
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
    n_inputs = len(keys) if keys is not None else sum(s["rows"] for s in shards)
    source = {"path": src, "recipe_hash": cur.get("recipe_hash"), "kept": cur["counts"]["kept"],
              "uncalibrated": bool(cur.get("uncalibrated"))}
    return Plan(KeptImages(paths, keys, source), n_inputs,
                f"synthesize: {n_inputs} kept image(s) in {len(paths)} shard(s) of {src} -> {recipe.output.path}")


def _read_column(path: str, column: str) -> list:
    return curated.read_table(path, [column]).column(column).to_pylist()


def read_kept_shard(path: str, keys: Optional[frozenset]) -> Iterator[dict]:
    """The kept rows of one curated shard (``keys``: only those), 64 at a time in memory."""
    for row in curated.iter_rows(path, READ_COLUMNS, batch_size=64):
        if keys is None or row["key"] in keys:
            yield row


# ------------------------------------------------------------------ model stage
def _describe(c: dict, rate: float) -> str:
    return f"{c['images']} images synthesized, {c['samples']} samples, {rate:.2f} images/s"


class SynthesizeDoFn(perworker.ModelDoFn):
    """Runs a Synthesizer on batches of curated rows; models load once per worker process."""

    def __init__(self, recipe: SynthesizeRecipe, cpu_threads: Optional[int] = None):
        super().__init__(tag="synthesizer", stage="synthesize", cpu_threads=cpu_threads)
        self.recipe = recipe
        self.images = Metrics.counter(_NS, "images")
        self.samples = Metrics.counter(_NS, "samples")

    def build(self):
        from unicurate.synthesis.synthesizer import Synthesizer

        return Synthesizer(self.recipe, runtime=self.runtime(self.recipe.models))

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
        index, grouped = item
        results = sorted(grouped["rows"], key=lambda r: r["image"]["source_key"])
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


class WriteSynManifestDoFn(common.WriteManifestDoFn):
    KIND, SCHEMA_VERSION, DIRS = "synthesis", SYNTHESIS_SCHEMA_VERSION, SYNTHESIS_DIRS

    def __init__(self, recipe: SynthesizeRecipe, beam_options: dict, source: dict):
        super().__init__(recipe, beam_options)
        self.source = source

    def merge_funnel(self, parts) -> dict:
        return merge_funnel(parts)

    def unloaded_models(self) -> list[dict]:
        return zoo.unloaded_records(zoo.synthesis_specs(self.recipe), "not loaded: the input had no kept images")

    def fields(self) -> dict:
        return {"source": self.source}


def build(p: beam.Pipeline, recipe: SynthesizeRecipe, plan: Plan, beam_options: dict):
    """Add the synthesize pipeline to ``p`` (``plan.inputs``: :class:`KeptImages`); returns the PCollection holding
    the manifest path."""
    m = recipe.models
    kept: KeptImages = plan.inputs
    n_shards = p | "ShardCount" >> beam.Create([shard_count(plan.expected_rows, recipe.output.images_per_shard)])
    wanted = frozenset(kept.keys) if kept.keys is not None else None
    rows = (
        p
        | "KeptShards" >> beam.Create(kept.paths, reshuffle=True)
        | "ReadKeptRows" >> beam.FlatMap(read_kept_shard, wanted)
    )
    # what the pipeline read, recorded as counts.inputs: the driver checks it against its own count (n_inputs)
    n_read = rows | "CountInputs" >> beam.combiners.Count.Globally()
    cpu_threads = perworker.cpu_threads_per_process(beam_options)
    results = (
        rows
        | "SpreadImages" >> beam.Reshuffle()
        | "BatchImages" >> beam.BatchElements(min_batch_size=m.batch_bounds[0], max_batch_size=m.batch_bounds[1])
        | "Synthesize" >> with_model_hints(beam.ParDo(SynthesizeDoFn(recipe, cpu_threads)), recipe).with_outputs(
            MODELS_TAG, main="results")
    )
    keyed = {"rows": results.results | "ByShard" >> by_shard(lambda r: r["image"]["source_key"], n_shards)}
    written = (
        common.group_by_shard(keyed, n_shards)
        | "WriteShards" >> beam.ParDo(WriteSynShardsDoFn(recipe), beam.pvalue.AsSingleton(n_shards))
    )
    return common.write_manifest(written, WriteSynManifestDoFn(recipe, beam_options, kept.source), n_read,
                                 collect_model_records(results[MODELS_TAG]))


PIPELINE = common.Pipeline("synthesize", prepare, build, format_synthesis_funnel)
