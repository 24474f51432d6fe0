"""Local scale-out: the quickstart curate recipe on 1 and 2 Beam worker processes, in one invocation.

    python -m benchmarks.scaling [--images 400] [--workers 1,2] [--json out.json]

Runs ``configs/quickstart.yaml`` (its generated sample web, served on 127.0.0.1)
through ``unicurate run`` in a fresh subprocess per configuration, on the
DirectRunner in ``multi_processing`` mode with ``direct_num_workers`` = 1 and 2,
for two stage sets:

* ``download+decode``: download, decode, resize, rule filters, dedup, write
  (every model filter switched off with ``--set``);
* ``full``: the whole quickstart recipe (tiny CLIP/aesthetic/watermark models,
  NudeNet, RapidOCR).

For each run it reports the pipeline's wall time (as ``unicurate run`` prints
it: from pipeline start to manifest, excluding interpreter start, model checks
and sample-web generation), images per second, the speed-up of N workers over 1
(ratio of the two times, measured side by side in the same invocation), and the
peak RSS (``VmHWM`` from ``/proc``) of the driver and of each Beam worker
process. Every run writes its output to a temporary folder that must validate.

Prints one JSON object, then a table. The machine is noisy (2 shared cores
here): compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.common import bench_env, parse_run_log, run_and_report, run_measured, table

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "quickstart.yaml"
MODEL_FILTERS = ("clip_score", "aesthetic", "nsfw", "watermark", "text_coverage")
STAGE_SETS = {
    "download+decode": [f"filters.{name}=null" for name in MODEL_FILTERS],
    "full": [],
}


# ------------------------------------------------------------------ one run
def run_once(stage_set: str, workers: int, images: int, workdir: Path, unicurate: list[str]) -> dict:
    out = workdir / f"{stage_set.replace('+', '_')}-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = unicurate + [
        "run", str(RECIPE), "--output", str(out),
        "--set", f"sample_web.images={images}",
        *[a for s in STAGE_SETS[stage_set] for a in ("--set", s)],
        "--", f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing",
    ]
    wall, log, mem = run_measured(cmd, workdir)
    pipeline_s, stages = parse_run_log(log)
    pipeline_s = pipeline_s or wall
    fetch_s = stages.get("work units")
    manifest = json.loads((out / "manifest.json").read_text())
    check = subprocess.run(unicurate + ["validate", str(out)], capture_output=True, text=True, env=bench_env())
    if check.returncode != 0:
        raise RuntimeError(f"validate failed for {out}:\n{check.stdout}{check.stderr}")
    inputs = manifest["counts"]["inputs"]
    mem_summary = mem.summary()
    return {
        "stages": stage_set, "workers": workers, "inputs": inputs, "kept": manifest["counts"]["kept"],
        "pipeline_s": round(pipeline_s, 2), "wall_s": round(wall, 2),
        "rows_per_s": round(inputs / pipeline_s, 2) if pipeline_s > 0 else None,
        # the download/decode/resize/rules stage alone (first batch start to last batch end, all workers)
        "fetch_stage_s": fetch_s,
        "fetch_rows_per_s": round(inputs / fetch_s, 2) if fetch_s else None,
        "peak_rss_mb": mem_summary["peak_rss_mb"],
        "cpu_s": {**mem_summary["cpu_s"],
                  # the driver's CPU while the pipeline ran (Beam's runner, shuffles, and the demo's sample web)
                  "driver_during_pipeline": round(mem.cpu_s.get(mem.pid, 0.0)
                                                  - (mem.driver_cpu_at_first_worker or 0.0), 1)},
    }


def speedups(runs: list[dict], stage_sets: list[str], first_workers: int) -> dict:
    """Each run's speed-up over the same stage set on ``first_workers`` workers: set on the runs ("speedup",
    "fetch_speedup") and returned by "STAGES@WORKERS"."""
    out = {}
    for stage_set in stage_sets:
        base = next((r for r in runs if r["stages"] == stage_set and r["workers"] == first_workers), None)
        for r in runs:
            if r["stages"] == stage_set and base is not None:
                r["speedup"] = round(base["pipeline_s"] / r["pipeline_s"], 2)
                r["fetch_speedup"] = (round(base["fetch_stage_s"] / r["fetch_stage_s"], 2)
                                      if base.get("fetch_stage_s") and r.get("fetch_stage_s") else None)
                out[f"{stage_set}@{r['workers']}"] = {"pipeline": r["speedup"], "fetch_stage": r["fetch_speedup"]}
    return out


def print_table(result: dict) -> None:
    rows = [[r["stages"], r["workers"], r["inputs"], f"{r['pipeline_s']:.1f}", f"{r.get('speedup', 1.0):.2f}x",
             f"{r['fetch_stage_s']:.2f}" if r.get("fetch_stage_s") else "-",
             f"{r['fetch_speedup']:.2f}x" if r.get("fetch_speedup") else "-",
             f"{r['peak_rss_mb']['driver']:.0f}",
             ", ".join(f"{m:.0f}" for m in r["peak_rss_mb"]["workers"]) or "-",
             f"{r['cpu_s']['driver']:.0f}; " + (", ".join(f"{c:.0f}" for c in r["cpu_s"]["workers"]) or "-")]
            for r in result["runs"]]
    print(table(["stages", "workers", "rows", "pipeline s", "speed-up", "fetch s", "speed-up", "driver MB",
                 "worker peak RSS MB", "CPU s: driver; workers"], rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=400, help="generated images in the sample web (plus ~14 "
                                                              "broken cases); default 400")
    ap.add_argument("--workers", default="1,2", help="comma-separated direct_num_workers values (default 1,2)")
    ap.add_argument("--stages", default=",".join(STAGE_SETS), help=f"comma-separated of {', '.join(STAGE_SETS)}")
    ap.add_argument("--json", help="also write the JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the output folders (printed)")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    stage_sets = [s for s in args.stages.split(",") if s]
    for s in stage_sets:
        if s not in STAGE_SETS:
            ap.error(f"unknown stage set {s!r}; choose from {', '.join(STAGE_SETS)}")
    exe = shutil.which("unicurate")
    unicurate = [exe] if exe else [sys.executable, "-m", "unicurate.cli"]

    def bench(workdir: Path) -> dict:
        runs = []
        for stage_set in stage_sets:
            for w in workers:  # side by side: the same stage set on 1, 2, ... workers back to back
                print(f"[scaling] {stage_set}, {w} worker(s) ...", file=sys.stderr, flush=True)
                runs.append(run_once(stage_set, w, args.images, workdir, unicurate))
        return {
            "benchmark": "local_scaling",
            "recipe": str(RECIPE.relative_to(ROOT)),
            "images": args.images,
            "cpu_count": os.cpu_count(),
            "mode": "DirectRunner multi_processing",
            "runs": runs,
            "speedup_vs_first": speedups(runs, stage_sets, workers[0]),
        }

    run_and_report("unicurate-scaling-", bench, print_table, keep=args.keep, json_path=args.json, tag="scaling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
