"""Shared parts of the benchmarks: process-tree memory/CPU sampling, the generated JPEG web, a loopback
server in its own process, and plain-text tables."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional

from unicurate.run.watchdog import children, cmdline


# ------------------------------------------------------------------ /proc sampling
def status_kb(pid: int, field: str) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU time of ``pid`` so far (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def beam_role(pid: int, cmd: str, root: int) -> str:
    """driver = the launched process; worker = a Beam SDK worker process (not the shell that starts it)."""
    if pid == root:
        return "driver"
    python = "python" in cmd.split(" ", 1)[0]
    return "worker" if python and "sdk_worker_main" in cmd else "other"


def self_peak_mb() -> float:
    return round((status_kb(os.getpid(), "VmHWM") or 0) / 1024, 1)


class PeakMemory(threading.Thread):
    """Polls the process tree under ``pid``: peak RSS (VmHWM, kept by the kernel) and CPU of every process."""

    def __init__(self, pid: int, every: float = 0.2,
                 role_of: Optional[Callable[[int, str, int], str]] = None):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.role_of = role_of or beam_role
        self.peak_kb: dict[int, int] = {}
        self.cpu_s: dict[int, float] = {}
        self.driver_cpu_at_first_worker: Optional[float] = None
        self.role: dict[int, str] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            todo, seen = [self.pid], set()
            while todo:
                p = todo.pop()
                if p in seen:
                    continue
                seen.add(p)
                hwm = status_kb(p, "VmHWM")
                if hwm is not None:
                    self.peak_kb[p] = max(self.peak_kb.get(p, 0), hwm)
                    cpu = cpu_seconds(p)
                    if cpu is not None:
                        self.cpu_s[p] = max(self.cpu_s.get(p, 0.0), cpu)
                    if p not in self.role:
                        self.role[p] = self.role_of(p, cmdline(p), self.pid)
                        if self.role[p] == "worker" and self.driver_cpu_at_first_worker is None:
                            self.driver_cpu_at_first_worker = cpu_seconds(self.pid)
                todo.extend(children(p))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def summary(self) -> dict:
        workers = sorted(round(kb / 1024, 1) for p, kb in self.peak_kb.items() if self.role.get(p) == "worker")
        return {
            "peak_rss_mb": {"driver": round(self.peak_kb.get(self.pid, 0) / 1024, 1), "workers": workers,
                            "max_worker": max(workers) if workers else None},
            "cpu_s": {"driver": round(self.cpu_s.get(self.pid, 0.0), 1),
                      "workers": sorted(round(c, 1) for p, c in self.cpu_s.items() if self.role.get(p) == "worker")},
        }


# ------------------------------------------------------------------ generated web
def cache_dir() -> Path:
    d = Path(os.environ.get("UNICURATE_BENCH_CACHE", Path.home() / ".cache" / "unicurate" / "bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _make_jpegs(args: tuple[Path, int, int, int]) -> None:
    import numpy as np
    from PIL import Image

    dest, seed, start, stop = args
    for i in range(start, stop):
        rng = np.random.default_rng((seed, i))
        w, h = (int(v) for v in rng.integers(300, 1501, 2))
        if max(w, h) / min(w, h) > 2.5:  # keep within the recipes' aspect limit: every image is valid
            h = w
        grid = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), dtype=np.int16)
        noise = rng.normal(0, 6, (h, w, 1)).astype(np.int16)
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        img.save(dest / f"{i:06d}.jpg", quality=90)


def corpus(n: int, seed: int, dest: Path) -> Path:
    """N distinct JPEGs, 300-1500 px per side, generated once and cached in ``dest``."""
    done = dest / ".complete"
    if done.exists():
        return dest
    # built in a folder of its own and renamed into place: a second process asking for the same corpus meanwhile
    # builds its own copy instead of deleting the files of the first
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    procs = os.cpu_count() or 1
    step = (n + procs * 4 - 1) // (procs * 4)
    chunks = [(work, seed, s, min(n, s + step)) for s in range(0, n, step)]
    print(f"[bench] generating {n} JPEGs in {dest} (once) ...", file=sys.stderr, flush=True)
    import multiprocessing as mp

    with mp.get_context("fork").Pool(procs) as pool:
        pool.map(_make_jpegs, chunks)
    (work / ".complete").write_text(str(n))
    if done.exists():  # another process finished first
        shutil.rmtree(work, ignore_errors=True)
        return dest
    shutil.rmtree(dest, ignore_errors=True)  # an unfinished one, left by a killed run
    work.rename(dest)
    return dest


COUNTS_PATH = "/_counts"  # GET: the requests per url path so far as JSON; "?reset=1" also sets them back to 0


def _serve_forever(folder: str, port_out, count: bool = False, preload: bool = True) -> None:
    from collections import Counter
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    paths = {"/" + p.name: p for p in Path(folder).glob("*.jpg")}
    files = {k: p.read_bytes() for k, p in paths.items()} if preload else None
    counts, lock = Counter(), threading.Lock()

    def counts_reply(query: str) -> bytes:
        with lock:
            body = json.dumps(dict(counts)).encode()
            if "reset=1" in query:
                counts.clear()
        return body

    def read(path: str) -> Optional[bytes]:
        return paths[path].read_bytes() if path in paths else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            path, _, query = self.path.partition("?")
            if count and path == COUNTS_PATH:
                self._reply(counts_reply(query), "application/json")
                return
            if count:
                with lock:
                    counts[path] += 1
            body = files.get(path) if files is not None else read(path)
            if body is None:
                self.send_error(404)
                return
            self._reply(body, "image/jpeg")

        def _reply(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 256
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_out.put(srv.server_address[1])
    srv.serve_forever()


@contextlib.contextmanager
def serve(folder: Path, count: bool = False, preload: bool = True) -> Iterator[str]:
    """Serve ``folder``'s JPEGs on 127.0.0.1, in a separate process. Yields the base URL.

    ``preload``: hold every file in memory (else read from disk for each request: for corpora too large to hold).
    ``count``: count the GET requests per url path, read with :func:`request_counts`."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve_forever, args=(str(folder), q, count, preload), daemon=True)
    proc.start()
    try:
        port = q.get(timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.join(10)


def request_counts(base: str, reset: bool = False) -> dict[str, int]:
    """The requests per url path that the counting server at ``base`` (``serve(..., count=True)``) has answered
    (this request not included); ``reset``: then start counting from 0 again."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    with opener.open(base + COUNTS_PATH + ("?reset=1" if reset else ""), timeout=30) as reply:
        return json.loads(reply.read())


# ------------------------------------------------------------------ measured subprocess runs
LOCAL_MODES = {"in_memory": 1, "multi_processing": 2}  # the DirectRunner modes compared: mode -> worker processes


def local_beam_args(mode: str) -> list[str]:
    """The Beam flags, after ``--``, of a local run in ``mode`` on its :data:`LOCAL_MODES` workers."""
    return ["--", f"--direct_num_workers={LOCAL_MODES[mode]}", f"--direct_running_mode={mode}"]


def bench_env() -> dict:
    return dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                PYTHONUNBUFFERED="1")


def run_measured(cmd: list[str], cwd: Path,
                 role_of: Optional[Callable[[int, str, int], str]] = None) -> tuple[float, str, PeakMemory]:
    """Run ``cmd`` to completion while sampling its process tree: (wall seconds, stdout+stderr, memory).
    Raises with the log's tail when it fails."""
    import subprocess
    import time

    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=bench_env(),
                            cwd=str(cwd))
    mem = PeakMemory(proc.pid, role_of=role_of)
    mem.start()
    log, _ = proc.communicate()
    mem.stop()
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])} ... failed (exit {proc.returncode}):\n{log[-4000:]}")
    return wall, log, mem


