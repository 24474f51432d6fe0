"""Kill and resume: a curate run killed outright once half its work units are done, then rerun, downloads only
what it had not finished and writes the same bytes as a run that was never interrupted.

    python -m benchmarks.resume [--images 3000] [--unit 500] [--mode multi_processing] [--threads 16]
                                [--timeout 1800] [--json FILE]

Serves N generated JPEGs (``benchmarks.common.corpus``) on 127.0.0.1 from a server that counts the requests per
url, and runs the ingest benchmark's recipe (``benchmarks.ingest.ingest_recipe``) with the input cut into work
units of ``--unit`` rows (``--set input.rows_per_unit=UNIT``), on the DirectRunner in ``--mode`` (in_memory: 1
worker; multi_processing: 2 worker processes, the default), three times:

1. an uninterrupted reference run into ``OUT_REF``;
2. the same command into ``OUT``, started as its own process group; once at least half the units have
   completion records (``OUT/units/unit-*.json``), the whole group gets SIGKILL: the driver and its workers die
   at once, without a chance to clean up;
3. the same command again into ``OUT`` (no ``--restart``): it must exit 0 and resume.

Reports the requests of the killed run and of the rerun: their total must be at most images + workers x unit
(only the units in flight at the kill, at most one per worker process, are downloaded again; with one worker
that is images + unit), the units done at the kill, the rerun's ``units: X/Y done
(Z resumed)`` line, whether ``unicurate validate OUT`` passes, and whether every ``kept/`` and ``rejected/`` shard
of OUT is byte-identical (same names, same sha256) to OUT_REF's. The reference run's requests are counted
separately. Prints one JSON object, then a table; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from benchmarks.common import (LOCAL_MODES, bench_env, cache_dir, corpus, local_beam_args, request_counts,
                               run_and_report, serve, shard_hashes, table, unicurate_cmd, validate_output)

UNITS_LINE = re.compile(r"units: (\d+)/(\d+) done \((\d+) resumed\)")
OUT, REF = "out", "out-ref"  # the resumed run's and the reference run's output folders, in the working folder


# ------------------------------------------------------------------ the command and its runs
def run_command(recipe: Path, out: Path, unit: int, mode: str, *extra: str) -> list[str]:
    """``unicurate run RECIPE --output OUT --set input.rows_per_unit=UNIT [EXTRA] -- <mode's Beam flags>``."""
    return (unicurate_cmd() + ["run", str(recipe), "--output", str(out), "--set", f"input.rows_per_unit={unit}",
                               *extra] + local_beam_args(mode))


def run_to_end(cmd: list[str], cwd: Path) -> dict:
    """Run ``cmd`` to its end: its exit code, wall seconds, output (stdout + stderr) and ``units:`` line."""
    start = time.monotonic()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=bench_env(),
                          cwd=str(cwd))
    return {"exit": done.returncode, "seconds": round(time.monotonic() - start, 2),
            "units_line": units_line(done.stdout), "log": done.stdout}


def units_line(log: str) -> Optional[str]:
    m = UNITS_LINE.search(log)
    return m.group(0) if m else None


def unit_records(out: Path) -> list[int]:
    """The units with a completion record under ``out/units/`` (``unit-000003.json``: 3), in order."""
    return sorted(int(p.stem.split("-", 1)[1]) for p in (Path(out) / "units").glob("unit-*.json"))


def kill_when(cmd: list[str], cwd: Path, out: Path, records: int, timeout: float = 1800.0,
              every: float = 0.02) -> dict:
    """Start ``cmd`` as its own process group; once ``out`` holds ``records`` completion records (or after
    ``timeout`` seconds), SIGKILL the whole group. Whether it was killed (not finished by itself first), the
    records then (how many, of which units), its exit code, seconds, the group's processes still alive after the
    kill, and its output."""
    log_path = cwd / f"killed-{time.monotonic_ns()}.log"
    start = time.monotonic()
    with open(log_path, "w") as log:  # a file, not a pipe: nobody reads while it runs
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=bench_env(), cwd=str(cwd),
                                start_new_session=True)
        while proc.poll() is None and len(unit_records(out)) < records and time.monotonic() - start < timeout:
            time.sleep(every)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    done = unit_records(out)
    return {"killed": killed, "records_at_kill": len(done), "units_done_at_kill": done, "exit": code,
            "seconds": round(time.monotonic() - start, 2), "processes_left": group_alive(proc.pid),
            "log": log_path.read_text()}


