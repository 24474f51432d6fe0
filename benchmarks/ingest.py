"""Ingest: unicurate's curate pipeline versus img2dataset's own ``download()``, on the same loopback web.

    python -m benchmarks.ingest [--images 2000] [--processes 2] [--threads 16]

Generates N distinct JPEGs (300-1500 px per side, smooth colour fields with
noise, JPEG quality 90: typical web sizes of 50-600 KB), serves them from
memory on 127.0.0.1 from a separate process, writes one url list (parquet, url
and caption columns), then runs, back to back, each in a fresh subprocess:

* **img2dataset**: ``img2dataset.download()`` with its multiprocessing
  distributor, ``processes_count`` processes x ``thread_count`` threads, the
  same resize settings (size, mode, interpolation, encode format and quality),
  the same size/aspect limits (``min_image_size``, ``max_aspect_ratio``),
  timeout and retries, parquet output with the same rows per shard;
  ``extract_exif=False`` so both write the same columns;
* **unicurate**: ``unicurate run`` on a curate recipe with the same settings and
  only download + decode + resize + rule filters (+ exact dedup) enabled, on the
  DirectRunner with ``direct_num_workers`` = processes in ``multi_processing``
  mode and ``download.thread_count`` = threads.

Both times are end to end (process start to exit, as a user waits for them).
Images/s = successfully written images / seconds. Peak RSS per process comes from
``/proc`` (``VmHWM``). Both outputs are checked: the same number of images written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from benchmarks.common import (cache_dir, corpus, parse_run_log, run_and_report, run_measured, serve, table,
                               unicurate_cmd, validate_output)

RESIZE = {"image_size": 384, "resize_mode": "keep_ratio", "upscale_interpolation": "lanczos",
          "downscale_interpolation": "area", "encode_format": "jpg", "encode_quality": 92}
RULES = {"min_size": 64, "max_aspect_ratio": 3.0}


def _i2d_role(pid: int, cmd: str, root: int) -> str:
    """img2dataset's distributor forks its workers (same command line); the resource tracker is not one."""
    if pid == root:
        return "driver"
    return "worker" if "python" in cmd.split(" ", 1)[0] and "resource_tracker" not in cmd else "other"


