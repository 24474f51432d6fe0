"""Dry run: the job a recipe would be, as the runner would submit it, written as JSON; nothing runs.

DataflowRunner with ``--dry_run=True`` builds the Dataflow job (Runner API graph with environments and resource
hints, final options) without contacting Google Cloud; other runners give the Runner API graph.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Callable, Optional

import apache_beam as beam
from apache_beam.pipeline import PipelineVisitor
from apache_beam.portability.api import beam_runner_api_pb2
from google.protobuf import json_format

from unicurate import __version__
from unicurate.manifests import manifest as mf
from unicurate.pipelines.perworker import ModelDoFn
from unicurate.pipelines.common import model_stage_hints
from unicurate.run.options import Launch, is_remote, jsonable


def model_stage_names(pipeline) -> set[str]:
    """The leaf transforms that run models (a ``perworker.ModelDoFn``): the stages GPU workers are for."""
    names: set[str] = set()

    class Visitor(PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, beam.ParDo) and isinstance(node.transform.fn, ModelDoFn):
                names.add(node.full_label)

    pipeline.visit(Visitor())
    return names


def write_job_description(pipeline, launch: Launch, recipe, models: list, warnings: list[str],
                          job_file: Optional[str], say: Callable[[str], None]) -> dict:
    """The job ``pipeline`` (built, not run) would be, written to ``job_file`` (JSON); returns it."""
    model_names = model_stage_names(pipeline)
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
    model_stages = [t for t in transforms if t["name"] in model_names]
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
        "options": {k: v for k, v in sorted(final.items()) if jsonable(v)},
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
    out = {"urn": env.get("urn")}
    payload = env.get("payload")
    if env.get("urn") == "beam:env:docker:v1" and payload:
        out["container_image"] = beam_runner_api_pb2.DockerPayload.FromString(base64.b64decode(payload)).container_image
    hints = {}
    for urn, value in (env.get("resourceHints") or {}).items():
        raw = base64.b64decode(value)
        hints[urn] = raw.decode("utf-8", "replace")
    out["resource_hints"] = hints
    return out

