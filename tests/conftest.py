"""Shared fixtures. Tests never leave 127.0.0.1 and never contact a model hub."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# datasets caches what load_dataset builds, keyed by the data files' paths: a fresh cache per test session, so a
# folder exported again under a path an earlier session used is read from disk, not from a stale cache
import tempfile  # noqa: E402

os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="unicurate-test-hf-datasets-")
# hypothesis keeps caches (and, unless a test says database=None, examples) in ./.hypothesis: not in the repo
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="unicurate-test-hypothesis-"))

import copy  # noqa: E402
import subprocess  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from unicurate.config import parse_recipe  # noqa: E402
from unicurate.sampleweb import SampleWeb  # noqa: E402

SLOW = 2.5  # the sample web's slow case; recipes below time out after 1 s (a loaded machine can stall 0.5 s)


@pytest.fixture(scope="session")
def web():
    """The sample web (60 images + broken cases), served for the whole session."""
    with SampleWeb(n_images=60, seed=0, slow_seconds=SLOW) as w:
        yield w


def base_recipe(input_path, output_path, **sections) -> dict:
    data = {
        "pipeline": "curate",
        "input": {"path": str(input_path)},
        "output": {"path": str(output_path), "rows_per_shard": 25},
        "download": {"timeout": 1.0, "max_seconds": 5, "thread_count": 16, "allow_private_networks": True},
        "resize": {"image_size": 256, "encode_quality": 90},
        "filters": {"min_width": 64, "min_height": 64, "max_aspect_ratio": 3.0, "caption_min_words": 1},
        "models": {"profile": "tiny"},
        "runner": {"direct_num_workers": 1},  # in-memory; tests that scale out say so
    }
    return _merge(data, sections)


def syn_base_recipe(input_path, output_path, **sections) -> dict:
    """A synthesize recipe for tests (tiny models in batches of 4, one in-memory worker, no re-detection or CLIP
    similarity check), each of ``sections`` merged into its section as in :func:`base_recipe`."""
    data = {
        "pipeline": "synthesize",
        "input": {"path": str(input_path)},
        "output": {"path": str(output_path)},
        "models": {"profile": "tiny", "batch_size": 4},
        "runner": {"direct_num_workers": 1},
        "checks": {"redetect": False, "clip_similarity": False, "min_clip_similarity": None,
                   "max_clip_similarity": None, "max_change_outside": 0.0},
    }
    return _merge(data, sections)


def _merge(data: dict, sections: dict) -> dict:
    for name, values in sections.items():
        data.setdefault(name, {}).update(copy.deepcopy(values))
    return data


@pytest.fixture
def make_recipe():
    def make(input_path, output_path, **sections):
        return parse_recipe(base_recipe(input_path, output_path, **sections))

    return make


@pytest.fixture(scope="session")
def web_input(web, tmp_path_factory) -> Path:
    return web.write_input(tmp_path_factory.mktemp("web") / "urls.parquet")


@pytest.fixture(scope="session")
def curated(web, web_input, tmp_path_factory):
    """One curate run over the sample web, shared by the read-only tests."""
    from unicurate.run.execute import run_curate

    out = tmp_path_factory.mktemp("curated")
    recipe = parse_recipe(base_recipe(web_input, out))
    manifest = run_curate(recipe, say=lambda _m: None)
    return out, manifest


SCORED_FILTERS = {"clip_score": {"keep_top_fraction": 0.9}, "aesthetic": {"min_score": None},
                  "watermark": {"max_score": None}, "dedup": {"exact": True}}


@pytest.fixture(scope="session")
def scored(web, web_input, tmp_path_factory):
    """A curate run with tiny model filters whose shards keep rejected images (stats, whatif, report, export)."""
    from unicurate.run.execute import run_curate

    out = tmp_path_factory.mktemp("scored")
    data = base_recipe(web_input, out, filters=SCORED_FILTERS, output={"keep_rejected_images": True})
    manifest = run_curate(parse_recipe(data), say=lambda _m: None)
    return out, manifest, data


@pytest.fixture(scope="session")
def synthesized(scored, tmp_path_factory):
    """A tiny synthesis run over the scored run's first kept images."""
    from unicurate.run.execute import run_synthesize

    out = tmp_path_factory.mktemp("synthesized")
    recipe = parse_recipe(syn_base_recipe(
        scored[0], out, input={"max_images": 8}, output={"images_per_shard": 4},
        quality={"min_pred_iou": 0.0, "min_stability": 0.0}, edits={"per_object": 7},
        checks={"clip_similarity": True}))
    manifest = run_synthesize(recipe, say=lambda _m: None)
    return out, manifest


