"""Typed YAML recipes.

A recipe is validated completely before any work starts. Any wrong key, type or
value produces one :class:`RecipeError` whose message names the field (dotted
path), what was given and what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from unicurate.filters import registry as filter_registry
from unicurate.filters.semantic_dedup import SemanticDedupConfig
from unicurate.sections import Section as _Section
from unicurate.synthesis.edit_types import NAMES as EDIT_TYPE_NAMES


class RecipeError(ValueError):
    """A recipe could not be read or is invalid. The message is for the user."""


InputFormat = Literal["auto", "parquet", "csv", "tsv", "jsonl", "txt"]
ResizeMode = Literal["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"]
Interpolation = Literal["nearest", "linear", "bilinear", "cubic", "bicubic", "area", "lanczos", "lanczos4"]


class InputConfig(_Section):
    """Where the image-text pairs come from."""

    path: Union[str, list[str]] = Field(
        description="file, glob or list of them; local or any Beam filesystem (gs://...)"
    )
    format: InputFormat = Field("auto", description="auto = from the file extension")
    url_col: str = Field("url", description="column holding the image URL (img2dataset's url_col)")
    caption_col: str | None = Field(
        "caption", description="column holding the caption (img2dataset's caption_col); null for none"
    )
    source: str | None = Field(
        None, description="name recorded in the `source` column; default: the input file's name"
    )
    carry_columns: Union[Literal["all", "none"], list[str]] = Field(
        "all", description="extra input columns carried into the `metadata` JSON column"
    )
    rows_per_unit: int = Field(
        10_000, ge=1, description="rows per work unit (img2dataset's number_sample_per_shard): the input is cut "
                                  "into units of this many rows in input order (a smaller local input: one unit per "
                                  "worker process); a finished unit is kept under OUT/units/ with a completion "
                                  "record, so a rerun of the same command skips it"
    )
    image_col: str | None = Field(
        None, description="parquet inputs: column of already-downloaded encoded images (`image` in a unicurate "
                          "output, `jpg` in img2dataset's parquet output). Rows with bytes there are decoded, "
                          "resized, filtered and scored without a download; rows where it is empty are "
                          "downloaded from their url"
    )

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)

    @field_validator("path")
    @classmethod
    def _non_empty(cls, v):
        if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
            raise ValueError("must name at least one file or glob")
        return v


class OutputConfig(_Section):
    path: str = Field(description="output folder (local or gs://); shards + manifest.json go here")
    rows_per_shard: int = Field(5000, ge=1, description="target rows per Parquet shard")
    row_group_rows: int = Field(256, ge=1, description="rows per Parquet row group")
    keep_rejected_images: bool = Field(False, description="store image bytes of rejected rows too")
    keep_units: bool = Field(False, description="keep OUT/units/ (the work units' files and completion records) "
                                                "once the manifest is written; default: remove them")
    embeddings: bool = Field(False, description="write the CLIP image and caption embeddings (float16, unit norm) "
                                                "of every scored row to OUT/embeddings/ in clip-retrieval's layout, "
                                                "row-aligned with the shards; needs filters.clip_score")


class DownloadConfig(_Section):
    timeout: float = Field(10.0, gt=0, description="socket timeout in seconds (img2dataset's timeout)")
    max_seconds: float = Field(60.0, gt=0, description="overall deadline for one download, seconds")
    retries: int = Field(0, ge=0, le=10, description="retries after a failed download")
    thread_count: int = Field(32, ge=1, le=1024, description="concurrent downloads per worker")
    user_agent_token: str | None = Field(
        "unicurate", description="token added to the User-Agent and matched in X-Robots-Tag"
    )
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"],
        description="X-Robots-Tag directives that opt an image out (img2dataset's default list)",
    )
    max_bytes: int = Field(
        25_000_000, ge=1024,
        description="largest response body accepted, bytes: as received and once decoded (Content-Encoding gzip "
                    "or deflate), so a gzip bomb stops here",
    )
    allow_private_networks: bool = Field(
        False,
        description="allow loopback/private addresses (tests, the offline demo, intranet mirrors); the cloud "
                    "metadata ranges (169.254.0.0/16, fe80::/10, fd00:ec2::254, 100.100.100.200) stay refused",
    )
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDR networks exempt from the SSRF guard (e.g. an internal image server's 10.1.0.0/16); "
                    "every other private/loopback/link-local address stays refused. A cloud metadata range opens "
                    "only to an entry inside it (169.254.169.254/32 does, 0.0.0.0/0 does not)",
    )

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        import ipaddress

        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"download.allowed_networks: {net!r} is not an IP network ({exc})") from None
        return value


class ResizeConfig(_Section):
    image_size: int = Field(512, ge=8, le=16384)
    resize_mode: ResizeMode = "keep_ratio"
    resize_only_if_bigger: bool = True
    upscale_interpolation: Interpolation = "lanczos"
    downscale_interpolation: Interpolation = "area"
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100)
    skip_reencode: bool = Field(
        False, description="img2dataset's skip_reencode: keep the original bytes when no resize is needed and they "
                           "are already in encode_format (no second lossy encode when re-scoring resized images)"
    )
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="decompression-bomb limit on decoded pixels (PIL's default)"
    )

    @model_validator(mode="after")
    def _png_quality(self):
        if self.encode_format == "png" and not 0 <= self.encode_quality <= 9:
            raise ValueError(
                f"encode_quality for png is the compression level 0-9, got {self.encode_quality}"
            )
        return self


class DedupConfig(_Section):
    exact: bool = Field(True, description="reject rows whose image sha256 was seen earlier")
    near: bool = Field(False, description="reject perceptual-hash near duplicates")
    max_distance: int = Field(4, ge=0, le=16, description="max pHash Hamming distance for near dups")


class _FiltersBase(_Section):
    """The rule filters' options, flat as recipes write them (filters/rules.py reads them), and dedup."""

    min_width: int = Field(0, ge=0, description="minimum original width, px")
    min_height: int = Field(0, ge=0, description="minimum original height, px")
    max_aspect_ratio: float = Field(math.inf, ge=1.0, description="max of w/h and h/w; null: no limit")
    caption_min_words: int = Field(0, ge=0)
    caption_max_words: int | None = Field(None, ge=1)
    caption_reject_invalid: bool = Field(
        True, description="reject captions with undecodable bytes (U+FFFD) or control characters (invalid_caption)"
    )
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    semantic_dedup: Optional[SemanticDedupConfig] = Field(
        None, description=" ".join((SemanticDedupConfig.__doc__ or "").split()))

    @field_validator("max_aspect_ratio", mode="before")
    @classmethod
    def _no_limit(cls, v):
        """null means no limit: it is how JSON (the manifest's recorded recipe) writes the default, infinity."""
        return math.inf if v is None else v

    @model_validator(mode="after")
    def _word_bounds(self):
        if self.caption_max_words is not None and self.caption_max_words < self.caption_min_words:
            raise ValueError("caption_max_words must be >= caption_min_words")
        return self

    @model_validator(mode="after")
    def _semantic_needs_clip(self):
        if self.semantic_dedup is not None and getattr(self, "clip_score", None) is None:
            raise ValueError("semantic_dedup ranks and compares rows by CLIP: add a clip_score section "
                             "(`clip_score: {}` only records the score)")
        return self

    def model_filters(self) -> list[str]:
        """Names of the model filters this recipe runs, in scoring order."""
        return [spec.name for spec in filter_registry.specs("score") if getattr(self, spec.name) is not None]


