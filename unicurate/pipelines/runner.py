"""Running a recipe on a Beam runner: options, preflight, the run, the funnel."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

from unicurate.config import CurateRecipe, RecipeError, RunnerConfig
from unicurate.schema import KEPT

log = logging.getLogger("unicurate")


def is_remote(path: str) -> bool:
    return "://" in path


def beam_flags(runner: RunnerConfig, extra_args: list[str]) -> list[str]:
    """Recipe runner section as Beam flags; flags given after ``--`` come last and win."""
    # Beam's worker processes log at INFO by default; keep the terminal for progress and the funnel.
    flags = ["--runner=DirectRunner", "--default_sdk_harness_log_level=WARNING"]
    workers = runner.direct_num_workers or (os.cpu_count() or 1)
    flags.append(f"--direct_num_workers={workers}")
    flags.append(f"--direct_running_mode={runner.direct_running_mode}")
    for name, value in runner.options.items():
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, (list, tuple)):
            flags.extend(f"--{name}={v}" for v in value)
        else:
            flags.append(f"--{name}={value}")
    return flags + list(extra_args)


def pipeline_options(runner: RunnerConfig, extra_args: list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    flags = beam_flags(runner, extra_args)
    options = PipelineOptions(flags)
    unknown = [a for a in extra_args if a.startswith("--") and not _known(options, a)]
    if unknown:
        raise RecipeError(f"unknown Beam option(s) after '--': {' '.join(unknown)}")
    return options


def _known(options, arg: str) -> bool:
    name = arg[2:].split("=", 1)[0]
    all_opts = options.get_all_options(retain_unknown_options=False)
    return name in all_opts or (name.startswith("no") and name[2:] in all_opts)


def _absolute(path: str) -> str:
    return path if is_remote(path) else str(Path(path).expanduser().absolute())


def _absolutise(recipe):
    """Local input and output paths become absolute so worker processes agree with the driver."""
    inp = recipe.input
    path = inp.path if isinstance(inp.path, str) else None
    new_in = _absolute(path) if path is not None else [_absolute(p) for p in inp.path]
    return recipe.model_copy(update={
        "input": inp.model_copy(update={"path": new_in}),
        "output": recipe.output.model_copy(update={"path": _absolute(recipe.output.path)}),
    })


@contextlib.contextmanager
def sample_web_for(recipe: CurateRecipe, say: Callable[[str], None]):
    """Serve the recipe's sample web (demo recipes only) and write its url list to input.path."""
    if recipe.sample_web is None:
        yield
        return
    from unicurate.sampleweb import SampleWeb

    sw = recipe.sample_web
    if len(recipe.input.paths) != 1 or is_remote(recipe.input.paths[0]):
        raise RecipeError("sample_web needs input.path to be one local file (the url list it writes)")
    web = SampleWeb(n_images=sw.images, seed=sw.seed, slow_seconds=sw.slow_seconds)
    with web.start(port=sw.port):
        path = web.write_input(recipe.input.paths[0])
        say(f"sample web: {len(web.cases)} urls served on {web.base_url}, url list in {path}")
        yield web


def run_curate(recipe: CurateRecipe, beam_args: Optional[list[str]] = None,
               say: Callable[[str], None] = print) -> dict:
    """Run the curate pipeline to completion; returns the manifest."""
    import apache_beam as beam

    from unicurate.manifests import manifest as mf
    from unicurate.pipelines import curate

    recipe = _absolutise(recipe)
    options = pipeline_options(recipe.runner, beam_args or [])
    opts = options.get_all_options(drop_default=True, retain_unknown_options=True)
    check_models(recipe, say)  # missing weights stop the run here, before any input is read
    with sample_web_for(recipe, say):
        splits = curate.prepare(recipe)  # input problems stop the run here, before any work
        n_files = len({s.file.path for s in splits})
        say(f"curate: {n_files} input file(s), {len(splits)} split(s) -> {recipe.output.path}")
        say(f"runner: {opts.get('runner', 'DirectRunner')}, workers: {opts.get('direct_num_workers', 1)}, "
            f"mode: {opts.get('direct_running_mode', 'in_memory')}")
        mf.remove_manifest(recipe.output.path)
        start = time.monotonic()
        pipeline = beam.Pipeline(options=options)
        curate.build(pipeline, recipe, splits, beam_options={k: v for k, v in opts.items() if _jsonable(v)})
        result = pipeline.run()
        result.wait_until_finish()
        elapsed = time.monotonic() - start
    manifest = mf.read_manifest(recipe.output.path)
    manifest["_elapsed_seconds"] = elapsed
    manifest["_metrics"] = counters(result)
    return manifest


