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


DATAFLOW = "DataflowRunner"


def local_workers(runner: RunnerConfig) -> int:
    return runner.direct_num_workers or (os.cpu_count() or 1)


def local_mode(runner: RunnerConfig) -> str:
    if runner.direct_running_mode != "auto":
        return runner.direct_running_mode
    return "multi_processing" if local_workers(runner) > 1 else "in_memory"


def _slug(text: str) -> str:
    """A Dataflow job name: lowercase letters, digits and dashes, starting with a letter."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out if out[:1].isalpha() else f"u-{out}"


def local_flags(runner: RunnerConfig) -> list[str]:
    # Beam's worker processes log at INFO by default; keep the terminal for progress and the funnel.
    return ["--runner=DirectRunner", "--default_sdk_harness_log_level=WARNING",
            f"--direct_num_workers={local_workers(runner)}", f"--direct_running_mode={local_mode(runner)}"]


def dataflow_flags(runner: RunnerConfig, recipe_name: str = "unicurate") -> list[str]:
    """The `dataflow` profile as Beam flags: Runner v2, the custom container, GPUs, sizing."""
    d = runner.dataflow
    job = d.job_name or _slug(f"unicurate-{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    flags = ["--runner=DataflowRunner", f"--region={d.region}", f"--job_name={job}",
             "--experiments=use_runner_v2"]
    for name in ("project", "temp_location", "staging_location", "machine_type", "num_workers", "max_num_workers",
                 "disk_size_gb", "service_account_email", "network", "subnetwork"):
        value = getattr(d, name)
        if value is not None:
            flags.append(f"--{name}={value}")
    if d.sdk_container_image:
        # the image has Beam and unicurate installed: stage neither the SDK nor a setup.py
        flags += [f"--sdk_container_image={d.sdk_container_image}", "--sdk_location=container"]
    if d.use_public_ips is not None:
        flags.append("--use_public_ips" if d.use_public_ips else "--no_use_public_ips")
    gpu = d.gpu
    if gpu is not None and gpu.placement == "all_workers":
        flags.append(f"--dataflow_service_options=worker_accelerator={gpu.accelerator()}")
    one_process = d.one_sdk_process if d.one_sdk_process is not None else gpu is not None
    if one_process:
        # one SDK process per VM: one copy of each model per GPU instead of one per vCPU
        flags.append("--experiments=no_use_multiple_sdk_containers")
    threads = d.harness_threads if d.harness_threads is not None else (4 if gpu is not None else None)
    if threads is not None:
        flags.append(f"--number_of_worker_harness_threads={threads}")
    return flags


def model_stage_hints(runner: RunnerConfig) -> dict:
    """Beam resource hints for the model transforms (right fitting onto GPU workers); {} when not asked for."""
    gpu = runner.dataflow.gpu
    if runner.profile != "dataflow" or gpu is None or gpu.placement != "model_stages":
        return {}
    hints = {"accelerator": gpu.accelerator()}
    if gpu.min_ram:
        hints["min_ram"] = gpu.min_ram
    return hints


def beam_flags(runner: RunnerConfig, extra_args: list[str], recipe_name: str = "unicurate") -> list[str]:
    """Recipe runner section as Beam flags; flags given after ``--`` come last and win."""
    flags = dataflow_flags(runner, recipe_name) if runner.profile == "dataflow" else local_flags(runner)
    for name, value in runner.options.items():
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, (list, tuple)):
            flags.extend(f"--{name}={v}" for v in value)
        else:
            flags.append(f"--{name}={value}")
    return flags + list(extra_args)


def pipeline_options(runner: RunnerConfig, extra_args: list[str], recipe_name: str = "unicurate"):
    from apache_beam.options.pipeline_options import PipelineOptions

    flags = beam_flags(runner, extra_args, recipe_name)
    options = PipelineOptions(flags)
    unknown = [a for a in extra_args if a.startswith("--") and not _known(options, a)]
    if unknown:
        raise RecipeError(f"unknown Beam option(s) after '--': {' '.join(unknown)}")
    return options


def runner_name(options) -> str:
    """The Beam runner the options select, normalised (``dataflow`` -> ``DataflowRunner``)."""
    name = str(options.get_all_options().get("runner") or "DirectRunner")
    base = name.rsplit(".", 1)[-1]
    if not base.lower().endswith("runner"):
        base += "Runner"
    return DATAFLOW if base.lower() == "dataflowrunner" else base


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


def sample_web_for(recipe: CurateRecipe, say: Callable[[str], None], dry_run: bool = False):
    """The recipe's sample web (demo recipes only), checked now and served while the returned context is open.

    Call it before any work: it refuses a sample web whose url list would go anywhere but
    ``OUTPUT/input/urls.parquet`` (a recipe's own ``input.path`` is never written over) and a remote output.
    Entered, it serves the sample web on 127.0.0.1, writes its url list there and yields the recipe to read the
    input from. A dry run writes it to a temporary folder instead (removed when the context closes), so that
    the job is built from it and nothing but the job file is written.
    """
    if recipe.sample_web is None:
        return contextlib.nullcontext(recipe)
    sw = recipe.sample_web
    if is_remote(recipe.output.path):
        raise RecipeError(f"sample_web writes its url list into output.path and serves the demo on this machine: "
                          f"output.path must be a local folder, not {recipe.output.path}")
    url_list = sw.url_list(recipe.output.path)
    if [os.path.normpath(p) for p in recipe.input.paths] != [os.path.normpath(url_list)]:
        given = ", ".join(recipe.input.paths)
        raise RecipeError(f"sample_web writes its url list to {url_list} (inside output.path), so a recipe with "
                          f"sample_web has no input.path of its own; this one names {given}, which is never "
                          f"written over. Remove input.path from the recipe, or curate {given} with "
                          f"`unicurate run RECIPE --input {given}` (no sample web then) or without sample_web")

    @contextlib.contextmanager
    def serve():
        import tempfile

        from unicurate.sampleweb import SampleWeb

        web = SampleWeb(n_images=sw.images, seed=sw.seed, slow_seconds=sw.slow_seconds)
        # the SSRF guard stays on; only the sample web's own loopback address is let through (a recipe needs no
        # allow_private_networks for it, so the same recipe run with --input on web data keeps the guard whole)
        dl = recipe.download
        served = recipe.model_copy(update={"download": dl.model_copy(update={
            "allowed_networks": list(dl.allowed_networks) + [SampleWeb.NETWORK]})})
        with web.start(port=sw.port), contextlib.ExitStack() as stack:
            if dry_run:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="unicurate-dry-run-"))
                path = web.write_input(Path(tmp) / Path(url_list).name)
                read_from = served.model_copy(update={"input": served.input.model_copy(update={"path": str(path)})})
                say(f"sample web (dry run): {len(web.cases)} urls; the job reads its url list from {path} "
                    f"(removed after the dry run); a run writes it to {url_list}")
            else:
                mark_unfinished(recipe.output.path)  # an earlier run's manifest must not describe another list
                path = web.write_input(url_list)
                read_from = served
                say(f"sample web: {len(web.cases)} urls served on {web.base_url}, url list in {path}")
            yield read_from

    return serve()


# ------------------------------------------------------------------ where the pipeline runs
class Launch:
    """The options a recipe runs with, where that is, and what is wrong with running it there."""

    def __init__(self, recipe, beam_args: Optional[list[str]], dry_run: bool):
        self.dry_run = dry_run
        args = list(beam_args or [])
        self.options = pipeline_options(recipe.runner, args, recipe.name)
        self.runner = runner_name(self.options)
        self.remote = self.runner == DATAFLOW
        if self.remote and recipe.runner.profile != "dataflow":
            # `-- --runner DataflowRunner` selects the dataflow profile (Runner v2, container, GPU settings)
            recipe = recipe.model_copy(update={"runner": recipe.runner.model_copy(update={"profile": "dataflow"})})
            self.options = pipeline_options(recipe.runner, args, recipe.name)
        self.recipe = recipe
        if self.remote and dry_run:
            from apache_beam.options.pipeline_options import PipelineOptions

            # DataflowRunner builds the job (graph, environments, options) and returns without submitting
            self.options = PipelineOptions(beam_flags(recipe.runner, args + ["--dry_run=True"], recipe.name))
        self.opts = self.options.get_all_options(drop_default=True, retain_unknown_options=True)
        self.missing = self._missing()
        self.problems = self._problems(recipe)

    def _missing(self) -> list[str]:
        """Options Dataflow cannot build a job without (errors, dry run or not)."""
        if not self.remote:
            return []
        if not _has_dataflow():
            raise RecipeError("the Dataflow runner needs Beam's GCP extras: pip install 'unicurate[gcp]' "
                              "(apache-beam[gcp])")
        out = []
        all_opts = self.options.get_all_options()
        for opt, field in (("project", "project"), ("region", "region"), ("temp_location", "temp_location"),
                           ("sdk_container_image", "sdk_container_image")):
            if not all_opts.get(opt) and not (opt == "temp_location" and all_opts.get("staging_location")):
                why = (" (the worker image from docker/Dockerfile: Beam, torch and unicurate installed)"
                       if opt == "sdk_container_image" else "")
                out.append(f"Dataflow needs runner.dataflow.{field} (or --{opt} after '--'){why}")
        for opt in ("temp_location", "staging_location"):
            value = all_opts.get(opt)
            if value and not str(value).startswith("gs://"):
                out.append(f"--{opt} {value}: Dataflow needs a gs:// folder")
        return out

    def _problems(self, recipe) -> list[str]:
        """What would fail on Dataflow workers: errors for a real run, warnings in a dry run."""
        if not self.remote:
            return []
        out = []
        paths = [("input.path", p) for p in recipe.input.paths] if hasattr(recipe.input, "paths") else [
            ("input.path", recipe.input.path)]
        paths.append(("output.path", recipe.output.path))
        for field, path in paths:
            if not is_remote(path):
                out.append(f"{field} {path} is on this machine, but Dataflow workers cannot read it: "
                           "use a gs:// path")
        if getattr(recipe, "sample_web", None) is not None:
            out.append("sample_web serves a demo web on this machine (127.0.0.1): Dataflow workers cannot reach it; "
                       "remove the sample_web section")
        return out

    def check(self, say: Callable[[str], None]) -> list[str]:
        """Problems stop a real submission before anything starts; a dry run lists them as warnings."""
        if self.missing:
            raise RecipeError("cannot build the Dataflow job: " + "; ".join(self.missing))
        if self.problems and not self.dry_run:
            raise RecipeError("cannot run on Dataflow: " + "; ".join(self.problems))
        for msg in self.problems:
            say(f"WARNING (dry run): {msg}")
        return list(self.problems)

    def describe(self) -> str:
        if self.remote:
            o = self.options.get_all_options()
            gpu = [s for s in o.get("dataflow_service_options") or [] if s.startswith("worker_accelerator=")]
            return (f"runner: DataflowRunner, project {o.get('project')}, region {o.get('region')}, "
                    f"image {o.get('sdk_container_image')}, machine {o.get('machine_type') or 'default'}"
                    + (f", {gpu[0]}" if gpu else "")
                    + (", dry run (nothing is submitted)" if self.dry_run else ""))
        return (f"runner: {self.opts.get('runner', 'DirectRunner')}, workers: {self.opts.get('direct_num_workers', 1)}, "
                f"mode: {self.opts.get('direct_running_mode', 'in_memory')}"
                + (", dry run (nothing runs)" if self.dry_run else ""))

    def beam_options(self) -> dict:
        return {k: v for k, v in self.opts.items() if _jsonable(v)}


def _has_dataflow() -> bool:
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in (
            "apache_beam.runners.dataflow.dataflow_runner", "apache_beam.io.gcp.gcsfilesystem", "google.cloud.storage"))
    except ImportError:
        return False


def run_curate(recipe: CurateRecipe, beam_args: Optional[list[str]] = None,
               say: Callable[[str], None] = print, dry_run: bool = False, job_file: Optional[str] = None) -> dict:
    """Run the curate pipeline to completion; returns the manifest (with ``dry_run``: the job description)."""
    import apache_beam as beam

    from unicurate.pipelines import curate

    recipe = _absolutise(recipe)
    launch = Launch(recipe, beam_args, dry_run)
    recipe = launch.recipe
    warnings = launch.check(say)
    sample_web = sample_web_for(recipe, say, dry_run)  # checked here, before any work; served below
    models = check_models(recipe, say, remote=launch.remote, probe=not dry_run)
    with sample_web as read_from:  # with a sample web: reads its url list, and may reach its server
        splits = curate.prepare(read_from)  # input problems stop the run here, before any work
        recipe = read_from.model_copy(update={"input": recipe.input})  # recorded: the path a run writes
        n_files = len({s.file.path for s in splits})
        n_inputs = None if dry_run else curate.count_inputs(splits)  # the run's reference, checked at the end
        if not dry_run:
            mark_unfinished(recipe.output.path)  # inputs are fine: from here on the folder is being rewritten
        say(f"curate: {n_files} input file(s), {len(splits)} split(s)"
            + (f", {n_inputs} rows" if n_inputs is not None else "") + f" -> {recipe.output.path}")
        say(launch.describe())
        pipeline = beam.Pipeline(options=launch.options)
        curate.build(pipeline, recipe, splits, beam_options=launch.beam_options())
        if dry_run:
            return write_job_description(pipeline, launch, recipe, models, warnings, job_file, say)
        return _execute(pipeline, recipe.output.path, n_inputs)


def run_synthesize(recipe, beam_args: Optional[list[str]] = None, say: Callable[[str], None] = print,
                   dry_run: bool = False, job_file: Optional[str] = None) -> dict:
    """Run the synthesize pipeline to completion; returns the manifest (with ``dry_run``: the job description)."""
    import apache_beam as beam

    from unicurate.pipelines import synthesize as syn

    recipe = _absolutise(recipe)
    launch = Launch(recipe, beam_args, dry_run)
    recipe = launch.recipe
    warnings = launch.check(say)
    models = check_models(recipe, say, remote=launch.remote, probe=not dry_run)
    cur, paths, keys = syn.prepare(recipe)  # input problems stop the run here too
    if not dry_run:
        mark_unfinished(recipe.output.path)
    n_inputs = len(keys) if keys is not None else sum(
        s["rows"] for s in cur["shards"][KEPT] if s.get("rows"))
    say(f"synthesize: {n_inputs} kept image(s) in {len(paths)} shard(s) of {recipe.input.path} -> "
        f"{recipe.output.path}")
    say(launch.describe())
    source = {"path": recipe.input.path, "recipe_hash": cur.get("recipe_hash"), "kept": cur["counts"]["kept"],
              "uncalibrated": bool(cur.get("uncalibrated"))}
    pipeline = beam.Pipeline(options=launch.options)
    syn.build(pipeline, recipe, paths, keys, n_inputs, launch.beam_options(), source)
    if dry_run:
        return write_job_description(pipeline, launch, recipe, models, warnings, job_file, say)
    return _execute(pipeline, recipe.output.path, n_inputs)


def _execute(pipeline, out_dir: str, expected_inputs: int) -> dict:
    """Run a built pipeline to completion, check it, publish its manifest; returns the manifest with the elapsed
    time and the Beam metrics.

    The pipeline's last stage writes a pending manifest; the run counts as done only once the driver has compared
    its own count of the input rows (``expected_inputs``, made before the pipeline) with that manifest and with
    the rows the written shards hold. A difference raises :class:`RunCheckFailed`: no manifest is published, so
    the folder reads as unfinished, and the numbers go to ``OUT/run-check-failed.json`` (``manifest.CHECK_REPORT_NAME``).
    """
    from unicurate.manifests import manifest as mf
    from unicurate.manifests.validate import check_run
    from unicurate.pipelines.perworker import LOCAL_DRIVER_ENV

    start = time.monotonic()
    before = os.environ.get(LOCAL_DRIVER_ENV)
    os.environ[LOCAL_DRIVER_ENV] = str(os.getpid())  # local worker processes inherit it (perworker)
    result = None
    try:
        with fail_when_a_worker_dies():
            result = pipeline.run()
            result.wait_until_finish()
    except WorkerDied:
        if not _has_pending_manifest(out_dir):
            raise
        # the pending manifest is written by the last stage: every stage had finished, a worker died while stopping
        log.warning("a local worker process ended badly after the run had finished; checking the output")
    finally:
        if before is None:
            os.environ.pop(LOCAL_DRIVER_ENV, None)
        else:
            os.environ[LOCAL_DRIVER_ENV] = before
    elapsed = time.monotonic() - start
    try:
        manifest = mf.read_manifest(out_dir, mf.PENDING_MANIFEST_NAME)
    except FileNotFoundError:
        raise RunCheckFailed(f"the pipeline ended without writing its manifest to {out_dir}: the run is incomplete; "
                             "rerun the same command") from None
    problems = check_run(out_dir, manifest, expected_inputs)
    if problems:
        _fail_check(out_dir, expected_inputs, manifest, problems, element_counts(result, pipeline))
    mf.publish_manifest(out_dir, manifest)
    manifest["_elapsed_seconds"] = elapsed
    manifest["_metrics"] = counters(result) if result is not None else {}
    return manifest


class RunCheckFailed(RuntimeError):
    """A finished pipeline's output does not hold every input row exactly once: the run is not declared done."""


def element_counts(result, pipeline) -> dict[str, int]:
    """Elements of each PCollection as the workers counted them, named by the transform that produced it
    (``ReadRows``, ``DownloadDecodeFilter``, ``RowsByShard``, ...): where rows went missing when a run's check
    fails. Beam's local runner reports them per PCollection (the public metrics query drops that label);
    {} where the runner does not."""
    from apache_beam.metrics import monitoring_infos as mi

    by_stage = getattr(result, "_monitoring_infos_by_stage", None) or {}
    try:
        names = {}
        for t in pipeline.to_runner_api().components.transforms.values():
            if not t.subtransforms:  # leaves: a composite's outputs are its last leaf's
                for tag, pid in t.outputs.items():
                    names[pid] = t.unique_name if tag in ("None", "out") or len(t.outputs) == 1 \
                        else f"{t.unique_name}[{tag}]"
    except Exception:  # noqa: BLE001 - diagnostics only
        return {}
    out: dict[str, int] = {}
    for stage, infos in by_stage.items():
        if not stage:
            continue  # '' holds the pipeline-wide metrics, not a stage's
        for info in infos:
            pid = info.labels.get("PCOLLECTION") if info.urn == mi.ELEMENT_COUNT_URN else None
            if pid is not None:
                name = names.get(pid, pid)
                out[name] = out.get(name, 0) + int(mi.extract_counter_value(info))
    return dict(sorted(out.items()))


def _fail_check(out_dir: str, expected_inputs: int, manifest: dict, problems: list[str],
                counts_by_pcollection: dict[str, int]) -> None:
    from unicurate.manifests import manifest as mf

    report = mf.join(out_dir, mf.CHECK_REPORT_NAME)
    mf.write_json_atomic(report, {"expected_inputs": expected_inputs, "problems": problems,
                                  "counts": manifest.get("counts"),
                                  "elements_per_pcollection": counts_by_pcollection,
                                  "pipeline_manifest": manifest})
    mf.delete_if_exists(mf.join(out_dir, mf.PENDING_MANIFEST_NAME))
    raise RunCheckFailed(
        f"the run's output does not account for every input row, so it is not declared done (no manifest written; "
        f"details in {report}):\n  " + "\n  ".join(problems)
        + "\nThis is a bug in unicurate or the runner; please report it with that file. Rerunning the same command "
          "rewrites the output.")


def mark_unfinished(out_dir: str) -> None:
    """Before a run writes anything into ``out_dir``: no manifest (published or pending) and no check report of
    an earlier run stays, so a run that does not finish leaves a folder that reads as unfinished."""
    from unicurate.manifests import manifest as mf

    mf.remove_manifest(out_dir)
    mf.delete_if_exists(mf.join(out_dir, mf.CHECK_REPORT_NAME))


def _has_pending_manifest(out_dir: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    from unicurate.manifests import manifest as mf

    return FileSystems.exists(mf.join(out_dir, mf.PENDING_MANIFEST_NAME))


def stop_local_workers() -> list[int]:
    """SIGKILL this process's DirectRunner worker processes (``sh -c ... sdk_worker_main`` children and the
    Python workers under them); the pids ended."""
    import signal

    ended = []
    from unicurate.pipelines.procs import children, cmdline

    for shell in children(os.getpid()):
        if "sdk_worker_main" not in cmdline(shell):
            continue
        for pid in children(shell) + [shell]:
            try:
                os.kill(pid, signal.SIGKILL)
                ended.append(pid)
            except OSError:
                pass
    return ended


class WorkerDied(RuntimeError):
    """A local Beam worker process died (killed, out of memory): the DirectRunner cannot finish the run."""


@contextlib.contextmanager
def fail_when_a_worker_dies():
    """Local multi-process runs: end the run promptly, with a clear error, when a worker process dies.

    The DirectRunner starts each worker as ``sh -c python -m ...sdk_worker_main`` and watches the shell from a
    thread (``run_worker``), which raises "Worker subprocess exited with return code N" when the worker dies,
    and nothing else happens: a worker killed in the middle of a bundle fails the run only once the other
    workers' bundles end ("Channel closed prematurely"), and one killed before it opened its data stream makes
    the runner wait for it forever. Here that thread's error interrupts the driver's main thread (a signal, so
    it also wakes the runner's blocking waits) with :class:`WorkerDied`. Only in the main thread (signals);
    elsewhere, and for runners without local worker processes, this does nothing.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield
        return
    died: list[str] = []
    raised: list[bool] = []
    previous_hook = threading.excepthook

    def hook(args):
        text = str(args.exc_value)
        if args.thread is not None and args.thread.name == "run_worker" and "Worker subprocess exited" in text:
            if raised:
                return  # one of the workers ended below
            code = text.rsplit(" ", 1)[-1]
            if code.isdigit():  # N > 0: the worker exited or was killed (-N: only the wrapping shell was)
                died.append(code)
                os.kill(os.getpid(), signal.SIGUSR1)
                return
        if (args.thread is not None and args.thread.name in ("read_grpc_client_inputs", "beam_control_read")
                and type(args.exc_value).__name__ == "RpcError"):
            # the gRPC streams of a worker that went away: its death is reported above, once and clearly
            log.debug("worker stream ended in thread %s", args.thread.name,
                      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
            return
        previous_hook(args)

    def on_signal(signum, frame):
        if died and not raised:
            raised.append(True)
            # the runner's cleanup waits for every worker to exit, and the others wait for work that will not
            # come: end them (processes this run started) so that the error can reach the caller
            stop_local_workers()
            code = int(died[0])
            how = f"exit status {code}"
            if code > 128:  # the shell's way of saying "killed by signal code - 128"
                try:
                    how = f"killed by {signal.Signals(code - 128).name}"
                except ValueError:
                    how = f"killed by signal {code - 128}"
                if code - 128 == signal.SIGKILL:
                    how += ": kill -9, or the out-of-memory killer"
            raise WorkerDied(f"a local Beam worker process died ({how}); the DirectRunner cannot finish a run "
                             f"without it")

    previous_signal = signal.signal(signal.SIGUSR1, on_signal)
    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous_hook
        signal.signal(signal.SIGUSR1, previous_signal)


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
    times = stage_times(met)
    if times:
        lines.append(times)
    c = manifest["counts"]
    lines.append("")
    lines.append(f"{c['inputs']} input images -> {c['images']} image rows; {c['subject']} subject samples, "
                 f"{c['edit']} edit triplets, {c['rejected']} rejected candidates")
    return "\n".join(lines)


def check_models(recipe, say: Callable[[str], None] = print, remote: bool = False, probe: bool = True) -> list:
    """Check every model a curate or synthesize recipe needs before any input is read.

    Local runs resolve the weights here (cache, mirror, download), so workers find them in the cache.
    Remote runs (Dataflow) only check where the workers will read them (``probe``: that they exist there,
    e.g. in the gs:// mirror); nothing is downloaded to this machine. Raises ``ModelUnavailable`` naming the
    model, its URI and how to stage it. Returns [(spec, local path or worker source)].
    """
    from unicurate.models import zoo

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


MODEL_STAGES = ("ScoreWithModels", "Synthesize")  # the transforms that run models (GPU workers on Dataflow)


def write_job_description(pipeline, launch: Launch, recipe, models: list, warnings: list[str],
                          job_file: Optional[str], say: Callable[[str], None]) -> dict:
    """Dry run: the job as the runner would submit it, written to ``job_file`` (JSON); returns it.

    DataflowRunner with ``--dry_run=True`` builds the Dataflow job (Runner API graph with environments and
    resource hints, final options) without contacting Google Cloud; other runners write the Runner API graph.
    """
    from google.protobuf import json_format

    from unicurate import __version__
    from unicurate.manifests import manifest as mf

    if launch.remote:
        result = pipeline.run()
        job = result.job
        proto = job.proto_pipeline
        final = job.options.get_all_options(drop_default=True, retain_unknown_options=True)
    else:
        proto = pipeline.to_runner_api()
        final = launch.opts
    graph = json_format.MessageToDict(proto)
    comps = graph.get("components", {})
    envs = {eid: _environment(e) for eid, e in comps.get("environments", {}).items()}
    transforms = []
    for t in comps.get("transforms", {}).values():
        if t.get("subtransforms"):
            continue  # composites: their leaves are listed
        env = t.get("environmentId")
        transforms.append({"name": t.get("uniqueName"), "urn": (t.get("spec") or {}).get("urn"),
                           "environment": env,
                           "resource_hints": (envs.get(env) or {}).get("resource_hints", {}) if env else {}})
    transforms.sort(key=lambda t: t["name"] or "")
    model_stages = [t for t in transforms if (t["name"] or "").split("/")[0] in MODEL_STAGES
                    and t["urn"] == "beam:transform:pardo:v1"]
    service = [str(s) for s in final.get("dataflow_service_options") or []]
    images = sorted({e["container_image"] for e in envs.values() if e.get("container_image")})
    desc = {
        "job_description_version": 1,
        "unicurate_version": __version__,
        "dry_run": True,
        "pipeline": recipe.pipeline,
        "recipe_name": recipe.name,
        "recipe_hash": recipe.recipe_hash(),
        "runner": launch.runner,
        "job_name": final.get("job_name"),
        "container_image": final.get("sdk_container_image") or (images[0] if images else None),
        "environment_images": images,
        "accelerator": {
            "service_options": [s for s in service if s.startswith("worker_accelerator=")],
            "model_stage_hints": model_stage_hints(recipe.runner),
        },
        "model_stages": model_stages,
        "models": [{"name": spec.name, "uri": spec.uri, "calibrated": spec.calibrated,
                    "workers_read" if launch.remote else "local_path": str(where) if where is not None else None}
                   for spec, where in models],
        "warnings": warnings,
        "options": {k: v for k, v in sorted(final.items()) if _jsonable(v)},
        "environments": envs,
        "transforms": transforms,
        "recipe": recipe.resolved(),
        "proto_pipeline": graph,
    }
    path = job_file or default_job_file(recipe.output.path, recipe.name)
    mf.write_json_atomic(path, desc)
    say(f"dry run: {len(transforms)} transforms, model stages: "
        f"{', '.join(t['name'] for t in model_stages) or 'none'}; image: {desc['container_image'] or 'default'}; "
        f"accelerator: {'; '.join(desc['accelerator']['service_options']) or desc['accelerator']['model_stage_hints'] or 'none'}")
    say(f"job description written to {path}; nothing was submitted or run")
    desc["_path"] = path
    return desc


def default_job_file(output_path: str, name: str) -> str:
    """Next to a local output folder (OUT.job.json); in the current folder when the output is remote."""
    if is_remote(output_path):
        base = output_path.rstrip("/").rsplit("/", 1)[-1] or name
        return str(Path.cwd() / f"{base}.job.json")
    return str(Path(output_path).with_name(Path(output_path).name + ".job.json"))


def _environment(env: dict) -> dict:
    """A Runner API environment, readable: its container image and decoded resource hints."""
    import base64

    out = {"urn": env.get("urn")}
    payload = env.get("payload")
    if env.get("urn") == "beam:env:docker:v1" and payload:
        from apache_beam.portability.api import beam_runner_api_pb2

        out["container_image"] = beam_runner_api_pb2.DockerPayload.FromString(base64.b64decode(payload)).container_image
    hints = {}
    for urn, value in (env.get("resourceHints") or {}).items():
        raw = base64.b64decode(value)
        hints[urn] = raw.decode("utf-8", "replace")
    out["resource_hints"] = hints
    return out


def _uncalibrated_line(manifest: dict, what: str) -> list[str]:
    if not manifest.get("uncalibrated"):
        return []
    names = ", ".join(m["name"] for m in manifest.get("models", []) if not m.get("calibrated"))
    return [f"WARNING: UNCALIBRATED {what}: {names} have tiny random weights (tests/demo only)"]


def counters(result) -> dict:
    """unicurate's Beam counters (model loads, batches, ...) summed over workers, and the wall-clock span of
    the fetch/model/synthesize stages (``fetch_seconds``, ...); {} when unavailable."""
    try:
        from apache_beam.metrics.metric import MetricsFilter

        res = result.metrics().query(MetricsFilter().with_namespace("unicurate"))
        out: dict = {}
        for c in res.get("counters", []):
            val = c.committed if c.committed is not None else c.attempted
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (val or 0)
        spans: dict[str, list] = {}
        for d in res.get("distributions", []):
            name = d.key.metric.name
            val = d.committed if d.committed is not None else d.attempted
            if name.endswith("_span_ms") and val is not None and val.count:
                lo, hi = spans.get(name, [val.min, val.max])
                spans[name] = [min(lo, val.min), max(hi, val.max)]
        for name, (lo, hi) in spans.items():
            out[name[: -len("_span_ms")] + "_seconds"] = round((hi - lo) / 1000.0, 3)
        return out
    except Exception:  # noqa: BLE001 - metrics are informative only
        return {}


STAGE_LABELS = {"read": "read inputs", "fetch": "download+decode+rules", "model": "model scoring",
                "synthesize": "synthesis", "write": "write shards"}


def stage_times(metrics: dict) -> str:
    """'stage wall time: download+decode+rules 4.61 s, ...' (first start to last end over all workers)."""
    parts = [f"{label} {metrics[f'{k}_seconds']:.2f} s" for k, label in STAGE_LABELS.items()
             if metrics.get(f"{k}_seconds") is not None]
    return f"  (stage wall time, first batch start to last batch end over all workers: {', '.join(parts)})" \
        if parts else ""


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
    times = stage_times(met)
    if times:
        lines.append(times)
    c = manifest["counts"]
    lines.append("")
    lines.append(f"kept {c['kept']} + rejected {c['rejected']} = {c['kept'] + c['rejected']} of {c['inputs']} inputs")
    return "\n".join(lines)