def parse_run_log(log: str) -> tuple[Optional[float], dict[str, float]]:
    """From ``unicurate run`` output: the pipeline seconds ("wrote ... in Xs") and the stage wall times by label."""
    import re

    m = re.search(r"wrote .* in ([0-9.]+)s", log)
    line = log.split("stage wall time", 1)[1].split("\n", 1)[0] if "stage wall time" in log else ""
    stages = {label.strip(): float(sec) for label, sec in re.findall(r"([a-z+ ]+?) ([0-9.]+) s(?=[,)])", line)}
    return (float(m.group(1)) if m else None), stages


def validate_output(out: Path) -> tuple[bool, str]:
    """``unicurate validate OUT``: (whether it passed, what it printed)."""
    import subprocess

    check = subprocess.run(unicurate_cmd() + ["validate", str(out)], capture_output=True, text=True, env=bench_env())
    return check.returncode == 0, check.stdout + check.stderr


def shard_hashes(out: Path, subs: tuple[str, ...] = ("kept", "rejected")) -> dict[str, str]:
    """sha256 of each ``part-*.parquet`` shard under ``out``'s ``subs`` folders, by path relative to ``out``."""
    import hashlib

    return {f"{sub}/{f.name}": hashlib.sha256(f.read_bytes()).hexdigest()
            for sub in subs for f in sorted((Path(out) / sub).glob("part-*.parquet"))}


# ------------------------------------------------------------------ output
def run_and_report(prefix: str, bench: Callable[[Path], dict], print_table: Callable[[dict], None],
                   keep: bool = False, json_path: Optional[str | Path] = None, tag: str = "bench") -> dict:
    """Run ``bench(workdir)`` in a fresh temporary folder named ``prefix...`` (removed afterwards, or kept and
    its path printed on stderr when ``keep``), then print its result as JSON (also written to ``json_path``
    when given), a blank line and ``print_table(result)``. The result."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        result = bench(workdir)
    finally:
        if keep:
            print(f"[{tag}] outputs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
    print()
    print_table(result)
    return result


def unicurate_cmd() -> list[str]:
    return [sys.executable, "-m", "unicurate.cli"]


def table(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
