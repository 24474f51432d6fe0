"""Semantic dedup (SemDeDup) at scale: the real ``SemanticDedup`` transform on planted near copies.

    python -m benchmarks.semdedup [--rows 100000] [--small 10000] [--dim 512] [--modes in_memory,multi_processing]
                                  [--json FILE] [--quick]

A synthetic CLIP-like embedding set of N rows: each row's vector is one of ``TOPICS`` random unit "topic" centres
plus isotropic noise (cosine between two rows of a topic ~0.64, of two topics ~0), L2-normalised and packed as
float16 like the product's embeddings. ``COPY_FRACTION`` of the rows are planted near copies of an earlier row
(that row's vector plus small noise: cosine 0.98-0.99 to it, >= 0.96 between two copies of one row), in groups of 2
and of 3; clip scores are uniform random; ``REJECT_FRACTION`` of the rows (copies included) are fed as positions
already rejected run-wide. Every row is a pure function of (seed, N, position): the pipeline generates its members
in a FlatMap over chunk indexes (``CHUNK`` rows each), so no list of rows is built in the driver.

Each (mode, N) is a fresh Python process that runs ``unicurate.pipelines.semantic.SemanticDedup`` with the default
``SemanticDedupConfig`` (threshold 0.95, cluster_rows 1000) on Beam's local FnApiRunner as ``unicurate run``
creates it (``Launch.engine()``): ``in_memory`` (1 worker, the pipeline runs in the driver process) and
``multi_processing`` (2 SDK worker processes), writing the (loser, kept key) pairs with WriteToText. Measured per
run: wall time (process start to exit), pipeline time (``p.run()`` to finish; it includes generating the rows,
whose cost in one process is reported beside the generator's margins), peak RSS (``VmHWM``) and CPU of the
driver and of each worker (``benchmarks.common.PeakMemory``).

Then, outside the measured process, the losers are checked against the planted truth: recall (planted copies
reported / planted copies that were candidates), false positives (any other row reported), groups whose kept row is
not their best clip_score (or whose losers name another row), and rejected positions reported. The generator's own
guarantee is checked too, on the same vectors after float16 rounding: the lowest cosine within a planted group and
the highest between rows of different groups (exact within each topic, where the high ones are; a sample of rows
against all for pairs across topics). Exits 1 when a check fails.

``--quick``: 500 and 2,000 rows, ``in_memory`` only (well under a minute on 2 cores), for a smoke test.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from benchmarks.common import LOCAL_MODES as MODES, run_and_report, run_measured, table

ROOT = Path(__file__).resolve().parent.parent
TOPICS = 300  # topic centres (k-means has structure: ~3 topics per cluster at 100k rows and cluster_rows 1000)
SPREAD = 0.75  # noise norm around a topic centre: cosine within a topic ~ 1 / (1 + SPREAD^2) = 0.64
COPY_FRACTION = 0.05  # rows that are planted copies of an earlier row
TRIPLES = 0.3  # share of the planted copies that are in groups of 3 (a row and two copies of it)
COPY_COS = (0.98, 0.99)  # cosine of a planted copy to the row it copies
REJECT_FRACTION = 0.02  # rows given as rejected run-wide (never candidates)
CHUNK = 1000  # rows generated per element of the chunk PCollection
SEED = 0
MARKER = "SEMDEDUP_RUN "  # the measured process's result line


# ------------------------------------------------------------------ the synthetic set (pure functions of seed, N)
class Plan(NamedTuple):
    """Everything about N rows but their noise: small arrays, the same in every process that computes them."""

    centres: np.ndarray  # (TOPICS, dim) unit vectors
    topic: np.ndarray  # (N,) topic of each row (a copy: its source's)
    source: np.ndarray  # (N,) the row whose vector this one copies; itself for a row that is not a copy
    eps: np.ndarray  # (N,) noise norm of a copy (0 for the others)
    score: np.ndarray  # (N,) clip_score
    rejected: np.ndarray  # (N,) bool: rejected run-wide
    groups: tuple  # tuples of positions, the source first: the planted groups of 2 and 3


@functools.lru_cache(maxsize=2)
def plan(rows: int, dim: int, seed: int) -> Plan:
    rng = np.random.default_rng((seed, rows, dim))
    centres = rng.standard_normal((TOPICS, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    topic = rng.integers(0, TOPICS, rows)
    n_copies = int(round(COPY_FRACTION * rows))
    triples = int(round(n_copies * TRIPLES / 2))
    pairs = n_copies - 2 * triples
    chosen = rng.choice(rows, size=3 * triples + 2 * pairs, replace=False)
    groups = [tuple(sorted(int(x) for x in chosen[i:i + 3])) for i in range(0, 3 * triples, 3)]
    groups += [tuple(sorted(int(x) for x in chosen[i:i + 2])) for i in range(3 * triples, len(chosen), 2)]
    source = np.arange(rows)
    eps = np.zeros(rows, dtype=np.float64)
    cos = rng.uniform(*COPY_COS, rows)
    for g in groups:
        for c in g[1:]:
            source[c] = g[0]
            topic[c] = topic[g[0]]
            eps[c] = math.sqrt(1.0 / cos[c] ** 2 - 1.0)  # |u + eps z| with |z| ~ 1, z ~ orthogonal to u
    score = rng.uniform(0.15, 0.40, rows)
    rejected = rng.random(rows) < REJECT_FRACTION
    return Plan(centres, topic, source, eps, score, rejected, tuple(groups))


def _noise(i: int, dim: int, seed: int) -> np.ndarray:
    """Row ``i``'s own noise: an isotropic vector of norm ~1."""
    return np.random.default_rng((seed, 1, i)).standard_normal(dim, dtype=np.float32) / np.float32(math.sqrt(dim))


