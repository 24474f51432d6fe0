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
import tempfile
from pathlib import Path

from benchmarks.common import bench_env, parse_run_log, run_measured

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
        "run", str(RECIPE), "--output", str(out), "--input", str(out / "input" / "urls.parquet"),
        "--set", f"sample_web.images={images}",
        *[a for s in STAGE_SETS[stage_set] for a in ("--set", s)],
        "--", f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing",
    ]
    wall, log, mem = run_measured(cmd, workdir)
    pipeline_s, stages = parse_run_log(log)
    pipeline_s = pipeline_s or wall
    fetch_s = stages.get("download+decode+rules")
    manifest = json.loads((out / "manifest.json").read_text())
    check = subprocess.run(unicurate + ["validate", str(out)], capture_output=True, text=True, env=bench_env())
    if check.returncode != 0:
        raise RuntimeError(f"validate failed for {out}:\n{check.stdout}{check.stderr}")
    inputs = manifest["counts"]["inputs"]
    worker_mb = sorted(round(kb / 1024, 1) for p, kb in mem.peak_kb.items() if mem.role.get(p) == "worker")
    driver_mb = round(mem.peak_kb.get(mem.pid, 0) / 1024, 1)
    worker_cpu = sorted(round(c, 1) for p, c in mem.cpu_s.items() if mem.role.get(p) == "worker")
    return {
        "stages": stage_set, "workers": workers, "inputs": inputs, "kept": manifest["counts"]["kept"],
        "pipeline_s": round(pipeline_s, 2), "wall_s": round(wall, 2),
        "rows_per_s": round(inputs / pipeline_s, 2) if pipeline_s > 0 else None,
        # the download/decode/resize/rules stage alone (first batch start to last batch end, all workers)
        "fetch_stage_s": fetch_s,
        "fetch_rows_per_s": round(inputs / fetch_s, 2) if fetch_s else None,
        "peak_rss_mb": {"driver": driver_mb, "workers": worker_mb,
                        "max_worker": max(worker_mb) if worker_mb else None},
        "cpu_s": {"driver": round(mem.cpu_s.get(mem.pid, 0.0), 1), "workers": worker_cpu,
                  # the driver's CPU while the pipeline ran (Beam's runner, shuffles, and the demo's sample web)
                  "driver_during_pipeline": round(mem.cpu_s.get(mem.pid, 0.0)
                                                  - (mem.driver_cpu_at_first_worker or 0.0), 1)},
    }


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
    workdir = Path(tempfile.mkdtemp(prefix="unicurate-scaling-"))
    runs = []
    try:
        for stage_set in stage_sets:
            for w in workers:  # side by side: the same stage set on 1, 2, ... workers back to back
                print(f"[scaling] {stage_set}, {w} worker(s) ...", file=sys.stderr, flush=True)
                runs.append(run_once(stage_set, w, args.images, workdir, unicurate))
    finally:
        if args.keep:
            print(f"[scaling] outputs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    speedups = {}
    for stage_set in stage_sets:
        base = next((r for r in runs if r["stages"] == stage_set and r["workers"] == workers[0]), None)
        for r in runs:
            if r["stages"] == stage_set and base is not None:
                r["speedup"] = round(base["pipeline_s"] / r["pipeline_s"], 2)
                r["fetch_speedup"] = (round(base["fetch_stage_s"] / r["fetch_stage_s"], 2)
                                      if base.get("fetch_stage_s") and r.get("fetch_stage_s") else None)
                speedups[f"{stage_set}@{r['workers']}"] = {"pipeline": r["speedup"], "fetch_stage": r["fetch_speedup"]}
    result = {
        "benchmark": "local_scaling",
        "recipe": str(RECIPE.relative_to(ROOT)),
        "images": args.images,
        "cpu_count": os.cpu_count(),
        "mode": "DirectRunner multi_processing",
        "runs": runs,
        "speedup_vs_first": speedups,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print()
    print(f"{'stages':<17}{'workers':>8}{'rows':>6}{'pipeline s':>11}{'speed-up':>9}{'fetch s':>9}{'speed-up':>9}"
          f"{'driver MB':>11}  worker peak RSS MB  (CPU s: driver; workers)")
    for r in runs:
        fs = f"{r['fetch_stage_s']:>9.2f}" if r.get("fetch_stage_s") else f"{'-':>9}"
        fx = f"{r['fetch_speedup']:>8.2f}x" if r.get("fetch_speedup") else f"{'-':>9}"
        print(f"{r['stages']:<17}{r['workers']:>8}{r['inputs']:>6}{r['pipeline_s']:>11.1f}{r.get('speedup', 1.0):>8.2f}x"
              f"{fs}{fx}{r['peak_rss_mb']['driver']:>11.0f}  "
              f"{', '.join(f'{m:.0f}' for m in r['peak_rss_mb']['workers']) or '-'}"
              f"  ({r['cpu_s']['driver']:.0f}; {', '.join(f'{c:.0f}' for c in r['cpu_s']['workers']) or '-'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