FiltersConfig = create_model(
    "FiltersConfig", __base__=_FiltersBase, __module__=__name__,
    __doc__="The recipe's ``filters``: the rule filters' flat options, dedup, and one optional section per filter "
            "that declares one (unicurate/filters/), named as the filter: absent or null, the filter does not run; "
            "present, its columns are recorded and its thresholds applied when set.",
    **{spec.name: (Optional[spec.config], Field(None, description=(spec.config.__doc__ or "").strip()))
       for spec in filter_registry.specs() if spec.config is not None},
)


class ModelOverride(_Section):
    """Replace one model of the profile: other weights (and, for CLIP / timm, another architecture)."""

    uri: str | None = Field(None, description="hf://org/repo/file, https://..., gs://..., or a local path")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="expected sha256 of the file")
    arch: str | None = Field(None, description="open_clip model name / timm model name for this weight file")


class ModelsConfig(_Section):
    profile: Literal["tiny", "default"] = Field(
        "default", description="default = the real pretrained models; tiny = same classes, small shapes, "
                               "seeded random weights (tests and the offline demo; scores are uncalibrated)",
    )
    cache_dir: str | None = Field(None, description="local weights cache; default ~/.cache/unicurate/models "
                                                    "(or $UNICURATE_MODEL_CACHE)")
    mirror: str | None = Field(None, description="folder (local or gs://) filled by `unicurate models fetch --to`; "
                                                 "looked up before each model's own URI")
    offline: bool | None = Field(None, description="never download; default: on when HF_HUB_OFFLINE=1 or "
                                                   "UNICURATE_OFFLINE=1")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto = fp16 on cuda, fp32 on cpu"
    )
    batch_size: int = Field(32, ge=1, le=4096, description="images per model forward pass: a work unit's rows "
                                                          "are scored in batches of this many, cut in input order")
    preprocess_threads: int = Field(4, ge=1, le=256, description="CPU threads decoding/preprocessing a batch")
    compile: bool = Field(False, description="CUDA only: torch.compile the CLIP image tower and the watermark net "
                                             "(the first batches are slow while it compiles; pays off on long runs)")
    overrides: dict[str, ModelOverride] = Field(
        default_factory=dict, description="per model name (see `unicurate models list`): other weights"
    )