def run_synthesize(recipe, beam_args: Optional[list[str]] = None, say: Callable[[str], None] = print) -> dict:
    """Run the synthesize pipeline to completion; returns the manifest."""
    import apache_beam as beam

    from unicurate.manifests import manifest as mf
    from unicurate.pipelines import synthesize as syn

    recipe = _absolutise(recipe)
    options = pipeline_options(recipe.runner, beam_args or [])
    opts = options.get_all_options(drop_default=True, retain_unknown_options=True)
    check_models(recipe, say)  # missing weights stop the run here, before any input is read
    cur, paths, keys = syn.prepare(recipe)  # input problems stop the run here too
    n_inputs = len(keys) if keys is not None else sum(
        s["rows"] for s in cur["shards"][KEPT] if s.get("rows"))
    say(f"synthesize: {n_inputs} kept image(s) in {len(paths)} shard(s) of {recipe.input.path} -> "
        f"{recipe.output.path}")
    say(f"runner: {opts.get('runner', 'DirectRunner')}, workers: {opts.get('direct_num_workers', 1)}, "
        f"mode: {opts.get('direct_running_mode', 'in_memory')}")
    mf.remove_manifest(recipe.output.path)
    source = {"path": recipe.input.path, "recipe_hash": cur.get("recipe_hash"), "kept": cur["counts"]["kept"],
              "uncalibrated": bool(cur.get("uncalibrated"))}
    start = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    syn.build(pipeline, recipe, paths, keys, n_inputs, {k: v for k, v in opts.items() if _jsonable(v)}, source)
    result = pipeline.run()
    result.wait_until_finish()
    manifest = mf.read_manifest(recipe.output.path)
    manifest["_elapsed_seconds"] = time.monotonic() - start
    manifest["_metrics"] = counters(result)
    return manifest


def format_synthesis_funnel(manifest: dict) -> str:
    """Images by outcome, objects, subjects and edits per type with their reject reasons."""
    f = manifest["funnel"]
    lines = _uncalibrated_line(manifest, "models")
    lines.append(f"images: {f['images']} in: " + ", ".join(f"{k} {v}" for k, v in f["image_status"].items()))
    o = f["objects"]
    lines.append(f"objects: {o['detected']} detected, {o['accepted']} passed the mask checks, "
                 f"{o['rejected']} rejected")
    for code, n in o["reasons"].items():
        lines.append(f"  {code:<22}{n:>8}")
    lines.append(f"subject samples: {f['subjects']}")
    lines.append("")
    lines.append(f"{'edit type':<12}{'written':>9}{'rejected':>10}  reasons")
    for t, e in f["edits"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in e["reasons"].items())
        lines.append(f"{t:<12}{e['written']:>9}{e['rejected']:>10}  {reasons}")
    met = manifest.get("_metrics") or {}
    if met.get("model_loads"):
        lines.append(f"(models loaded {met['model_loads']} time(s), once per worker process; "
                     f"{met.get('model_batches', 0)} batches)")
    c = manifest["counts"]
    lines.append("")
    lines.append(f"{c['inputs']} input images -> {c['images']} image rows; {c['subject']} subject samples, "
                 f"{c['edit']} edit triplets, {c['rejected']} rejected candidates")
    return "\n".join(lines)


