"""Where a recipe runs: its runner section as Beam flags, the checks that stop a run the runner could not do
(Dataflow needs gs:// paths, a project, a worker image), and the resource hints of the model stages."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

from unicurate.config import RecipeError, RunnerConfig


def is_remote(path: str) -> bool:
    """A path on a remote filesystem (gs://, ...) rather than this machine."""
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


def absolutise(recipe):
    """Local input and output paths become absolute so worker processes agree with the driver."""
    inp = recipe.input
    path = inp.path if isinstance(inp.path, str) else None
    new_in = _absolute(path) if path is not None else [_absolute(p) for p in inp.path]
    return recipe.model_copy(update={
        "input": inp.model_copy(update={"path": new_in}),
        "output": recipe.output.model_copy(update={"path": _absolute(recipe.output.path)}),
    })


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

    def engine(self):
        """The runner the pipeline is handed. Dataflow: None (the options name it). Locally: Beam's FnApiRunner,
        chosen here, in the mode and with the worker count of the options. Left to itself, Beam's DirectRunner first
        tries the PrismRunner, which downloads a binary on first use and runs with other parallelism and memory;
        an engine no test or benchmark of unicurate runs."""
        if self.remote:
            return None
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        # what the DirectRunner hands the FnApiRunner: the options, for the worker processes
        encoded = JobServiceHandle.encode_pipeline_options(self.options.get_all_options())
        return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))

    def local_workers(self) -> int:
        """The worker processes (or threads) of a local run; 0 on Dataflow."""
        return 0 if self.remote else int(self.opts.get("direct_num_workers", 1))

    def engine_name(self) -> str:
        """The engine as the run's first lines and its manifest name it."""
        if self.remote:
            return DATAFLOW
        n = self.local_workers()
        mode = self.opts.get("direct_running_mode", "in_memory")
        return f"FnApiRunner ({mode}, {n} worker{'s' if n != 1 else ''})"

    def describe(self) -> str:
        if self.remote:
            o = self.options.get_all_options()
            gpu = [s for s in o.get("dataflow_service_options") or [] if s.startswith("worker_accelerator=")]
            return (f"runner: DataflowRunner, project {o.get('project')}, region {o.get('region')}, "
                    f"image {o.get('sdk_container_image')}, machine {o.get('machine_type') or 'default'}"
                    + (f", {gpu[0]}" if gpu else "")
                    + (", dry run (nothing is submitted)" if self.dry_run else ""))
        return (f"runner: Beam's local {self.engine_name()}, on this machine"
                + (", dry run (nothing runs)" if self.dry_run else ""))

    def beam_options(self) -> dict:
        return {k: v for k, v in self.opts.items() if jsonable(v)}


def _has_dataflow() -> bool:
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in (
            "apache_beam.runners.dataflow.dataflow_runner", "apache_beam.io.gcp.gcsfilesystem", "google.cloud.storage"))
    except ImportError:
        return False


def jsonable(v) -> bool:
    """A value that goes into a manifest or job description as it is."""
    return isinstance(v, (str, int, float, bool, list, type(None)))