def group_alive(pgid: int, wait: float = 2.0) -> list[int]:
    """The processes of group ``pgid`` still running (not zombies) ``wait`` seconds after it was killed."""
    time.sleep(wait)
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def counted(run: dict, base: str) -> dict:
    """``run`` with the requests the counting server at ``base`` answered since the last count (which then
    starts again from 0): per url ("urls") and in all ("requests")."""
    urls = request_counts(base, reset=True)
    return {**run, "urls": urls, "requests": sum(urls.values())}


# ------------------------------------------------------------------ the benchmark
def bench(images: int, unit: int, mode: str, threads: int, workdir: Path, shard_rows: int = 1000,
          timeout: float = 1800.0) -> dict:
    folder = corpus(images, seed=0, dest=cache_dir() / f"jpegs-{images}-s0")
    with serve(folder, count=True) as base:
        recipe = write_bench_recipe(folder, base, workdir, mode, threads, shard_rows)
        return measure(recipe, base, workdir, images, unit, mode, threads, timeout)


def write_bench_recipe(folder: Path, base: str, workdir: Path, mode: str, threads: int, shard_rows: int) -> Path:
    """The url list of the JPEGs in ``folder`` served at ``base``, and the ingest recipe on it in ``mode``."""
    from benchmarks.ingest import ingest_recipe, write_recipe, write_url_list

    urls = workdir / "urls.parquet"
    write_url_list(folder, base, urls)
    return write_recipe(ingest_recipe(urls, workdir / OUT, LOCAL_MODES[mode], threads, shard_rows, mode),
                        workdir / "bench-resume.yaml")


def measure(recipe: Path, base: str, workdir: Path, images: int, unit: int, mode: str, threads: int,
            timeout: float = 1800.0) -> dict:
    """The three runs of ``recipe`` (``images`` rows served by the counting server at ``base``) into
    ``workdir/OUT_REF`` and ``workdir/OUT``, and the result."""
    setting = {"images": images, "rows_per_unit": unit, "units": math.ceil(images / unit), "mode": mode,
               "workers": LOCAL_MODES[mode], "threads": threads}
    out, ref = workdir / OUT, workdir / REF
    counted({}, base)  # from 0
    reference = counted(run_to_end(run_command(recipe, ref, unit, mode), workdir), base)
    killed, rerun = kill_and_resume(run_command(recipe, out, unit, mode), workdir, out, setting["units"], base,
                                    timeout)
    return summarize(setting, reference, killed, rerun, out, ref)


def kill_and_resume(cmd: list[str], workdir: Path, out: Path, units: int, base: str,
                    timeout: float = 1800.0) -> tuple[dict, dict]:
    """Steps 2 and 3: ``cmd`` killed once half its ``units`` have records, then run again; each with the
    requests it made (:func:`counted`)."""
    killed = counted(kill_when(cmd, workdir, out, math.ceil(units / 2), timeout), base)
    rerun = counted(run_to_end(cmd, workdir), base)
    return killed, rerun