def vector(i: int, p: Plan, dim: int, seed: int) -> np.ndarray:
    """Row ``i``'s unit vector (float32, before packing)."""
    src = int(p.source[i])
    if src == i:
        v = p.centres[p.topic[i]] + np.float32(SPREAD) * _noise(i, dim, seed)
    else:
        v = vector(src, p, dim, seed) + np.float32(p.eps[i]) * _noise(i, dim, seed)
    return v / np.linalg.norm(v)


def key(i: int) -> str:
    return f"row-{i:08d}"


def members_of(chunk: int, rows: int, dim: int, seed: int) -> Iterator[tuple]:
    """The members (pos, (key, clip_score, packed embedding)) of one chunk of rows."""
    from unicurate.filters.semantic_dedup import pack

    p = plan(rows, dim, seed)
    for i in range(chunk * CHUNK, min(rows, (chunk + 1) * CHUNK)):
        yield i, (key(i), float(p.score[i]), pack(vector(i, p, dim, seed)))


def rejected_of(chunk: int, rows: int, dim: int, seed: int) -> Iterator[int]:
    """The positions of one chunk rejected run-wide."""
    p = plan(rows, dim, seed)
    lo, hi = chunk * CHUNK, min(rows, (chunk + 1) * CHUNK)
    yield from (int(i) for i in np.flatnonzero(p.rejected[lo:hi]) + lo)


# ------------------------------------------------------------------ the measured process
def run_pipeline(rows: int, dim: int, seed: int, mode: str, out: Path) -> dict:
    """SemanticDedup on the generated set, on the local FnApiRunner as ``unicurate run`` makes it."""
    from types import SimpleNamespace

    import apache_beam as beam

    from benchmarks.common import self_peak_mb, status_kb
    from unicurate.config import RunnerConfig
    from unicurate.filters.semantic_dedup import SemanticDedupConfig
    from unicurate.pipelines.semantic import SemanticDedup
    from unicurate.run.options import Launch

    recipe = SimpleNamespace(name="bench-semdedup",
                             runner=RunnerConfig(direct_num_workers=MODES[mode], direct_running_mode=mode))
    launch = Launch(recipe, [], dry_run=False)
    p = beam.Pipeline(runner=launch.engine(), options=launch.options)
    chunks = p | "Chunks" >> beam.Create(list(range(math.ceil(rows / CHUNK))))
    members = chunks | "Generate" >> beam.FlatMap(members_of, rows, dim, seed)
    rejected = chunks | "Rejected" >> beam.FlatMap(rejected_of, rows, dim, seed)
    (
        (members, rejected)
        | "SemanticDedup" >> SemanticDedup(SemanticDedupConfig())
        | "Format" >> beam.MapTuple(lambda pos, kept: f"{pos}\t{kept}")
        | "Write" >> beam.io.WriteToText(str(out / "losers"), file_name_suffix=".tsv")
    )
    before = {"rss_mb": round((status_kb(os.getpid(), "VmRSS") or 0) / 1024, 1), "peak_mb": self_peak_mb()}
    start = time.monotonic()
    p.run().wait_until_finish()
    return {"pipeline_s": round(time.monotonic() - start, 2), "engine": launch.engine_name(),
            "driver_before_run": before}