def check_models(recipe, say: Callable[[str], None] = print) -> list:
    """Resolve every model a curate or synthesize recipe needs (cache, mirror, download) before any input
    is read. Raises ``ModelUnavailable`` naming the model, its URI and how to stage it."""
    from unicurate.models import zoo

    located = zoo.recipe_preflight(recipe)
    if not located:
        return []
    extra = f", inpainter {recipe.edits.inpainter}" if recipe.pipeline == "synthesize" else ""
    say(f"models ({recipe.models.profile} profile): " + ", ".join(
        f"{spec.name}{'' if spec.calibrated else ' [uncalibrated]'}" for spec, _ in located) + extra)
    if any(not spec.calibrated for spec, _ in located):
        say("WARNING: the tiny profile's models have random weights: their outputs are UNCALIBRATED "
            "(fine for tests and the demo, meaningless for real data)")
    return located


def _uncalibrated_line(manifest: dict, what: str) -> list[str]:
    if not manifest.get("uncalibrated"):
        return []
    names = ", ".join(m["name"] for m in manifest.get("models", []) if not m.get("calibrated"))
    return [f"WARNING: UNCALIBRATED {what}: {names} have tiny random weights (tests/demo only)"]


def counters(result) -> dict:
    """unicurate's Beam counters (model loads, batches, ...), summed over workers; {} when unavailable."""
    try:
        from apache_beam.metrics.metric import MetricsFilter

        res = result.metrics().query(MetricsFilter().with_namespace("unicurate"))
        out: dict = {}
        for c in res.get("counters", []):
            val = c.committed if c.committed is not None else c.attempted
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (val or 0)
        return out
    except Exception:  # noqa: BLE001 - metrics are informative only
        return {}


def _jsonable(v) -> bool:
    return isinstance(v, (str, int, float, bool, list, type(None)))


def format_funnel(manifest: dict) -> str:
    """The funnel as a text table: stages with counts and percentages, then reasons."""
    funnel = manifest["funnel"]
    total = max(1, funnel["inputs"])
    lines = _uncalibrated_line(manifest, "scores")
    width = max(len(s["label"]) for s in funnel["stages"]) + 2
    lines.append(f"{'stage':<{width}}{'rows':>8}{'%':>8}")
    lines.append(f"{'inputs':<{width}}{funnel['inputs']:>8}{100.0:>7.1f}%")
    for s in funnel["stages"]:
        lines.append(f"{s['label']:<{width}}{s['rows']:>8}{100.0 * s['rows'] / total:>7.1f}%")
    if funnel["reasons"]:
        lines.append("")
        lines.append("reject reasons (a row can have several):")
        for code, n in funnel["reasons"].items():
            lines.append(f"  {code:<22}{n:>8}")
    filters = manifest.get("model_filters") or []
    if filters:
        from unicurate.filters.scoring import FILTER_REASONS

        lines.append("")
        lines.append("model filters (rows rejected by each; a row can fail several):")
        for name in filters:
            n = sum(funnel["reasons"].get(code, 0) for code in FILTER_REASONS.get(name, ()))
            lines.append(f"  {name:<22}{n:>8}")
        if manifest.get("clip_score_cutoff") is not None:
            lines.append(f"  (clip_score keep_top_fraction cutoff: {manifest['clip_score_cutoff']:.4f})")
    met = manifest.get("_metrics") or {}
    if met.get("model_loads"):
        lines.append(f"  (models loaded {met['model_loads']} time(s), once per worker process; "
                     f"{met.get('model_batches', 0)} batches, {met.get('model_rows', 0)} rows scored, "
                     f"{met.get('score_errors', 0)} score errors)")
    c = manifest["counts"]
    lines.append("")
    lines.append(f"kept {c['kept']} + rejected {c['rejected']} = {c['kept'] + c['rejected']} of {c['inputs']} inputs")
    return "\n".join(lines)
