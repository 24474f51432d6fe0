"""The Beam synthesize pipeline, in work units (``unicurate.units``).

    units of kept images of a curate run ─ SynthesizeUnits: per unit, resumed (valid completion record) or
        synthesized (one Synthesizer per worker process: GroundingDINO + SAM + CLIP + inpainter) into its
        images/subject/edit/rejected unit files ─ unit records
    final shards (``output.images_per_shard`` consecutive images each) ─ WriteShards: each kind's rows streamed
        out of the unit files ─ subject/ edit/ rejected/ images/ ─ manifest.json (pending, last)

Every curated image ends in exactly one ``images`` row (produced, no_object, all_rejected or image_error); its
samples and rejections share its shard index, so a shard's four files describe the same images.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from unicurate.config import SynthesizeRecipe
from unicurate.download.ingest import InputError
from unicurate.manifests import curated
from unicurate.manifests import manifest as mf
from unicurate.manifests.funnel import format_synthesis_funnel
from unicurate.models import zoo
from unicurate.pipelines import common, perworker
from unicurate.pipelines.common import Plan, collect_model_records, shard_count, with_model_hints
from unicurate.schema import CURATED_SCHEMA_VERSION, KEPT, SYNTHESIS_DIRS, SYNTHESIS_SCHEMA_VERSION, \
    SYNTHESIS_SCHEMAS, shard_name
from unicurate.units import folder, store
from unicurate.units import synthesize as us
from unicurate.units.plan import KeptShard, Unit, UnitPlan

log = logging.getLogger("unicurate")
_NS = perworker.NAMESPACE


# ------------------------------------------------------------------ input
@dataclass(frozen=True)
class KeptImages:
    """What a synthesize run reads (besides its cut into units, ``Plan.units``): the manifest's ``source`` record of
    the curate run."""

    source: dict


def prepare(recipe: SynthesizeRecipe, count: bool = True) -> Plan:
    """Check the curate run; the plan holds its kept images (``input.max_images``: the first N by key) cut into
    units, counted from its manifest (with ``max_images``: from the shards' key columns)."""
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
    counts = [s["rows"] for s in shards]
    max_key = None
    if recipe.input.max_images is not None:
        keys = [_read_column(p, "key") for p in paths]
        chosen = sorted(k for ks in keys for k in ks)[: recipe.input.max_images]
        max_key = chosen[-1] if chosen else None
        counts = [sum(1 for k in ks if max_key is not None and k <= max_key) for ks in keys]
    splits = tuple(KeptShard(p, max_key) for p in paths)
    uplan = UnitPlan(splits, tuple(counts), recipe.input.rows_per_unit)
    source = {"path": src, "recipe_hash": cur.get("recipe_hash"), "kept": cur["counts"]["kept"],
              "uncalibrated": bool(cur.get("uncalibrated"))}
    return Plan(KeptImages(source), uplan.n_rows,
                f"synthesize: {uplan.n_rows} kept image(s) in {len(paths)} shard(s) of {src}, {uplan.n_units} "
                f"unit(s) of up to {uplan.rows_per_unit} -> {recipe.output.path}", units=uplan)


def _read_column(path: str, column: str) -> list:
    return curated.read_table(path, [column]).column(column).to_pylist()


# ------------------------------------------------------------------ units
def _describe(c: dict, rate: float) -> str:
    return f"{c['images']} images synthesized, {c['samples']} samples, {rate:.2f} images/s"


class SynthesizeUnitsDoFn(perworker.ModelDoFn):
    """Each unit: resumed when its completion record is valid for this data recipe and its files intact, else
    synthesized into its files (:class:`unicurate.units.synthesize.UnitSynthesizer`). Yields its record; models
    load once per worker process, on a background thread."""

    def __init__(self, recipe: SynthesizeRecipe, recipe_hash: str, cpu_threads: Optional[int] = None):
        super().__init__(tag="synthesizer", stage="synthesize", cpu_threads=cpu_threads)
        self.recipe, self.recipe_hash = recipe, recipe_hash
        self.images = Metrics.counter(_NS, "images")
        self.samples = Metrics.counter(_NS, "samples")
        self.processed = Metrics.counter(_NS, "units_processed")
        self.resumed = Metrics.counter(_NS, "units_resumed")

    def build(self):
        from unicurate.synthesis.synthesizer import Synthesizer

        return Synthesizer(self.recipe, runtime=self.runtime(self.recipe.models))

    def setup(self):
        super().setup()
        self.plan = folder.read_plan(self.recipe.output.path)
        self.worker = us.UnitSynthesizer(self.recipe, self.loaded)

    def process(self, unit: Unit) -> Iterator[dict]:
        self.span.mark()
        out_dir = self.recipe.output.path
        record = store.read_record(out_dir, unit.index)
        if store.record_fits(record, unit, self.recipe_hash) and store.file_intact(out_dir, record):
            self.resumed.inc()
        else:
            def on_batch(images: int, samples: int) -> None:
                self.batches.inc()
                self.images.inc(images)
                self.samples.inc(samples)
                perworker.progress("synthesize", _describe, every=5.0).add(images=images, samples=samples)

            record = self.worker.run(self.plan, unit, self.recipe_hash, on_batch)
            self.processed.inc()
        yield record
        self.span.mark()


# ------------------------------------------------------------------ writing
class WriteSynShardsDoFn(beam.DoFn):
    """One final shard: the rows of its images (consecutive positions) of each kind, streamed out of the unit
    files, written to images/ subject/ edit/ rejected/."""

    def __init__(self, recipe: SynthesizeRecipe, n_rows: int, n_shards: int):
        self.recipe, self.n_rows, self.n_shards = recipe, n_rows, n_shards

    def setup(self):
        perworker.fast_exit_when_done()
        self.plan = folder.read_plan(self.recipe.output.path)

    def process(self, index: int) -> Iterator[dict]:
        out = self.recipe.output
        start, stop = min(index * out.images_per_shard, self.n_rows), min((index + 1) * out.images_per_shard,
                                                                         self.n_rows)
        name = shard_name(index, self.n_shards)
        infos, written = {}, {}
        for kind in SYNTHESIS_DIRS:
            counted = []
            with mf.ShardWriter(out.path, f"{kind}/{name}", SYNTHESIS_SCHEMAS[kind], out.row_group_rows) as w:
                for row in store.rows_between(out.path, self.plan, start, stop, rel=us.unit_rel(kind)):
                    row.pop(store.POS)
                    w.write(row)
                    counted.append(_funnel_fields(kind, row))
                infos[kind] = w.close().to_json()
            written[kind] = counted
        if len(written["images"]) != stop - start:
            raise RuntimeError(f"shard {index}: read {len(written['images'])} image rows from the unit files, "
                               f"expected {stop - start}")
        yield {"shards": infos, "funnel": us.funnel_part(written["images"], written["subject"], written["edit"],
                                                         written["rejected"])}


def _funnel_fields(kind: str, row: dict) -> dict:
    """What of a written row the funnel counts (not its images)."""
    keep = {"images": ("status", "detections", "objects_accepted"), "subject": (), "edit": ("edit_type",),
            "rejected": ("kind", "edit_type", "reject_reasons")}[kind]
    return {k: row.get(k) for k in keep}


class WriteSynManifestDoFn(common.WriteManifestDoFn):
    KIND, SCHEMA_VERSION, DIRS = "synthesis", SYNTHESIS_SCHEMA_VERSION, SYNTHESIS_DIRS

    def __init__(self, recipe: SynthesizeRecipe, beam_options: dict, source: dict):
        super().__init__(recipe, beam_options)
        self.source = source

    def merge_funnel(self, parts) -> dict:
        return us.merge_funnel(parts)

    def unloaded_models(self) -> list[dict]:
        return zoo.unloaded_records(zoo.synthesis_specs(self.recipe), "not loaded: the input had no kept images")

    def fields(self) -> dict:
        return {"source": self.source}


def build(p: beam.Pipeline, recipe: SynthesizeRecipe, plan: Plan, beam_options: dict):
    """Add the synthesize pipeline to ``p`` (``plan.inputs``: :class:`KeptImages`); returns the PCollection holding
    the pending manifest's path."""
    kept: KeptImages = plan.inputs
    uplan: Optional[UnitPlan] = plan.units
    n_rows = uplan.n_rows if uplan is not None else 0
    n_shards = shard_count(n_rows, recipe.output.images_per_shard)
    cpu_threads = perworker.cpu_threads_per_process(beam_options)
    records = (
        p
        | "Units" >> beam.Create(uplan.units() if uplan is not None else [], reshuffle=True)
        | "Synthesize" >> with_model_hints(beam.ParDo(SynthesizeUnitsDoFn(recipe, recipe.recipe_hash(),
                                                                          cpu_threads)), recipe)
    )
    # the images the units hold, recorded as counts.inputs: the driver checks it against its own count
    n_read = records | "UnitImages" >> beam.Map(lambda r: r["rows"]) | "CountInputs" >> beam.CombineGlobally(sum)
    model_records = collect_model_records(
        records | "UnitModels" >> beam.FlatMap(lambda r: [_json(r["models"])] if r["models"] else []))
    written = (
        records
        | "AllUnitsDone" >> beam.combiners.Count.Globally()
        | "ShardIndexes" >> beam.FlatMap(lambda _n: range(n_shards))
        | "SpreadShards" >> beam.Reshuffle()
        | "WriteShards" >> beam.ParDo(WriteSynShardsDoFn(recipe, n_rows, n_shards))
    )
    return common.write_manifest(written, WriteSynManifestDoFn(recipe, beam_options, kept.source), n_read,
                                 model_records)


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True)


PIPELINE = common.Pipeline("synthesize", prepare, build, format_synthesis_funnel)