# ------------------------------------------------------------------ checks, outside the measured process
def truth(rows: int, dim: int, seed: int) -> dict[int, str]:
    """Planted loser position -> the key the run must keep for it: per group, of its members that are candidates
    (not rejected), the best ranked (highest clip_score, then earliest position) is kept, the others are losers."""
    p = plan(rows, dim, seed)
    out = {}
    for g in p.groups:
        cands = [m for m in g if not p.rejected[m]]
        if len(cands) < 2:
            continue
        best = min(cands, key=lambda m: (-p.score[m], m))
        out.update((m, key(best)) for m in cands if m != best)
    return out


def read_losers(out: Path) -> dict[int, str]:
    found = {}
    for f in sorted(out.glob("losers*.tsv")):
        for line in f.read_text().splitlines():
            pos, kept = line.split("\t")
            if int(pos) in found:
                raise RuntimeError(f"position {pos} reported twice")
            found[int(pos)] = kept
    return found


def check(found: dict[int, str], rows: int, dim: int, seed: int) -> dict:
    p = plan(rows, dim, seed)
    want = truth(rows, dim, seed)
    hit = want.keys() & found.keys()
    false_pos = sorted(found.keys() - want.keys())
    wrong_keeper = sorted(m for m in hit if found[m] != want[m])
    group_of = {m: g for g in p.groups for m in g}
    judged = [g for g in p.groups if sum(not p.rejected[m] for m in g) >= 2]
    bad_groups = {group_of[m] for m in (want.keys() - found.keys()) | set(wrong_keeper)}
    bad_groups |= {group_of[m] for m in false_pos if m in group_of}
    return {
        "candidates": int(rows - p.rejected.sum()), "planted_groups": len(p.groups),
        "planted_copies": int(sum(len(g) - 1 for g in p.groups)), "expected_losers": len(want),
        "reported_losers": len(found), "recall": round(len(hit) / len(want), 5) if want else 1.0,
        "missed": len(want) - len(hit), "false_positives": len(false_pos),
        "false_positives_rejected_rows": sum(bool(p.rejected[m]) for m in false_pos),
        "wrong_keeper": len(wrong_keeper), "groups_judged": len(judged),
        "groups_kept_best_only": len(judged) - len(bad_groups & set(judged)),
        "examples": {"missed": sorted(want.keys() - found.keys())[:5], "false_positives": false_pos[:5],
                     "wrong_keeper": wrong_keeper[:5]},
        "ok": not false_pos and not wrong_keeper and len(hit) == len(want),
    }