def rewrite_shard(out_dir, rel: str, change) -> None:
    """Test helper: rewrite one shard's rows with ``change(rows)`` and fix its manifest entry (size, sha, rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(out_dir) / rel
    table = pq.read_table(path)
    rows = change(table.to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path, compression="zstd")
    refresh_manifest_entry(out_dir, rel, rows=len(rows))


def refresh_manifest_entry(out_dir, rel: str, rows: int | None = None) -> None:
    """Test helper: make the manifest entry of shard ``rel`` match the file again (size, sha256 and, when given,
    the row count)."""
    import hashlib
    import json

    mpath = Path(out_dir) / "manifest.json"
    m = json.loads(mpath.read_text())
    data = (Path(out_dir) / rel).read_bytes()
    fields = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if rows is not None:
        fields["rows"] = rows
    for entries in m["shards"].values():
        for e in entries:
            if e["path"] == rel:
                e.update(fields)
    mpath.write_text(json.dumps(m))


# ------------------------------------------------------------------ reading an output folder's shards
SHARD_TABLES = ("kept", "rejected")


def shard_files(out, subs=SHARD_TABLES) -> list[Path]:
    """The ``part-*.parquet`` shards of ``out``'s ``subs`` folders: folder by folder, by name within each."""
    return [f for sub in subs for f in sorted((Path(out) / sub).glob("part-*.parquet"))]


def first_shard(out, sub: str) -> Path:
    """The first shard (by name) of ``out/sub`` that holds rows: a run writes a fixed number of shards, and one of
    them may be empty when few rows are spread over them."""
    import pyarrow.parquet as pq

    files = shard_files(out, (sub,))
    assert files, f"no shards under {sub}/"
    return next((f for f in files if pq.ParquetFile(f).metadata.num_rows), files[0])


def output_frame(out, subs=SHARD_TABLES):
    """Every row of those shards as one polars DataFrame."""
    import polars as pl

    return pl.concat([pl.read_parquet(f) for f in shard_files(out, subs)])


def output_rows(out, subs=SHARD_TABLES, columns=None) -> list[dict]:
    """Every row of those shards (only ``columns``, when given) as Python dicts, read with pyarrow."""
    import pyarrow.parquet as pq

    return [r for f in shard_files(out, subs) for r in pq.read_table(f, columns=columns).to_pylist()]


# ------------------------------------------------------------------ the command as a user runs it
def unicurate(*args, cwd=None, timeout=240) -> subprocess.CompletedProcess:
    """``unicurate ARGS`` in a subprocess (unbuffered output, captured as text)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "unicurate.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or name lookup beyond 127.0.0.1 fails the test (and is recorded)."""
    attempts: list = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local(host) -> bool:
        return host in ("127.0.0.1", "localhost", "::1") or str(host).startswith("/")

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if not local(host):
            attempts.append(address)
            raise OSError(f"test: network access to {address} refused")
        return real_connect(self, address)

    def getaddrinfo(host, *a, **kw):
        if not local(host):
            attempts.append(host)
            raise socket.gaierror(f"test: name lookup of {host} refused")
        return real_getaddrinfo(host, *a, **kw)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts
