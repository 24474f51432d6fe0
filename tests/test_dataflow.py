"""Scale-out: runner profiles, the Dataflow dry run (no network), the worker image's Dockerfile."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from unicurate.config import RecipeError, parse_recipe
from unicurate.models import zoo
from unicurate.models.resolver import ModelUnavailable
from unicurate.pipelines.common import model_stage_hints
from unicurate.run import options as rn
from unicurate.run.execute import run_curate, run_synthesize

from conftest import SCORED_FILTERS, base_recipe

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "us-central1-docker.pkg.dev/my-project/unicurate/unicurate-worker:0.1.0"
L4 = "type:nvidia-l4;count:1;install-nvidia-driver"
DATAFLOW = {"project": "my-project", "region": "us-central1", "temp_location": "gs://my-bucket/tmp",
            "sdk_container_image": IMAGE, "machine_type": "g2-standard-8", "max_num_workers": 4}




def _transform_names(desc: dict) -> set[str]:
    return {t["name"].split("/")[0] for t in desc["transforms"]}


# ------------------------------------------------------------------ profiles -> flags
def test_local_profile_defaults_to_all_cores_in_processes(monkeypatch):
    monkeypatch.setattr(rn.os, "cpu_count", lambda: 4)
    cfg = parse_recipe({"pipeline": "curate", "input": {"path": "x"}, "output": {"path": "o"}}).runner
    flags = rn.beam_flags(cfg, [])
    assert "--runner=DirectRunner" in flags
    assert "--direct_num_workers=4" in flags and "--direct_running_mode=multi_processing" in flags
    one = cfg.model_copy(update={"direct_num_workers": 1})
    assert "--direct_running_mode=in_memory" in rn.beam_flags(one, [])
    # flags after `--` come last and win
    opts = rn.pipeline_options(cfg, ["--direct_num_workers=3"]).get_all_options()
    assert opts["direct_num_workers"] == 3


def test_dataflow_profile_flags():
    recipe = parse_recipe({"pipeline": "curate", "name": "LAION style!", "input": {"path": "gs://b/in.parquet"},
                           "output": {"path": "gs://b/out"},
                           "runner": {"profile": "dataflow", "dataflow": {**DATAFLOW, "gpu": {"type": "nvidia-l4"}}}})
    flags = rn.beam_flags(recipe.runner, [], recipe.name)
    assert "--runner=DataflowRunner" in flags and "--experiments=use_runner_v2" in flags
    assert f"--sdk_container_image={IMAGE}" in flags and "--sdk_location=container" in flags
    assert f"--dataflow_service_options=worker_accelerator={L4}" in flags
    # a GPU: one SDK process per VM (one model copy per GPU) with a few harness threads
    assert "--experiments=no_use_multiple_sdk_containers" in flags
    assert "--number_of_worker_harness_threads=4" in flags
    job = next(f for f in flags if f.startswith("--job_name="))
    assert re.fullmatch(r"--job_name=unicurate-laion-style-\d{8}-\d{6}", job)
    assert model_stage_hints(recipe.runner) == {}  # all_workers: no per-transform hints
    # right fitting: only the model transforms ask for the GPU
    rf = recipe.runner.model_copy(update={"dataflow": recipe.runner.dataflow.model_copy(
        update={"gpu": recipe.runner.dataflow.gpu.model_copy(update={"placement": "model_stages",
                                                                     "min_ram": "24GB"})})})
    assert not any(f.startswith("--dataflow_service_options") for f in rn.beam_flags(rf, []))
    assert model_stage_hints(rf) == {"accelerator": L4, "min_ram": "24GB"}
    # CPU-only Dataflow: several SDK processes per VM, Beam's default threads
    cpu = recipe.runner.model_copy(update={"dataflow": recipe.runner.dataflow.model_copy(update={"gpu": None})})
    cpu_flags = rn.beam_flags(cpu, [])
    assert not any("no_use_multiple_sdk_containers" in f or "harness_threads" in f for f in cpu_flags)


def test_dataflow_config_is_validated():
    with pytest.raises(RecipeError, match="temp_location.*gs://"):
        parse_recipe({"pipeline": "curate", "input": {"path": "x"}, "output": {"path": "o"},
                      "runner": {"profile": "dataflow", "dataflow": {"temp_location": "/tmp/x"}}})
    with pytest.raises(RecipeError, match="nvidia-"):
        parse_recipe({"pipeline": "curate", "input": {"path": "x"}, "output": {"path": "o"},
                      "runner": {"dataflow": {"gpu": {"type": "l4"}}}})


# ------------------------------------------------------------------ dry run
def test_curate_dry_run_on_dataflow_writes_the_job_offline(web_input, tmp_path, no_network):
    data = base_recipe(web_input, "gs://my-bucket/curated", filters={**SCORED_FILTERS, "semantic_dedup": {}},
                       output={"embeddings": True},
                       runner={"profile": "dataflow", "dataflow": {**DATAFLOW, "gpu": {"type": "nvidia-l4"}}})
    job_file = tmp_path / "job" / "curate.job.json"
    desc = run_curate(parse_recipe(data), say=lambda _m: None, dry_run=True, job_file=str(job_file))
    assert no_network == []  # nothing tried to reach Google Cloud (or anything else)
    written = json.loads(job_file.read_text())
    assert written["runner"] == "DataflowRunner" and written["dry_run"] is True
    assert written["pipeline"] == "curate" and written["recipe_hash"] == parse_recipe(data).recipe_hash()
    # the model stage, and the rest of the graph around it
    assert [t["name"] for t in written["model_stages"]] == ["CurateUnits/ParDo(CurateUnitsDoFn)"]
    assert {"Units", "CurateUnits", "GroupRepeatedUrls", "GroupBySha", "GroupByShard", "WriteShards",
            "WriteManifest"} <= _transform_names(written)
    assert {"SemanticDedup/JoinRejected", "SemanticDedup/KMeans", "SemanticDedup/GroupByCluster"} <= {
        "/".join(t["name"].split("/")[:2]) for t in written["transforms"]}  # semantic dedup runs there too
    # the container image, as the options give it and as the graph's environments carry it
    assert written["container_image"] == IMAGE and written["options"]["sdk_container_image"] == IMAGE
    assert written["environment_images"] == [IMAGE]
    assert {e["container_image"] for e in written["environments"].values()} == {IMAGE}
    # the accelerator: a service option on every worker
    assert written["accelerator"]["service_options"] == [f"worker_accelerator={L4}"]
    assert written["options"]["dataflow_service_options"] == [f"worker_accelerator={L4}"]
    exps = written["options"]["experiments"]
    assert "use_runner_v2" in exps and "no_use_multiple_sdk_containers" in exps
    assert written["options"]["machine_type"] == "g2-standard-8"
    assert written["options"]["sdk_location"] == "container"
    # the full Runner API graph is there too (every leaf transform of the summary is in it)
    graph_names = {t["uniqueName"] for t in written["proto_pipeline"]["components"]["transforms"].values()}
    assert {t["name"] for t in written["transforms"]} <= graph_names
    # the local input is flagged: workers could not read it
    assert any("input.path" in w and "gs://" in w for w in written["warnings"])
    assert desc["_path"] == str(job_file)


def test_synthesize_dry_run_right_fits_the_model_stage(scored, tmp_path, no_network):
    out, _, _ = scored
    df = {**DATAFLOW, "machine_type": "n2-standard-8",
          "gpu": {"type": "nvidia-tesla-t4", "placement": "model_stages", "min_ram": "16GB"}}
    recipe = parse_recipe({
        "pipeline": "synthesize", "input": {"path": str(out)}, "output": {"path": "gs://my-bucket/syn"},
        "models": {"profile": "tiny", "batch_size": 4}, "runner": {"profile": "dataflow", "dataflow": df}})
    job_file = tmp_path / "syn.job.json"
    run_synthesize(recipe, say=lambda _m: None, dry_run=True, job_file=str(job_file))
    assert no_network == []
    desc = json.loads(job_file.read_text())
    t4 = "type:nvidia-tesla-t4;count:1;install-nvidia-driver"
    assert desc["pipeline"] == "synthesize"
    (stage,) = desc["model_stages"]
    assert stage["name"] == "Synthesize"
    assert stage["resource_hints"]["beam:resources:accelerator:v1"] == t4
    assert stage["resource_hints"]["beam:resources:min_ram_bytes:v1"] == str(16 * 10**9)
    # only the model stage carries the hint: reading, shuffling and writing stay on CPU workers
    hinted = {t["name"] for t in desc["transforms"] if t["resource_hints"]}
    assert hinted == {stage["name"]}
    assert desc["accelerator"]["service_options"] == [] and desc["accelerator"]["model_stage_hints"]["accelerator"] == t4
    assert desc["container_image"] == IMAGE
    assert {"Units", "Synthesize", "AllUnitsDone", "WriteShards", "WriteManifest"} <= \
        _transform_names(desc)


def test_cli_dry_run_with_beam_flags_only(web_input, tmp_path):
    """`-- --runner DataflowRunner ...` alone selects Dataflow; --dry-run prints where the job went."""
    from conftest import unicurate

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"pipeline: curate\ninput: {{path: {web_input}}}\noutput: {{path: {tmp_path / 'out'}}}\n"
                      "models: {profile: tiny}\nfilters: {clip_score: {}}\n")
    res = unicurate("run", str(recipe), "--dry-run", "--", "--runner", "DataflowRunner", "--project", "my-project",
                    "--region", "europe-west4", "--temp_location", "gs://my-bucket/tmp",
                    "--sdk_container_image", IMAGE,
                    "--dataflow_service_options", "worker_accelerator=type:nvidia-l4;count:1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    job = tmp_path / "out.job.json"  # default: next to the (local) output folder
    assert f"job description written to {job}" in res.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes no output
    desc = json.loads(job.read_text())
    assert desc["options"]["region"] == "europe-west4"
    assert desc["accelerator"]["service_options"] == ["worker_accelerator=type:nvidia-l4;count:1"]
    assert "use_runner_v2" in desc["options"]["experiments"]  # the dataflow profile's defaults applied
    assert any("output.path" in w for w in desc["warnings"])


def test_local_dry_run_writes_the_graph_without_running(web_input, tmp_path):
    data = base_recipe(web_input, tmp_path / "out", filters={"clip_score": {}})
    desc = run_curate(parse_recipe(data), say=lambda _m: None, dry_run=True)
    assert desc["runner"] == "DirectRunner" and desc["warnings"] == []
    assert [t["name"] for t in desc["model_stages"]] == ["CurateUnits/ParDo(CurateUnitsDoFn)"]
    assert Path(desc["_path"]) == tmp_path / "out.job.json" and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ refusals before submitting
def test_dataflow_run_refuses_what_workers_cannot_reach(web_input, tmp_path, no_network):
    data = base_recipe(web_input, tmp_path / "out", runner={"profile": "dataflow", "dataflow": DATAFLOW})
    with pytest.raises(RecipeError) as exc:
        run_curate(parse_recipe(data), say=lambda _m: None)
    msg = str(exc.value)
    assert "cannot run on Dataflow" in msg and f"input.path {web_input}" in msg and "output.path" in msg
    missing = {k: v for k, v in DATAFLOW.items() if k != "sdk_container_image"}
    data = base_recipe("gs://b/in.parquet", "gs://b/out", runner={"profile": "dataflow", "dataflow": missing})
    with pytest.raises(RecipeError, match="runner.dataflow.sdk_container_image.*docker/Dockerfile"):
        run_curate(parse_recipe(data), say=lambda _m: None, dry_run=True)
    with pytest.raises(RecipeError, match="--temp_location /tmp/t: Dataflow needs a gs:// folder"):
        run_curate(parse_recipe(base_recipe("gs://b/in.parquet", "gs://b/out")), ["--runner=DataflowRunner",
                      "--project=my-project", "--region=us-central1", f"--sdk_container_image={IMAGE}",
                      "--temp_location=/tmp/t"], say=lambda _m: None, dry_run=True)
    assert no_network == []


def test_remote_model_check_reads_where_workers_will(tmp_path):
    clip = zoo.profile_specs("default")["clip"]
    cfg = parse_recipe({"pipeline": "curate", "input": {"path": "x"}, "output": {"path": "o"}}).models
    # nothing staged: the workers would download from the hub themselves (said, not hidden)
    assert "downloaded by each worker VM" in zoo.worker_source(clip, cfg, probe=False)
    offline = cfg.model_copy(update={"offline": True})
    with pytest.raises(ModelUnavailable, match="clip.*models.offline is on"):
        zoo.worker_source(clip, offline, probe=False)
    local_mirror = cfg.model_copy(update={"mirror": str(tmp_path)})
    with pytest.raises(ModelUnavailable, match="clip.*workers cannot read.*models fetch"):
        zoo.worker_source(clip, local_mirror, probe=False)
    gcs = cfg.model_copy(update={"mirror": "gs://my-bucket/unicurate-models"})
    where = zoo.worker_source(clip, gcs, probe=False)
    assert where.startswith("gs://my-bucket/unicurate-models/") and where.endswith(clip.uri.rsplit("/", 1)[-1])
    with_local = parse_recipe({"pipeline": "curate", "input": {"path": "x"}, "output": {"path": "o"},
                               "models": {"overrides": {"clip": {"uri": str(tmp_path / "w.bin")}}}}).models
    local_weights = zoo.spec_with_overrides(clip, with_local)
    with pytest.raises(ModelUnavailable, match="path on this machine"):
        zoo.worker_source(local_weights, cfg, probe=False)
    # the shipped models are in the worker image's packages
    assert "installed package" in zoo.worker_source(zoo.profile_specs("default")["nudenet"], cfg)
    assert not (Path.home() / ".cache" / "unicurate" / "models" / "never-created").exists()


# ------------------------------------------------------------------ the worker image
def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions (keyword, arguments) with comments dropped and continuations joined."""
    out, cur = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") and not cur:
            continue
        if line.strip().startswith("#"):
            continue  # a comment inside a continued instruction
        cur += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if cur.strip():
                kw, _, args = cur.strip().partition(" ")
                out.append((kw.upper(), args.strip()))
            cur = ""
    return out