def run_img2dataset(urls: Path, out: Path, processes: int, threads: int, shard_rows: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    kwargs = dict(url_list=str(urls), input_format="parquet", url_col="url", caption_col="caption",
                  output_format="parquet", output_folder=str(out), processes_count=processes,
                  thread_count=threads, distributor="multiprocessing", number_sample_per_shard=shard_rows,
                  timeout=10, retries=0, extract_exif=False, min_image_size=RULES["min_size"],
                  max_aspect_ratio=RULES["max_aspect_ratio"], **RESIZE)
    code = ("import logging, sys; logging.disable(logging.WARNING)\n"
            "from img2dataset import download\n"
            f"download(**{kwargs!r})\n")
    wall, log, mem = run_measured([sys.executable, "-c", code], out.parent,
                                    role_of=_i2d_role)
    import pyarrow.parquet as pq

    written = sum(pq.read_metadata(p).num_rows for p in out.glob("*.parquet"))
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    ok = sum(s.get("successes", 0) for s in stats)
    return {"tool": "img2dataset", "seconds": round(wall, 2), "images_ok": ok, "rows": written,
            "images_per_s": round(ok / wall, 1), **mem.summary()}


def local_mode(processes: int, mode: Optional[str] = None) -> str:
    """The DirectRunner mode of a run on ``processes`` workers: ``mode`` when given, else multi_processing with
    more than one."""
    return mode or ("multi_processing" if processes > 1 else "in_memory")


def ingest_recipe(urls: Path, out: Path, processes: int, threads: int, shard_rows: int,
                  mode: Optional[str] = None) -> dict:
    """The ingest benchmark's curate recipe: download + decode + resize + rule filters + exact dedup, the same
    settings as the img2dataset run, on ``processes`` local workers (``mode``: see :func:`local_mode`). A work unit
    holds ``shard_rows`` rows, as an img2dataset shard does (``number_sample_per_shard``): the same grain of
    parallelism and of work lost to a kill on both sides."""
    return {
        "pipeline": "curate", "name": "bench-ingest",
        "input": {"path": str(urls), "url_col": "url", "caption_col": "caption", "rows_per_unit": shard_rows},
        "output": {"path": str(out), "rows_per_shard": shard_rows},
        "download": {"timeout": 10, "retries": 0, "thread_count": threads, "allow_private_networks": True},
        "resize": dict(RESIZE),
        "filters": {"min_width": RULES["min_size"], "min_height": RULES["min_size"],
                    "max_aspect_ratio": RULES["max_aspect_ratio"], "caption_min_words": 1,
                    "dedup": {"exact": True, "near": False}},
        "models": {"profile": "tiny"},
        "runner": {"profile": "local", "direct_num_workers": processes,
                   "direct_running_mode": local_mode(processes, mode)},
    }


def write_recipe(recipe: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_unicurate(urls: Path, out: Path, processes: int, threads: int, shard_rows: int,
                  mode: Optional[str] = None) -> dict:
    """One measured ``unicurate run`` of :func:`ingest_recipe` into a fresh ``out``, which must then validate."""
    shutil.rmtree(out, ignore_errors=True)
    path = write_recipe(ingest_recipe(urls, out, processes, threads, shard_rows, mode),
                        out.parent / "bench-ingest.yaml")
    wall, log, mem = run_measured(unicurate_cmd() + ["run", str(path)], out.parent, role_of=None)
    manifest = json.loads((out / "manifest.json").read_text())
    images_ok = manifest["counts"]["kept"]
    ok, said = validate_output(out)
    if not ok:
        raise RuntimeError(f"unicurate validate failed:\n{said}")
    return {"tool": "unicurate", "seconds": round(wall, 2), "images_ok": images_ok,
            "rows": manifest["counts"]["inputs"], "images_per_s": round(images_ok / wall, 1),
            "pipeline_seconds": parse_run_log(log)[0], "counts": manifest["counts"], "funnel": manifest["funnel"],
            **mem.summary()}


def write_url_list(folder: Path, base: str, path: Path, limit: Optional[int] = None) -> int:
    """The url list of the corpus in ``folder`` served at ``base`` (its first ``limit`` images by name, when
    given): parquet, url and caption columns; its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(p.name for p in folder.glob("*.jpg"))[:limit]
    pq.write_table(pa.table({"url": [f"{base}/{n}" for n in names],
                             "caption": [f"a generated test photo number {i}" for i in range(len(names))]}), path)
    return len(names)


def bench(images: int, processes: int, threads: int, workdir: Path, shard_rows: int = 1000) -> dict:
    folder = corpus(images, seed=0, dest=cache_dir() / f"jpegs-{images}-s0")
    urls = workdir / "urls.parquet"
    with serve(folder) as base:
        write_url_list(folder, base, urls)
        i2d = run_img2dataset(urls, workdir / "img2dataset", processes, threads, shard_rows)
        uni = run_unicurate(urls, workdir / "unicurate-out", processes, threads, shard_rows)
    if i2d["images_ok"] != uni["images_ok"]:
        print(f"[ingest] note: img2dataset wrote {i2d['images_ok']} images, unicurate kept {uni['images_ok']}",
              file=sys.stderr)
    sizes = [p.stat().st_size for p in folder.glob("*.jpg")]
    return {
        "benchmark": "ingest_vs_img2dataset", "images": images, "processes": processes, "threads": threads,
        "corpus_mb": round(sum(sizes) / 2**20, 1), "mean_kb": round(sum(sizes) / len(sizes) / 1024, 1),
        "resize": RESIZE, "img2dataset": i2d, "unicurate": uni,
        "ratio": round(uni["images_per_s"] / i2d["images_per_s"], 3) if i2d["images_per_s"] else None,
    }


def print_table(r: dict) -> None:
    rows = []
    for t in ("img2dataset", "unicurate"):
        x = r[t]
        rows.append([t, x["images_ok"], f"{x['seconds']:.1f}", f"{x['images_per_s']:.1f}",
                     f"{x['peak_rss_mb']['driver']:.0f}", ", ".join(f"{m:.0f}" for m in x["peak_rss_mb"]["workers"])])
    print(table(["ingest", "images", "seconds", "images/s", "driver MB", "worker peak RSS MB"], rows))
    print(f"ratio unicurate / img2dataset: {r['ratio']:.2f}x  ({r['images']} JPEGs, {r['mean_kb']:.0f} KB mean, "
          f"{r['processes']} processes x {r['threads']} threads)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the working folder (its path is printed)")
    args = ap.parse_args(argv)
    run_and_report("unicurate-bench-ingest-", lambda workdir: bench(args.images, args.processes, args.threads, workdir),
                   print_table, keep=args.keep, tag="ingest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