GPU_TYPES = ("nvidia-l4", "nvidia-tesla-t4", "nvidia-tesla-a100", "nvidia-a100-80gb", "nvidia-h100-80gb",
             "nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-p4")


class GpuConfig(_Section):
    """GPUs for the model stages on Dataflow (Runner v2). See docs/dataflow.md."""

    type: str = Field("nvidia-l4", description=f"Dataflow accelerator type, e.g. {', '.join(GPU_TYPES[:3])}")
    count: int = Field(1, ge=1, le=8, description="GPUs per worker VM")
    install_driver: bool = Field(True, description="let Dataflow install the NVIDIA driver on the VM")
    placement: Literal["all_workers", "model_stages"] = Field(
        "all_workers",
        description="all_workers = every worker VM gets the GPU (dataflow_service_options worker_accelerator); "
                    "model_stages = only the model transforms carry an `accelerator` resource hint and Dataflow "
                    "right-fits them onto GPU workers while download/decode stay on machine_type CPU workers",
    )
    min_ram: str | None = Field(None, description="resource hint for the model stages, e.g. 32GB (model_stages only)")

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if not v.startswith("nvidia-"):
            raise ValueError(f"Dataflow accelerator types start with 'nvidia-' (e.g. {', '.join(GPU_TYPES[:3])})")
        return v

    def accelerator(self) -> str:
        """Dataflow's accelerator string: type:T;count:N[;install-nvidia-driver]."""
        return f"type:{self.type};count:{self.count}" + (";install-nvidia-driver" if self.install_driver else "")