def test_dockerfile_builds_a_dataflow_sdk_container():
    import apache_beam

    text = (ROOT / "docker" / "Dockerfile").read_text()
    ins = _instructions(text)
    kws = [k for k, _ in ins]
    assert kws.count("FROM") == 1
    args = dict(a.split("=", 1) for k, a in ins if k == "ARG" and "=" in a)
    frm = next(a for k, a in ins if k == "FROM")
    image = frm.replace("${PYTHON_VERSION}", args["PYTHON_VERSION"]).replace("${BEAM_VERSION}", args["BEAM_VERSION"])
    # Beam's own Python SDK image, with the Python and Beam versions this environment launches jobs with
    assert image == f"apache/beam_python{sys.version_info.major}.{sys.version_info.minor}_sdk:{apache_beam.__version__}"
    lock = (ROOT / "requirements" / "lock.txt").read_text().splitlines()
    assert f"apache-beam=={args['BEAM_VERSION']}" in lock
    # the boot entrypoint, last, in exec form
    assert ins[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')
    # the package with its gcp extra, from the lock; the headless OpenCV build
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert re.search(r'pip install -c requirements/lock\.txt "\.\[gcp\]"', runs)
    assert "opencv-python-headless" in runs
    assert "gcp" in (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
    # every COPY source exists and is let through the dockerignore
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    for k, a in ins:
        if k == "COPY" and not a.startswith("--from"):
            for src in a.split()[:-1]:
                assert (ROOT / src).exists(), src
                assert f"!{src}" in ignore or f"!{src}/" in ignore, src
    # the image's import check names modules that exist
    check = re.search(r'python -c "import ([^;]+);', runs).group(1)
    import importlib

    for mod in (m.strip() for m in check.split(",")):
        importlib.import_module(mod)


def test_docker_readme_documents_the_exact_commands():
    readme = (ROOT / "docker" / "README.md").read_text()
    assert "docker build --platform linux/amd64 -f docker/Dockerfile -t $IMAGE ." in readme
    assert "docker push $IMAGE" in readme
    assert "gcloud builds submit --region=$REGION --config docker/cloudbuild.yaml --substitutions _IMAGE=$IMAGE ." \
        in readme
    assert "--runner DataflowRunner" in readme and "--sdk_container_image $IMAGE" in readme
    assert "unicurate models fetch" in readme and "--to $BUCKET/unicurate-models" in readme
    cloudbuild = (ROOT / "docker" / "cloudbuild.yaml").read_text()
    assert '"-f", "docker/Dockerfile"' in cloudbuild


def test_worker_processes_share_the_cores(monkeypatch):
    from unicurate.pipelines.perworker import cpu_threads_per_process

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    local = {"runner": "DirectRunner", "direct_running_mode": "multi_processing"}
    assert cpu_threads_per_process({**local, "direct_num_workers": 2}) == 4
    assert cpu_threads_per_process({**local, "direct_num_workers": 16}) == 1
    assert cpu_threads_per_process({"direct_num_workers": 1, "direct_running_mode": "in_memory"}) is None
    # Dataflow: one SDK process per vCPU unless told otherwise; one per VM keeps the libraries' defaults
    assert cpu_threads_per_process({"runner": "DataflowRunner", "experiments": ["use_runner_v2"]}) == 1
    assert cpu_threads_per_process({"runner": "DataflowRunner",
                                    "experiments": ["use_runner_v2", "no_use_multiple_sdk_containers"]}) is None


def test_capped_threads_reach_the_onnx_sessions():
    """A model DoFn's cpu_threads reach the runtime its build() loads with: torch and the ONNX sessions."""
    import torch

    from unicurate.config import ModelsConfig
    from unicurate.models.handlers import load_models
    from unicurate.pipelines.perworker import ModelDoFn

    runtime = ModelDoFn("threads", cpu_threads=1).runtime(ModelsConfig(profile="tiny"))
    spec = zoo.profile_specs("tiny")["nudenet"]
    before = torch.get_num_threads()
    try:
        nudenet = load_models([(spec, zoo.package_path(spec.uri))], runtime)["nudenet"]
        assert torch.get_num_threads() == 1
        opts = nudenet.detector.onnx_session.get_session_options()
        assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    finally:
        torch.set_num_threads(before)