def summarize(setting: dict, reference: dict, killed: dict, rerun: dict, out: Path, ref: Path) -> dict:
    """The result: the runs, their requests, validate's verdict on ``out``, the shards compared with ``ref``'s,
    and each check."""
    requests = request_summary(setting, reference, killed, rerun)
    valid, said = validate_output(out)
    mine, theirs = shard_hashes(out), shard_hashes(ref)
    differing = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    checks = {
        "reference_exit_0": reference["exit"] == 0,
        "killed_with_some_but_not_all_units": killed["killed"] and 0 < killed["records_at_kill"] < setting["units"],
        "rerun_exit_0": rerun["exit"] == 0,
        "requests_within_bound": requests["total"] <= requests["bound"],
        "validates": valid,
        "byte_identical_to_reference": bool(theirs) and not differing,
    }
    return {"benchmark": "kill_and_resume", **setting,
            "reference": _step(reference), "killed": _step(killed), "rerun": _step(rerun), "requests": requests,
            "validate": said.strip().splitlines()[:20], "shards": len(theirs), "differing_shards": differing,
            "checks": checks, "pass": all(checks.values())}


def request_summary(setting: dict, reference: dict, killed: dict, rerun: dict) -> dict:
    """The requests of each run; killed + rerun against the bound images + workers x unit (the units in flight at
    the kill: one per worker process at most); the urls both asked for, and their units."""
    again = set(killed["urls"]) & set(rerun["urls"])
    return {"reference": reference["requests"], "killed": killed["requests"], "rerun": rerun["requests"],
            "total": killed["requests"] + rerun["requests"],
            "bound": setting["images"] + setting["workers"] * setting["rows_per_unit"],
            "within_images_plus_one_unit": killed["requests"] + rerun["requests"]
            <= setting["images"] + setting["rows_per_unit"],
            "urls_requested_again": len(again),
            "units_requested_again": sorted({url_position(u) // setting["rows_per_unit"] for u in again})}


def url_position(path: str) -> int:
    """The input row of a url path of the benchmark's url list: the corpus' JPEG ``/000123.jpg`` is row 123."""
    return int(Path(path).stem)


def _step(run: dict) -> dict:
    """A run's figures for the result; the tail of its output only when it failed by itself."""
    out = {k: v for k, v in run.items() if k not in ("log", "urls")}
    if run["exit"] != 0 and not run.get("killed"):
        out["log_tail"] = run["log"][-3000:]
    return out


def print_table(r: dict) -> None:
    q, k = r["requests"], r["killed"]
    rows = [["reference", r["reference"]["exit"], f"{r['reference']['seconds']:.1f}", q["reference"],
             r["reference"].get("units_line") or "-"],
            ["killed at half", "SIGKILL" if k["killed"] else k["exit"], f"{k['seconds']:.1f}", q["killed"],
             f"{k['records_at_kill']}/{r['units']} units had records {k['units_done_at_kill']}"],
            ["rerun", r["rerun"]["exit"], f"{r['rerun']['seconds']:.1f}", q["rerun"],
             r["rerun"].get("units_line") or "-"]]
    print(table(["run", "exit", "seconds", "requests", "units"], rows))
    print(f"requests killed + rerun: {q['total']} (bound images + workers x unit = {q['bound']}; within images + "
          f"one unit: {'yes' if q['within_images_plus_one_unit'] else 'no'}; "
          f"{q['urls_requested_again']} urls requested again, of units {q['units_requested_again'] or '-'})")
    print(table(["check", "result"], [[name, "pass" if ok else "FAIL"] for name, ok in r["checks"].items()]))
    print(f"{r['images']} JPEGs, units of {r['rows_per_unit']} rows, {r['mode']} ({r['workers']} worker(s))")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--unit", type=int, default=500, help="input.rows_per_unit (default 500)")
    ap.add_argument("--mode", choices=list(LOCAL_MODES), default="multi_processing")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=1800.0, help="kill the second run after this many seconds "
                                                                  "even if half its units are not done")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--keep", action="store_true", help="keep the working folder (its path is printed)")
    args = ap.parse_args(argv)
    r = run_and_report("unicurate-bench-resume-",
                       lambda workdir: bench(args.images, args.unit, args.mode, args.threads, workdir,
                                             timeout=args.timeout),
                       print_table, keep=args.keep, json_path=args.json, tag="resume")
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
