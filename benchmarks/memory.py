"""Memory as the input grows: peak RSS of every process of the ingest recipe at N images, in both local modes.

    python -m benchmarks.memory [--images 2000,20000] [--modes in_memory,multi_processing] [--threads 16]
                                [--json FILE]

Runs the ingest benchmark's unicurate run (``benchmarks.ingest.run_unicurate``: the same recipe and settings, the
same loopback web; each run a fresh ``unicurate run`` process into a fresh folder) on the first N images of one
generated corpus, for each N, on the DirectRunner in ``in_memory`` mode (1 worker: the pipeline runs in the driver
process) and in ``multi_processing`` mode (2 Beam worker processes). The server reads the JPEGs from disk for
each request (20,000 of them would take ~5 GB held in memory); it is not one of the measured processes.

For each run: the peak RSS (``VmHWM`` from /proc) of the driver and of each worker process, images/s over the
pipeline seconds as ``unicurate run`` prints them ("wrote ... in Xs"), the wall time (process start to exit), and
that ``unicurate validate`` passes with counts.inputs == N == kept + rejected.

Then, per mode and process role (the driver; the largest worker), the ratio of its peak RSS at the largest N to
that at the smallest: memory bounded independently of the input size stays within the target (<= 1.25).
Prints one JSON object, then a table. Exits 1 when a ratio misses the target or a run lost rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.common import LOCAL_MODES as MODES, cache_dir, corpus, run_and_report, serve, table

TARGET = 1.25  # largest N's peak RSS / smallest N's, per process role
ROLES = {"driver": "driver", "worker_max": "max_worker"}  # role in the result: key in peak_rss_mb


def run_one(urls: Path, workdir: Path, images: int, mode: str, threads: int, shard_rows: int) -> dict:
    """The ingest recipe's unicurate run on ``urls`` (``images`` rows) in ``mode``: memory, speed, row counts."""
    from benchmarks.ingest import run_unicurate

    r = run_unicurate(urls, workdir / f"out-{mode}-{images}", MODES[mode], threads, shard_rows, mode=mode)
    c, pipeline_s = r["counts"], r["pipeline_seconds"]
    return {"mode": mode, "workers": MODES[mode], "images": images, "wall_s": r["seconds"],
            "pipeline_s": pipeline_s, "images_per_s": round(images / pipeline_s, 1) if pipeline_s else None,
            "validated": True,  # run_unicurate raises when validate fails
            "counts": {k: c[k] for k in ("inputs", "kept", "rejected")},
            "rows_ok": c["inputs"] == images == c["kept"] + c["rejected"], "peak_rss_mb": r["peak_rss_mb"]}


def growth(runs: list[dict], mode: str) -> dict:
    """Per process role: the peak RSS at the largest and the smallest N of ``mode``'s runs, their ratio, and
    whether it is within :data:`TARGET` (roles a mode does not have, e.g. in_memory's workers, are left out)."""
    mine = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["images"])
    small, large = mine[0], mine[-1]
    out = {}
    for role, key in ROLES.items():
        a, b = small["peak_rss_mb"][key], large["peak_rss_mb"][key]
        if a and b:
            ratio = round(b / a, 3)
            out[role] = {"images": [small["images"], large["images"]], "peak_rss_mb": [a, b], "ratio": ratio,
                         "target": TARGET, "pass": ratio <= TARGET}
    return out


def bench(sizes: list[int], modes: list[str], threads: int, workdir: Path, shard_rows: int = 1000) -> dict:
    from benchmarks.ingest import write_url_list

    sizes = sorted(sizes)
    folder = corpus(sizes[-1], seed=0, dest=cache_dir() / f"jpegs-{sizes[-1]}-s0")
    runs = []
    with serve(folder, preload=False) as base:
        lists = {n: workdir / f"urls-{n}.parquet" for n in sizes}
        for n, path in lists.items():
            write_url_list(folder, base, path, limit=n)
        for mode in modes:
            for n in sizes:
                print(f"[memory] {mode}, {n} images ...", file=sys.stderr, flush=True)
                runs.append(run_one(lists[n], workdir, n, mode, threads, shard_rows))
    ratios = {mode: growth(runs, mode) for mode in modes}
    ok = all(r["rows_ok"] for r in runs) and all(g["pass"] for m in ratios.values() for g in m.values())
    return {"benchmark": "memory_vs_input_size", "images": sizes, "modes": modes, "threads": threads,
            "runs": runs, "ratio_largest_to_smallest": ratios, "target": TARGET, "pass": ok}


def print_table(r: dict) -> None:
    rows = [[x["mode"], x["images"], f"{x['wall_s']:.1f}", f"{x['pipeline_s'] or 0:.1f}", x["images_per_s"],
             f"{x['counts']['kept']} + {x['counts']['rejected']}", "ok" if x["rows_ok"] else "LOST ROWS",
             f"{x['peak_rss_mb']['driver']:.0f}", ", ".join(f"{m:.0f}" for m in x["peak_rss_mb"]["workers"]) or "-"]
            for x in r["runs"]]
    print(table(["mode", "images", "wall s", "pipeline s", "images/s", "kept + rejected", "rows", "driver MB",
                 "worker peak RSS MB"], rows))
    print()
    rows = [[mode, role, f"{g['images'][0]} -> {g['images'][1]}",
             f"{g['peak_rss_mb'][0]:.0f} -> {g['peak_rss_mb'][1]:.0f}", f"{g['ratio']:.2f}",
             f"<= {g['target']}", "pass" if g["pass"] else "FAIL"]
            for mode, roles in r["ratio_largest_to_smallest"].items() for role, g in roles.items()]
    print(table(["mode", "process", "images", "peak RSS MB", "ratio", "target", "result"], rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default="2000,20000", help="comma-separated input sizes (default 2000,20000)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated of {', '.join(MODES)}")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--keep", action="store_true", help="keep the working folder (its path is printed)")
    args = ap.parse_args(argv)
    sizes = [int(n) for n in args.images.split(",") if n]
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    if len(sizes) < 2:
        ap.error("--images needs at least two sizes to compare")
    r = run_and_report("unicurate-bench-memory-", lambda workdir: bench(sizes, modes, args.threads, workdir),
                       print_table, keep=args.keep, json_path=args.json, tag="memory")
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
