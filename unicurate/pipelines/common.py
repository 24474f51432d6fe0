"""What every pipeline graph is made of, written once: the pipeline protocol the runner drives (:class:`Pipeline`,
:class:`Plan`), the shard layout (count, one grouping per shard), the model stage's resource hints and records,
and the manifest writer that ends every graph.

    (index, decision) ─┐
    shard slots ───────┴─ group_by_shard (every index 0..N-1 gets a group) ─ write shards ─ write_manifest (last)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam

from unicurate.manifests import manifest as mf


# ------------------------------------------------------------------ the pipeline protocol
@dataclass(frozen=True)
class Plan:
    """What a pipeline's ``prepare`` found before any work.

    ``inputs``: what ``build`` reads (the pipeline's own kind); ``expected_rows``: the driver's count of the input
    rows, the reference the finished run is checked against (None when not counted: a dry run reads no input);
    ``headline``: the line that tells the user what is about to run; ``units``: the work units the runner resumes
    and reports on (``unicurate.units.folder``), when the pipeline is cut into units.
    """

    inputs: Any
    expected_rows: Optional[int]
    headline: str
    units: Any = None  # the cut into work units (``unicurate.units.plan.UnitPlan``); None: not cut (a dry run)


@dataclass(frozen=True)
class Pipeline:
    """One pipeline as the runner (``unicurate.run.execute``) drives it; each graph module defines one.

    ``prepare(recipe, count)`` checks the inputs (raising ``InputError`` before anything is written) and returns a
    :class:`Plan` (``count``: also count the input rows); ``build(p, recipe, plan, beam_options)`` adds the graph
    to ``p`` and returns the PCollection of the pending manifest's path; ``summarize(manifest)`` is the text a
    finished run prints.
    """

    name: str
    prepare: Callable[[Any, bool], Plan]
    build: Callable[[beam.Pipeline, Any, Plan, dict], beam.PCollection]
    summarize: Callable[[dict], str]


# ------------------------------------------------------------------ shards
def shard_count(n_rows: int, rows_per_shard: int) -> int:
    return max(1, math.ceil(n_rows / rows_per_shard))


def group_by_shard(keyed: dict[str, beam.PCollection], n_shards: beam.PCollection) -> beam.PCollection:
    """(shard index, {name: values}) for each shard of ``n_shards`` (a singleton), from PCollections of
    (index, value) named by ``keyed``. Every index gets a group, so part-i-of-N is written for each i even when
    no row falls in it."""
    slots = n_shards | "ShardSlots" >> beam.FlatMap(lambda n: [(i, None) for i in range(n)])
    return {**keyed, "slots": slots} | "GroupByShard" >> beam.CoGroupByKey()


# ------------------------------------------------------------------ the model stage
def model_stage_hints(runner) -> dict:
    """Beam resource hints for the model transforms (right fitting onto GPU workers); {} when not asked for."""
    gpu = runner.dataflow.gpu
    if runner.profile != "dataflow" or gpu is None or gpu.placement != "model_stages":
        return {}
    hints = {"accelerator": gpu.accelerator()}
    if gpu.min_ram:
        hints["min_ram"] = gpu.min_ram
    return hints


def with_model_hints(transform, recipe):
    """The model transform with the recipe's resource hints (Dataflow right fitting onto GPU workers), if any."""
    hints = model_stage_hints(recipe.runner)
    return transform.with_resource_hints(**hints) if hints else transform


def collect_model_records(blobs: beam.PCollection) -> beam.PCollection:
    """The model records the work units reported (JSON lists, as their completion records hold them), once each,
    as one list."""
    return (
        blobs
        | "DistinctModelRecords" >> beam.Distinct()
        | "ModelRecords" >> beam.combiners.ToList()
    )


def merge_model_records(record_lists: list[str]) -> list[dict]:
    """One record per model, from what the workers reported (devices of all workers listed)."""
    merged: dict[str, dict] = {}
    for blob in sorted(record_lists):
        for rec in json.loads(blob):
            cur = merged.setdefault(rec["name"], dict(rec, devices=[]))
            dev = f"{rec.get('device')}/{rec.get('precision')}"
            if dev not in cur["devices"]:
                cur["devices"].append(dev)
    return [merged[k] for k in merged]


# ------------------------------------------------------------------ the manifest
class WriteManifestDoFn(beam.DoFn):
    """The last stage of a pipeline: the manifest, from every shard's result (one list), written *pending*: the
    driver publishes it once it has checked the run against its own count of the inputs (``unicurate.run.check``).

    A shard result is ``{"shards": {dir: shard info}, "funnel": partial funnel}``. Subclasses name the output
    (``KIND``, ``SCHEMA_VERSION``, ``DIRS``) and give :meth:`merge_funnel`, :meth:`unloaded_models` (the records of
    models no row reached) and :meth:`fields` (their own manifest fields, from their extra side inputs).
    """

    KIND: str
    SCHEMA_VERSION: str
    DIRS: tuple[str, ...]

    def __init__(self, recipe, beam_options: dict):
        self.recipe, self.beam_options = recipe, beam_options
        # the inputs' identity (recipe_hash), taken here on the driver as the graph is built, before any row is
        # read: not by the worker that writes the manifest at the end of the run
        self.inputs = recipe.input_files()

    def merge_funnel(self, parts: Iterator[dict]) -> dict:
        raise NotImplementedError

    def unloaded_models(self) -> list[dict]:
        raise NotImplementedError

    def fields(self, *extra) -> dict:
        return {}

    def from_shards(self, shard_results: list[dict]) -> dict:
        """Manifest fields made from the shard results beyond shards and funnel (none unless overridden)."""
        return {}

    def process(self, shard_results: list[dict], n_inputs: int, model_records: list[str], *extra) -> Iterator[str]:
        out_dir = self.recipe.output.path
        shards = {d: sorted((r["shards"][d] for r in shard_results), key=lambda s: s["path"]) for d in self.DIRS}
        stale = mf.remove_stale_shards(out_dir, {s["path"] for d in self.DIRS for s in shards[d]}, dirs=self.DIRS)
        models = merge_model_records(model_records) if model_records else self.unloaded_models()
        manifest = {
            **mf.manifest_header(self.KIND, self.SCHEMA_VERSION, self.recipe, self.inputs),
            "models": models,
            "uncalibrated": any(not m.get("calibrated", True) for m in models),
            **self.fields(*extra),
            **self.from_shards(shard_results),
            "beam_options": self.beam_options,
            "counts": {"inputs": n_inputs, **{d: sum(s["rows"] for s in shards[d]) for d in self.DIRS}},
            "funnel": self.merge_funnel(r["funnel"] for r in shard_results),
            "shards": shards,
            "removed_stale_shards": stale,
        }
        path = mf.join(out_dir, mf.PENDING_MANIFEST_NAME)
        mf.write_json_atomic(path, manifest)
        yield path


def write_manifest(shard_results: beam.PCollection, writer: WriteManifestDoFn, *side_inputs: beam.PCollection):
    """Every shard's result -> the pending manifest (its path); ``side_inputs`` are singletons, in the order of
    ``writer.process``'s arguments (the input count, the model records, then the writer's own)."""
    return (
        shard_results
        | "CollectShards" >> beam.combiners.ToList()
        | "WriteManifest" >> beam.ParDo(writer, *(beam.pvalue.AsSingleton(s) for s in side_inputs))
    )
