"""Nothing lost at scale: the ingest recipe on N generated images, several times in a row, multi-process.

    python -m benchmarks.lossless [--images 10000] [--processes 2] [--runs 10] [--threads 16] [--json FILE]

At 10,000 web-sized JPEGs on 2 local worker processes, runs used to exit 0 with rows missing (issue 16). This
script repeats the ingest benchmark's unicurate run (``benchmarks.ingest.run_unicurate``: the same recipe, the
same loopback web, each run a fresh ``unicurate run`` process into a fresh folder) and, for every run, records
whether it exited 0, the input rows, kept + rejected, what ``unicurate validate`` said and the wall time. A run
that loses rows must now fail by itself (the driver's check); this script fails if any run lost a row or failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.common import cache_dir, corpus, run_and_report, serve, table
from unicurate.manifests.manifest import CHECK_REPORT_NAME


def bench(images: int, processes: int, threads: int, runs: int, workdir: Path) -> dict:
    from benchmarks.ingest import run_unicurate, write_url_list

    folder = corpus(images, seed=0, dest=cache_dir() / f"jpegs-{images}-s0")
    urls = workdir / "urls.parquet"
    results = []
    with serve(folder) as base:
        n_rows = write_url_list(folder, base, urls)
        for i in range(runs):
            start = time.monotonic()
            try:
                r = run_unicurate(urls, workdir / "unicurate-out", processes, threads, shard_rows=1000)
                c = r["funnel"]
                results.append({"run": i + 1, "ok": True, "inputs": r["rows"], "rows_out": c["inputs"],
                                "kept": r["images_ok"], "seconds": r["seconds"],
                                "peak_rss_mb": r["peak_rss_mb"]})
            except RuntimeError as exc:  # the run failed (its own check) or validate failed: both are findings
                report = workdir / "unicurate-out" / CHECK_REPORT_NAME  # the next run starts by removing the folder
                check = json.loads(report.read_text()) if report.exists() else {}
                results.append({"run": i + 1, "ok": False, "inputs": n_rows,
                                "rows_out": ((check.get("counts") or {}).get("kept", 0)
                                             + (check.get("counts") or {}).get("rejected", 0)) if check else None,
                                "seconds": round(time.monotonic() - start, 1), "error": str(exc)[-2000:],
                                "elements_per_pcollection": check.get("elements_per_pcollection")})
            last = results[-1]
            print(f"[lossless] run {i + 1}/{runs}: {'ok' if last['ok'] else 'FAILED'}, "
                  f"{last.get('rows_out')} of {last['inputs']} rows, {last['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
    lost = [r for r in results if not r["ok"] or r["rows_out"] != r["inputs"]]
    return {"benchmark": "lossless", "images": images, "processes": processes, "threads": threads,
            "runs": runs, "runs_losing_rows_or_failing": len(lost), "results": results}


def print_table(r: dict) -> None:
    rows = [[x["run"], "ok" if x["ok"] else "FAILED", x["inputs"], x.get("rows_out"), f"{x['seconds']:.0f}"]
            for x in r["results"]]
    print(table(["run", "exit", "inputs", "kept + rejected", "seconds"], rows))
    print(f"{r['runs'] - r['runs_losing_rows_or_failing']} of {r['runs']} runs kept every row "
          f"({r['images']} JPEGs, {r['processes']} processes x {r['threads']} threads)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    r = run_and_report("unicurate-bench-lossless-",
                       lambda workdir: bench(args.images, args.processes, args.threads, args.runs, workdir),
                       print_table, json_path=args.json, tag="lossless")
    return 1 if r["runs_losing_rows_or_failing"] else 0


if __name__ == "__main__":
    sys.exit(main())
