"""The one runner: every pipeline runs as prepare -> build -> run -> check -> publish.

    recipe ─ Launch (options, where it runs, what would fail there) ─ models checked ─ sample web (demo)
        ─ pipeline.prepare (inputs checked, rows counted) ─ output marked unfinished ─ pipeline.build
        ─ dry run: the job description │ run (worker watchdog) ─ run check ─ manifest published

A pipeline is one entry of :data:`PIPELINES` (``unicurate.pipelines.common.Pipeline``), keyed like
``config.RECIPES``: the runner knows nothing else about it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable, Optional

import apache_beam as beam

from unicurate.config import RecipeError
from unicurate.models import zoo
from unicurate.pipelines import curate, synthesize
from unicurate.pipelines.common import Pipeline
from unicurate.pipelines.perworker import LOCAL_DRIVER_ENV
from unicurate.run.check import check_and_publish, has_pending_manifest, mark_unfinished
from unicurate.run.demoweb import sample_web_for
from unicurate.run.dryrun import write_job_description
from unicurate.manifests.funnel import counters
from unicurate.run.options import Launch, absolutise
from unicurate.run.watchdog import WorkerDied, fail_when_a_worker_dies
from unicurate.units import folder as units_folder

log = logging.getLogger("unicurate")

PIPELINES: dict[str, Pipeline] = {p.name: p for p in (curate.PIPELINE, synthesize.PIPELINE)}


def run(recipe, beam_args: Optional[list[str]] = None, say: Callable[[str], None] = print, dry_run: bool = False,
        job_file: Optional[str] = None, restart: bool = False, progress: bool = False) -> dict:
    """Run the recipe's pipeline to completion; returns the manifest (with ``dry_run``: the job description,
    written to ``job_file``). Every check that can fail before work (options, models, inputs, the work units
    already in the output folder) runs before the output folder is touched.

    A pipeline cut into work units resumes: the units a killed or failed run finished are not redone
    (``restart``: they are discarded first). ``progress``: a progress bar over the units while the run goes.
    """
    pipeline = PIPELINES[recipe.pipeline]
    launch = Launch(absolutise(recipe), beam_args, dry_run)
    recipe = launch.recipe
    warnings = launch.check(say)
    sample_web = sample_web_for(recipe, say, dry_run)  # checked here, before any work; served below
    models = check_models(recipe, say, remote=launch.remote, probe=not dry_run)
    with sample_web as read_from:  # with a sample web: reads its url list, and may reach its server
        plan = pipeline.prepare(read_from, not dry_run)  # input problems stop the run here, before any work
        recipe = read_from.model_copy(update={"input": recipe.input})  # recorded: the path a run writes
        say(plan.headline)
        claim = None
        if plan.units is not None and not dry_run:
            cut = plan.units.for_workers(launch.local_workers())  # a small input: one unit per local worker
            if cut is not plan.units:
                say(f"units: {cut.n_units} of {cut.rows_per_unit} rows, one per worker process (fewer rows than "
                    f"input.rows_per_unit = {plan.units.rows_per_unit} per worker)")
                plan = dataclasses.replace(plan, units=cut)
            claim = units_folder.claim(recipe.output.path, plan.units, recipe, restart, launch.recipe)  # may refuse
            if claim.plan.rows_per_unit != plan.units.rows_per_unit:
                say(f"units: resuming the cut of the run that made them, {claim.plan.rows_per_unit} rows per unit")
                plan = dataclasses.replace(plan, units=claim.plan)
            say(claim.line())
        if not dry_run:
            mark_unfinished(recipe.output.path)  # inputs are fine: from here on the folder is being rewritten
        say(launch.describe())
        p = beam.Pipeline(runner=launch.engine(), options=launch.options)
        pipeline.build(p, recipe, plan, launch.beam_options())
        if dry_run:
            return write_job_description(p, launch, recipe, models, warnings, job_file, say)
        extra = {"engine": launch.engine_name()}
        if claim is None:
            return execute(p, recipe.output.path, plan.expected_rows, extra)
        with units_folder.Watch(recipe.output.path, claim, show=progress):
            manifest = execute(p, recipe.output.path, plan.expected_rows, dict(extra, units={
                "rows_per_unit": plan.units.rows_per_unit, "count": plan.units.n_units,
                "found_done": len(claim.done)}))
        say(claim.final_line(manifest["_metrics"]))
        units_folder.finish(recipe.output.path, recipe.output.keep_units, say)
        return manifest


def run_curate(recipe, beam_args: Optional[list[str]] = None, say: Callable[[str], None] = print,
               dry_run: bool = False, job_file: Optional[str] = None, **kwargs) -> dict:
    """:func:`run` for a curate recipe."""
    return run(_expect(recipe, "curate"), beam_args, say, dry_run, job_file, **kwargs)


def run_synthesize(recipe, beam_args: Optional[list[str]] = None, say: Callable[[str], None] = print,
                   dry_run: bool = False, job_file: Optional[str] = None, **kwargs) -> dict:
    """:func:`run` for a synthesize recipe."""
    return run(_expect(recipe, "synthesize"), beam_args, say, dry_run, job_file, **kwargs)


def _expect(recipe, kind: str):
    if recipe.pipeline != kind:
        raise RecipeError(f"a {kind} run was asked for with a {recipe.pipeline} recipe")
    return recipe


def execute(pipeline: beam.Pipeline, out_dir: str, expected_inputs: int, extra: Optional[dict] = None) -> dict:
    """Run a built pipeline to completion, check it, publish its manifest (with the driver's ``extra`` fields:
    the engine that ran it, the work units); returns the manifest with the elapsed time and the Beam metrics.

    The pipeline's last stage writes a pending manifest; the run counts as done only once the driver has compared
    its own count of the input rows (``expected_inputs``, made before the pipeline) with that manifest and with
    the rows the written shards hold (:func:`unicurate.run.check.check_and_publish`).
    """
    start = time.monotonic()
    before = os.environ.get(LOCAL_DRIVER_ENV)
    os.environ[LOCAL_DRIVER_ENV] = str(os.getpid())  # local worker processes inherit it (perworker)
    result = None
    try:
        with fail_when_a_worker_dies():
            result = pipeline.run()
            result.wait_until_finish()
    except WorkerDied:
        if not has_pending_manifest(out_dir):
            raise
        # the pending manifest is written by the last stage: every stage had finished, a worker died while stopping
        log.warning("a local worker process ended badly after the run had finished; checking the output")
    finally:
        if before is None:
            os.environ.pop(LOCAL_DRIVER_ENV, None)
        else:
            os.environ[LOCAL_DRIVER_ENV] = before
    elapsed = time.monotonic() - start
    manifest = check_and_publish(out_dir, expected_inputs, result, pipeline, extra or {})
    manifest["_elapsed_seconds"] = elapsed
    manifest["_metrics"] = counters(result) if result is not None else {}
    return manifest


def check_models(recipe, say: Callable[[str], None] = print, remote: bool = False, probe: bool = True) -> list:
    """Check every model a curate or synthesize recipe needs before any input is read.

    Local runs resolve the weights here (cache, mirror, download), so workers find them in the cache.
    Remote runs (Dataflow) only check where the workers will read them (``probe``: that they exist there,
    e.g. in the gs:// mirror); nothing is downloaded to this machine. Raises ``ModelUnavailable`` naming the
    model, its URI and how to stage it. Returns [(spec, local path or worker source)].
    """
    located = zoo.recipe_worker_sources(recipe, probe) if remote else zoo.recipe_preflight(recipe)
    if not located:
        return []
    extra = f", inpainter {recipe.edits.inpainter}" if recipe.pipeline == "synthesize" else ""
    say(f"models ({recipe.models.profile} profile): " + ", ".join(
        f"{spec.name}{'' if spec.calibrated else ' [uncalibrated]'}" for spec, _ in located) + extra)
    if remote:
        for spec, where in located:
            say(f"  {spec.name}: workers read {where}")
    if any(not spec.calibrated for spec, _ in located):
        say("WARNING: the tiny profile's models have random weights: their outputs are UNCALIBRATED "
            "(fine for tests and the demo, meaningless for real data)")
    return located