def generator_margins(rows: int, dim: int, seed: int, threshold: float, sample: int = 2000) -> dict:
    """On the vectors as the pipeline sees them (packed to float16, unpacked): the lowest cosine within a planted
    group, the highest between rows of different groups (exact within each topic; across topics, ``sample`` rows
    against all), and whether the threshold lies between the two."""
    from unicurate.filters.semantic_dedup import pack, unpack

    p = plan(rows, dim, seed)
    start = time.monotonic()
    blobs = [pack(vector(i, p, dim, seed)) for i in range(rows)]
    generate_s = time.monotonic() - start  # what the pipeline's Generate step costs, in one process
    x = unpack(blobs)
    del blobs
    group = p.source  # rows of one planted group share their source
    lowest_in_group = min(float(np.min(x[list(g)] @ x[list(g)].T)) for g in p.groups) if p.groups else None
    within_topic = -1.0
    for t in range(TOPICS):
        idx = np.flatnonzero(p.topic == t)
        if len(idx) < 2:
            continue
        sims = x[idx] @ x[idx].T
        sims[group[idx][:, None] == group[idx][None, :]] = -1.0  # the diagonal and the planted pairs
        within_topic = max(within_topic, float(sims.max()))
    pick = np.random.default_rng((seed, 2)).choice(rows, size=min(sample, rows), replace=False)
    sims = x[pick] @ x.T
    sims[p.topic[pick][:, None] == p.topic[None, :]] = -1.0
    across = float(sims.max())
    highest = max(within_topic, across)
    return {"lowest_cosine_in_planted_group": round(lowest_in_group, 4) if lowest_in_group is not None else None,
            "highest_cosine_other_pairs": round(highest, 4), "highest_within_topic": round(within_topic, 4),
            "highest_across_topics_sampled": round(across, 4), "across_topics_sample_rows": int(len(pick)),
            "threshold": threshold, "generate_s_one_process": round(generate_s, 2),
            "separated": bool(highest < threshold and (lowest_in_group is None or lowest_in_group >= threshold))}


# ------------------------------------------------------------------ the benchmark
def run_one(rows: int, dim: int, seed: int, mode: str, workdir: Path) -> dict:
    out = workdir / f"out-{mode}-{rows}"
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "benchmarks.semdedup", "--measured-run", mode, "--rows", str(rows),
           "--dim", str(dim), "--seed", str(seed), "--out", str(out)]
    wall, log, mem = run_measured(cmd, ROOT)
    line = next((x for x in log.splitlines() if x.startswith(MARKER)), None)
    if line is None:
        raise RuntimeError(f"no result from the measured run:\n{log[-3000:]}")
    res = json.loads(line[len(MARKER):])
    quality = check(read_losers(out), rows, dim, seed)
    return {"mode": mode, "workers": MODES[mode], "rows": rows, "wall_s": round(wall, 2), **res,
            "rows_per_s": round(rows / res["pipeline_s"], 1), **mem.summary(), "quality": quality}


def growth(runs: list[dict], mode: str) -> dict:
    """Per process role: peak RSS at the smallest and the largest N, the ratio, and MB per 1,000 extra rows."""
    mine = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["rows"])
    small, large = mine[0], mine[-1]
    out = {}
    for role, k in (("driver", "driver"), ("worker_max", "max_worker")):
        a, b = small["peak_rss_mb"][k], large["peak_rss_mb"][k]
        if a and b:
            out[role] = {"rows": [small["rows"], large["rows"]], "peak_rss_mb": [a, b], "ratio": round(b / a, 3),
                         "mb_per_1000_rows": round((b - a) / (large["rows"] - small["rows"]) * 1000, 2)}
    return out


def machine_facts() -> dict:
    import apache_beam
    import faiss

    from benchmarks.run import machine

    info = machine("cpu")
    info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    info.update(beam=apache_beam.__version__, faiss=faiss.__version__, numpy=np.__version__,
                faiss_omp_threads=faiss.omp_get_max_threads())
    return info