class DataflowConfig(_Section):
    """The `dataflow` runner profile: Beam's DataflowRunner on Google Cloud, Runner v2, a custom container."""

    project: str | None = Field(None, description="Google Cloud project id")
    region: str = Field("us-central1", description="Dataflow region (GPU types vary by zone/region)")
    temp_location: str | None = Field(None, description="gs:// folder for temporary files")
    staging_location: str | None = Field(None, description="gs:// folder for staged files (default: temp_location)")
    sdk_container_image: str | None = Field(
        None, description="the worker image built from docker/Dockerfile, e.g. "
                          "us-docker.pkg.dev/PROJECT/unicurate/worker:0.1.0")
    machine_type: str | None = Field(None, description="worker VM type, e.g. g2-standard-8 for one L4 GPU; "
                                                       "n2-standard-8 for CPU-only runs")
    num_workers: int | None = Field(None, ge=1, description="workers to start with")
    max_num_workers: int | None = Field(None, ge=1, description="autoscaling ceiling")
    disk_size_gb: int | None = Field(None, ge=10, description="boot disk per worker (the image and weights cache)")
    gpu: GpuConfig | None = Field(None, description="GPUs for the model stages; omit for CPU workers")
    harness_threads: int | None = Field(
        None, ge=1, description="number_of_worker_harness_threads; default with a GPU: 4 threads in one SDK "
                                "process per VM, so one model copy serves each GPU")
    one_sdk_process: bool | None = Field(
        None, description="run one SDK process per worker VM (experiment no_use_multiple_sdk_containers); "
                          "default: on with a GPU (one model copy per GPU), off without")
    service_account_email: str | None = None
    network: str | None = None
    subnetwork: str | None = None
    use_public_ips: bool | None = Field(None, description="false = workers without external IPs (then model "
                                                          "weights must come from gs://: models.mirror)")
    job_name: str | None = Field(None, description="default: unicurate-<recipe name>-<time>")

    @field_validator("temp_location", "staging_location")
    @classmethod
    def _gcs(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("gs://"):
            raise ValueError("Dataflow needs a gs:// folder here")
        return v


class RunnerConfig(_Section):
    profile: Literal["local", "dataflow"] = Field(
        "local", description="local = Beam DirectRunner on this machine; dataflow = Google Cloud Dataflow "
                             "(runner.dataflow); Beam flags after `--` override anything here"
    )
    direct_num_workers: int = Field(0, ge=0, description="local: worker processes; 0 = one per CPU core")
    direct_running_mode: Literal["auto", "in_memory", "multi_threading", "multi_processing"] = Field(
        "auto", description="local: auto = multi_processing with more than one worker, else in_memory"
    )
    dataflow: DataflowConfig = Field(default_factory=DataflowConfig)
    options: dict[str, Any] = Field(
        default_factory=dict, description="any other Beam pipeline options, e.g. {experiments: [...]}"
    )


class SampleWebConfig(_Section):
    """Demo only: generate and serve a sample web on 127.0.0.1 for the run.

    Its url list is written inside the output folder, to ``OUTPUT/input/urls.parquet`` (:meth:`url_list`), never
    to a path of the user's: leave ``input.path`` out of a recipe with ``sample_web`` (it is filled in with that
    path). The output must be a local folder. ``unicurate run --input FILE`` (or ``--set input.path=FILE``)
    curates FILE instead: no sample web is generated.
    """

    images: int = Field(60, ge=1, le=10000)
    seed: int = 0
    port: int = Field(0, ge=0, le=65535)
    slow_seconds: float = Field(5.0, gt=0)

    @staticmethod
    def url_list(output_path: str) -> str:
        """Where the sample web's url list goes: inside the run's output folder."""
        return f"{output_path.rstrip('/')}/input/urls.parquet"


# execution settings of the model stages: where weights are cached, which hardware, how fast (see _Recipe)
_MODEL_EXECUTION = tuple(f"models.{name}" for name in (
    "cache_dir", "mirror", "offline", "device", "precision", "compile", "batch_size",
    "preprocess_threads"))


def _digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class _Recipe(_Section):
    """What every recipe kind has: its resolved form, split into the data recipe and the execution settings.

    * The **data recipe** decides which rows a run writes and what they hold: the pipeline kind, the inputs'
      identity and how they are read (format, the columns read and carried), the download policy, resize, the
      filters and dedup, the models (profile, overrides: the weights), the synthesis parameters and seed, whether
      rejected rows keep their images. :meth:`recipe_hash` is its hash, recorded as ``recipe_hash`` in manifests:
      the same data recipe hashes the same from any folder, on any machine, with any number of workers. It is what
      a rerun compares to tell whether earlier results still hold.
    * The **execution settings** (``EXECUTION_FIELDS``, dotted paths) decide where and how a run goes, not what it
      writes: paths as written (``input.path``, ``output.path``, ``models.cache_dir``, ``models.mirror``), the
      recipe's name, the shard layout, the runner and worker counts, batch sizes, threads, device, precision and
      compilation. :meth:`execution_hash` is their hash. Device and precision move model scores only in their last
      digits (the same weights on other hardware), so a GPU run counts as the same data as a CPU run.

    A setting that is not listed in ``EXECUTION_FIELDS`` is part of the data recipe: a new option changes the hash
    until it is declared an execution setting, so earlier results are never taken for a recipe they do not match.

    **The inputs' identity** (:meth:`input_files`) is each input file's base name and size in bytes, in reading
    order, taken by listing the input (one call per pattern, local or gs://; no file is opened). The same files
    reached from another folder or bucket give the same hash; a file added, removed, renamed, grown or truncated
    gives another. A file rewritten in place with the same size is the one change it does not see: checksums
    would mean reading every input before any work.
    """

    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = ()

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in, JSON-safe."""
        return json.loads(self.model_dump_json())

    def _split(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(data recipe, execution settings): the resolved recipe with each of ``EXECUTION_FIELDS`` moved out."""
        data, execution = self.resolved(), {}
        for dotted in self.EXECUTION_FIELDS:
            *parents, leaf = dotted.split(".")
            section = data
            for part in parents:
                section = section.get(part) or {}  # an optional section that is absent (sample_web: null)
            if leaf in section:
                _set_dotted(execution, dotted, section.pop(leaf))
        return data, execution

    def data_recipe(self) -> dict[str, Any]:
        """The settings that decide the output rows (the inputs' identity aside: :meth:`input_files`). A filter
        section the recipe leaves out is left out here too, so adding a filter to unicurate does not change the
        hash of the recipes that do not use it."""
        data = self._split()[0]
        filters = data.get("filters")
        if isinstance(filters, dict):
            for spec in filter_registry.specs():
                if spec.config is not None and filters.get(spec.name, "") is None:
                    del filters[spec.name]
        return data

    def execution_settings(self) -> dict[str, Any]:
        """The settings that decide only where and how the run goes (``EXECUTION_FIELDS``)."""
        return self._split()[1]

    def _input_patterns(self) -> list[str]:
        """The files or globs the pipeline reads."""
        raise NotImplementedError

    def input_files(self) -> list[dict[str, Any]]:
        """The inputs' identity: ``{"name": base name, "bytes": size}`` of each file read, in reading order.

        A pattern that matches nothing, or cannot be listed here (gs:// without the gcp extra or the network), is
        recorded by its base name with ``"bytes": None``. A run stops on such an input before any work, so only a
        hash taken without running (a test, a notebook) ever holds one.
        """
        from unicurate.download.ingest import match

        files: list[dict[str, Any]] = []
        seen: set[str] = set()  # a file two patterns match is read once (ingest.expand_inputs), listed once
        for pattern in self._input_patterns():
            try:
                metas = match(pattern)
            except Exception:  # noqa: BLE001 - BeamIOError, ValueError (no filesystem for the scheme) and friends
                metas = []
            if not metas:
                files.append({"name": pattern.rstrip("/").rsplit("/", 1)[-1], "bytes": None})
            for m in metas:
                if m.path not in seen:
                    seen.add(m.path)
                    files.append({"name": m.path.rsplit("/", 1)[-1], "bytes": m.size_in_bytes})
        return files

    def recipe_hash(self, inputs: list[dict[str, Any]] | None = None) -> str:
        """The data recipe's hash: :meth:`data_recipe` and the inputs' identity.

        ``inputs``: an identity taken earlier (an output derived from a run's rows keeps that run's); default: the
        inputs as :meth:`input_files` lists them now.
        """
        return _digest({"recipe": self.data_recipe(), "inputs": self.input_files() if inputs is None else inputs})

    def execution_hash(self) -> str:
        """The hash of :meth:`execution_settings`: two runs of one data recipe differ here, if anywhere."""
        return _digest(self.execution_settings())


class CurateRecipe(_Recipe):
    pipeline: Literal["curate"]
    name: str = "curate"
    input: InputConfig
    output: OutputConfig
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    resize: ResizeConfig = Field(default_factory=ResizeConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    sample_web: SampleWebConfig | None = Field(
        None, description="demo only: generate and serve a sample web on 127.0.0.1 and curate it; its url list "
                          "is written to OUTPUT/input/urls.parquet (leave input.path out: it is filled in with "
                          "that path); `run --input FILE` curates FILE instead and no sample web is started")

    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = (
        "name", "input.path", "input.rows_per_unit", "output.path", "output.rows_per_shard", "output.row_group_rows",
        "output.keep_units", "download.thread_count", *_MODEL_EXECUTION, "runner", "sample_web.port")

    def _input_patterns(self) -> list[str]:
        return self.input.paths

    @model_validator(mode="after")
    def _embeddings_need_clip(self):
        if self.output.embeddings and self.filters.clip_score is None:
            raise ValueError("output.embeddings writes the CLIP embeddings of filters.clip_score: add a clip_score "
                             "section (`clip_score: {}` only records the score)")
        return self

    def wants_embeddings(self) -> bool:
        """Whether the units keep each scored row's CLIP embeddings (for OUT/embeddings/ or semantic dedup)."""
        return self.output.embeddings or self.filters.semantic_dedup is not None

    @model_validator(mode="before")
    @classmethod
    def _sample_web_input(cls, data: Any) -> Any:
        """With sample_web and no input.path, the input is the url list the sample web writes in the output."""
        if not isinstance(data, dict) or data.get("sample_web") is None:
            return data
        inp, out = data.get("input"), data.get("output")
        if inp is None:
            inp = {}
        if not isinstance(inp, dict) or inp.get("path") is not None or not isinstance(out, dict) \
                or not isinstance(out.get("path"), str):
            return data  # given (the runner checks it is that url list), or wrong: the field checks say so
        return {**data, "input": {**inp, "path": SampleWebConfig.url_list(out["path"])}}


# ---------------------------------------------------------------- synthesize
EditType = Literal[EDIT_TYPE_NAMES]  # the registered edit types (unicurate/synthesis/edit_types/)


class SynInputConfig(_Section):
    path: str = Field(description="a curate run's output folder (local or gs://): its kept/ shards are read")
    max_images: int | None = Field(None, ge=1, description="only the first N kept images (by key); null = all")
    rows_per_unit: int = Field(
        1_000, ge=1, description="kept images per work unit: a finished unit is kept under OUT/units/ with a "
                                 "completion record, so a rerun of the same command skips it"
    )


class SynOutputConfig(_Section):
    path: str = Field(description="output folder: subject/, edit/, rejected/, images/ shards + manifest.json")
    images_per_shard: int = Field(500, ge=1, description="input images per shard (samples of one image "
                                                         "share a shard index)")
    row_group_rows: int = Field(64, ge=1, description="rows per Parquet row group")
    keep_rejected_images: bool = Field(False, description="store source/target images of rejected edits too")
    keep_units: bool = Field(False, description="keep OUT/units/ (the work units' files and completion records) "
                                                "once the manifest is written; default: remove them")
    image_format: Literal["png", "jpg", "webp"] = Field("png", description="encoding of written images")
    jpeg_quality: int = Field(95, ge=1, le=100)


class GroundingConfig(_Section):
    """GroundingDINO (groundingdino-py) prompted with the caption, then SAM prompted with its boxes."""

    box_threshold: float = Field(0.35, ge=0, le=1, description="GroundingDINO box confidence threshold")
    text_threshold: float = Field(0.25, ge=0, le=1, description="token threshold for the phrase of a box")
    nms_iou: float = Field(0.7, gt=0, le=1, description="class-agnostic NMS IoU between boxes")
    max_objects: int = Field(4, ge=1, le=100, description="objects kept per image (highest score first)")
    image_size: int | None = Field(None, ge=32, description="detector input: shorter side (default 800; tiny 256)")
    sam_arch: Literal["vit_h", "vit_l", "vit_b"] = Field("vit_h", description="SAM backbone (default profile)")
    prompt: Literal["caption"] = Field("caption", description="the detector is prompted with the caption "
                                                              "(lower-cased, trailing ' .')")


class QualityConfig(_Section):
    """Mask checks; each failure is recorded with its own reason in rejected/."""

    min_pred_iou: float = Field(0.88, ge=0, le=1, description="SAM predicted IoU")
    min_stability: float = Field(0.95, ge=0, le=1, description="SAM stability score")
    min_mask_area: float = Field(0.01, ge=0, le=1, description="mask pixels / image pixels")
    max_mask_area: float = Field(0.90, ge=0, le=1)
    min_box_area: float = Field(0.005, ge=0, le=1, description="box area / image area")
    max_box_area: float = Field(0.95, ge=0, le=1)
    min_largest_component: float = Field(0.8, ge=0, le=1, description="largest connected component / mask area")
    max_contours: int = Field(5, ge=1, description="outer contours of the mask (after removing specks)")

    @model_validator(mode="after")
    def _bounds(self):
        if self.max_mask_area < self.min_mask_area:
            raise ValueError("max_mask_area must be >= min_mask_area")
        if self.max_box_area < self.min_box_area:
            raise ValueError("max_box_area must be >= min_box_area")
        return self


class AugmentConfig(_Section):
    """Augmentations of the subject reference (against copy-paste learning); recorded per row."""

    flip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    scale: tuple[float, float] = Field((0.85, 1.15), description="random scale range")
    rotate_degrees: float = Field(10.0, ge=0, le=45, description="max absolute rotation")
    color_jitter: float = Field(0.1, ge=0, le=0.5, description="max relative brightness/saturation change")


class SubjectConfig(_Section):
    enabled: bool = True
    margin: float = Field(0.1, ge=0, le=1, description="crop margin around the box, share of the box size")
    background: tuple[int, int, int] = Field((127, 127, 127), description="neutral background RGB")
    augment: AugmentConfig | None = Field(None, description="null = reference as cut out")


class EditsConfig(_Section):
    types: list[EditType] = Field(default_factory=lambda: list(EDIT_TYPE_NAMES),
                                  description="edit types tried, in this rotation order (default: all)")
    inpainter: Literal["telea", "lama"] = Field("telea", description="telea = OpenCV (offline default); "
                                                                     "lama = big-lama through the resolver")
    inpaint_radius: int = Field(5, ge=1, le=50)
    dilation: float = Field(0.04, ge=0, le=0.5, description="mask dilation, share of the object's box diagonal")
    min_dilation_px: int = Field(3, ge=0)
    colors: list[str] = Field(default_factory=lambda: ["red", "orange", "yellow", "green", "blue", "purple",
                                                       "pink"], description="recolor targets (named hues)")
    move_fraction: float = Field(0.2, gt=0, le=0.9, description="move: shift, share of the image size")
    resize_scales: list[float] = Field(default_factory=lambda: [0.6, 1.4], description="resize factors")
    per_object: int = Field(1, ge=1, le=7, description="edit types tried per accepted object (rotating "
                                                       "through `types`)")

    @field_validator("types")
    @classmethod
    def _types(cls, v):
        if not v:
            raise ValueError("name at least one edit type")
        return list(dict.fromkeys(v))

    @field_validator("colors")
    @classmethod
    def _colors(cls, v):
        from unicurate.synthesis.templates import COLOR_HUES

        bad = [c for c in v if c not in COLOR_HUES]
        if bad or not v:
            raise ValueError(f"unknown colour(s) {bad}; known: {', '.join(COLOR_HUES)}")
        return v

    @field_validator("resize_scales")
    @classmethod
    def _scales(cls, v):
        if not v or any(not (0.1 <= x <= 4.0) or abs(x - 1.0) < 0.05 for x in v):
            raise ValueError("scales must lie in [0.1, 4] and differ from 1")
        return v


class ChecksConfig(_Section):
    """Checks of each edit triplet; failing triplets go to rejected/ with reasons."""

    redetect: bool = Field(True, description="remove: phrase must be gone from the region; add: must be there")
    redetect_iou: float = Field(0.3, gt=0, le=1, description="a detection counts when its box overlaps "
                                                             "the object's box by this IoU")
    clip_similarity: bool = Field(True, description="measure CLIP image-image similarity of every triplet "
                                                    "(recorded even without bounds)")
    min_clip_similarity: float | None = Field(0.7, ge=-1, le=1, description="CLIP image-image cosine lower "
                                                                           "bound (InstructPix2Pix: 0.75)")
    max_clip_similarity: float | None = Field(0.995, ge=-1, le=1, description="upper bound (edit too subtle)")
    max_change_outside: float = Field(0.01, ge=0, le=1, description="local edits: share of pixels outside "
                                                                    "the dilated mask allowed to change")
    change_tolerance: int = Field(8, ge=0, le=255, description="per-channel difference that counts as change")


class SynthesizeRecipe(_Recipe):
    pipeline: Literal["synthesize"]
    name: str = "synthesize"
    input: SynInputConfig
    output: SynOutputConfig
    grounding: GroundingConfig = Field(default_factory=GroundingConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    subject: SubjectConfig = Field(default_factory=SubjectConfig)
    edits: EditsConfig = Field(default_factory=EditsConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    models: ModelsConfig = Field(default_factory=lambda: ModelsConfig(batch_size=4))
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    seed: int = Field(0, description="seeds template choice, colours, offsets and augmentations per object")

    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = (
        "name", "input.path", "input.rows_per_unit", "output.path", "output.images_per_shard",
        "output.row_group_rows", "output.keep_units", *_MODEL_EXECUTION, "runner")

    def _input_patterns(self) -> list[str]:
        """The kept shards of the curate run in input.path: what synthesis reads."""
        from unicurate.schema import KEPT

        return [f"{self.input.path.rstrip('/')}/{KEPT}/part-*.parquet"]


RECIPES: dict[str, type[BaseModel]] = {"curate": CurateRecipe, "synthesize": SynthesizeRecipe}


# ---------------------------------------------------------------- errors
def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for listing allowed keys)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _format_error(model: type[BaseModel], err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # pydantic adds union/literal branch names to loc; keep only real field names and indices
    path = ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "list[str]"))))
    given = err.get("input")
    etype = err["type"]
    if etype == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        allowed = sorted(owner.model_fields) if owner else []
        bad = str(loc[-1])
        hint = difflib.get_close_matches(bad, allowed, n=1)
        msg = f"unknown field '{path}'"
        if hint:
            msg += f" (did you mean '{hint[0]}'?)"
        return msg + f"; allowed fields here: {', '.join(allowed)}"
    if etype == "missing":
        return f"missing required field '{path}'"
    if etype == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"invalid value {given!r} for '{path}'; allowed values: {expected}"
    owner = _model_at(model, loc[:-1]) if loc else None
    desc = ""
    if owner and loc and isinstance(loc[-1], str) and loc[-1] in owner.model_fields:
        d = owner.model_fields[loc[-1]].description
        desc = f" ({d})" if d else ""
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    where = f"'{path}'" if path else "recipe"
    return f"invalid value {given!r} for {where}{desc}: {msg}"


def parse_recipe(data: Any, source: str = "recipe") -> CurateRecipe | SynthesizeRecipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping, got {type(data).__name__}")
    kind = data.get("pipeline")
    if kind not in RECIPES:
        allowed = ", ".join(repr(k) for k in RECIPES)
        raise RecipeError(f"{source}: invalid value {kind!r} for 'pipeline'; allowed values: {allowed}")
    model = RECIPES[kind]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(model, errors[0])
        more = f" (and {len(errors) - 1} more problem(s): " + "; ".join(
            _format_error(model, e) for e in errors[1:4]
        ) + ")" if len(errors) > 1 else ""
        raise RecipeError(f"{source}: {first}{more}") from None


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> CurateRecipe | SynthesizeRecipe:
    """Read and validate a YAML recipe. ``overrides`` maps dotted paths to values."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {p}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{p}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise RecipeError(f"{p}: the recipe is empty")
    if isinstance(data, dict):
        for dotted, value in (overrides or {}).items():
            _set_dotted(data, dotted, value)
    return parse_recipe(data, source=str(p))


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value