def bench(sizes: list[int], modes: list[str], workdir: Path, dim: int = 512, seed: int = SEED) -> dict:
    from unicurate.filters.semantic_dedup import SemanticDedupConfig

    cfg = SemanticDedupConfig()
    facts = machine_facts()
    sizes = sorted(sizes)
    margins = {}
    for n in sizes:
        print(f"[semdedup] checking the generator at {n} rows ...", file=sys.stderr, flush=True)
        margins[n] = generator_margins(n, dim, seed, cfg.threshold)
    runs = []
    for mode in modes:
        for n in sizes:
            print(f"[semdedup] {mode}, {n} rows ...", file=sys.stderr, flush=True)
            runs.append(run_one(n, dim, seed, mode, workdir))
            q = runs[-1]["quality"]
            print(f"[semdedup]   {runs[-1]['pipeline_s']} s, recall {q['recall']}, "
                  f"false positives {q['false_positives']}", file=sys.stderr, flush=True)
    ok = all(r["quality"]["ok"] for r in runs) and all(m["separated"] for m in margins.values())
    return {"benchmark": "semdedup", "machine": facts, "config": cfg.model_dump(),
            "generator": {"dim": dim, "seed": seed, "topics": TOPICS, "spread": SPREAD,
                          "copy_fraction": COPY_FRACTION, "triples_share": TRIPLES, "copy_cosine": list(COPY_COS),
                          "reject_fraction": REJECT_FRACTION, "chunk_rows": CHUNK,
                          "margins": {str(n): m for n, m in margins.items()}},
            "rows": sizes, "modes": modes, "runs": runs,
            "ratio_largest_to_smallest": {mode: growth(runs, mode) for mode in modes} if len(sizes) > 1 else {},
            "pass": ok}


def print_table(r: dict) -> None:
    rows = []
    for x in r["runs"]:
        q = x["quality"]
        rows.append([x["mode"], x["rows"], f"{x['wall_s']:.1f}", f"{x['pipeline_s']:.1f}", x["rows_per_s"],
                     f"{x['peak_rss_mb']['driver']:.0f}",
                     ", ".join(f"{m:.0f}" for m in x["peak_rss_mb"]["workers"]) or "-",
                     f"{q['reported_losers']}/{q['expected_losers']}", f"{q['recall']:.4f}", q["false_positives"],
                     q["wrong_keeper"], "ok" if q["ok"] else "FAIL"])
    print(table(["mode", "rows", "wall s", "pipeline s", "rows/s", "driver MB", "worker MB", "losers",
                 "recall", "false pos", "wrong kept", "result"], rows))
    growth_rows = [[mode, role, f"{g['rows'][0]} -> {g['rows'][1]}",
                    f"{g['peak_rss_mb'][0]:.0f} -> {g['peak_rss_mb'][1]:.0f}", f"{g['ratio']:.2f}",
                    f"{g['mb_per_1000_rows']:.2f}"]
                   for mode, roles in r["ratio_largest_to_smallest"].items() for role, g in roles.items()]
    if growth_rows:
        print()
        print(table(["mode", "process", "rows", "peak RSS MB", "ratio", "MB per 1k rows"], growth_rows))
    print()
    print(table(["rows", "lowest cos in group", "highest cos otherwise", "threshold", "separated"],
                [[n, m["lowest_cosine_in_planted_group"], m["highest_cosine_other_pairs"], m["threshold"],
                  "yes" if m["separated"] else "NO"] for n, m in r["generator"]["margins"].items()]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="the large size (default 100,000)")
    ap.add_argument("--small", type=int, help="the small size, run beside it (default rows / 10)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--modes", help=f"comma-separated of {', '.join(MODES)} (default both; --quick: in_memory)")
    ap.add_argument("--quick", action="store_true", help="500 and 2,000 rows, in_memory only: a smoke test")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--keep", action="store_true", help="keep the working folder (its path is printed)")
    ap.add_argument("--measured-run", choices=list(MODES), help=argparse.SUPPRESS)  # one run, in its own process
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measured_run:
        res = run_pipeline(args.rows, args.dim, args.seed, args.measured_run, Path(args.out))
        print(MARKER + json.dumps(res), flush=True)
        return 0
    sizes = [500, 2000] if args.quick else [args.small or args.rows // 10, args.rows]
    modes = [m for m in (args.modes or ("in_memory" if args.quick else ",".join(MODES))).split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    r = run_and_report("unicurate-bench-semdedup-", lambda workdir: bench(sizes, modes, workdir, args.dim, args.seed),
                       print_table, keep=args.keep, json_path=args.json, tag="semdedup")
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    if "--measured-run" in sys.argv:  # the pipeline's functions by their module name, not __main__'s
        from benchmarks import semdedup

        sys.exit(semdedup.main())
    sys.exit(main())
