"""Per worker process: one shared object (``apache_beam.utils.shared``), the model DoFn base, progress lines."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

NAMESPACE = "unicurate"  # Beam counters of every unicurate pipeline


class Holder:
    """``shared.Shared`` keeps objects by weak reference: this box makes any object weak-referenceable.

    The Shared entry lives while a DoFn holds its Holder, so keep the Holder, not just ``value``.
    """

    def __init__(self, value: Any):
        self.value = value


# Set by the driver of a local run (to its pid) while the pipeline runs; local worker processes inherit it.
LOCAL_DRIVER_ENV = "UNICURATE_LOCAL_DRIVER_PID"
_FAST_EXIT = False


def fast_exit_when_done() -> None:
    """In a local multi-process worker: end the process without interpreter teardown once Beam's harness returns.

    Tearing down an interpreter that holds torch, OpenCV and pyarrow takes about a second, and the
    DirectRunner stops its worker processes one after another, so every local run ended with N idle
    seconds. The handler runs at exit, after the harness has closed its log stream and after non-daemon
    threads were joined; a harness that failed (an uncaught exception) still exits with status 1.
    Nothing happens in the driver process (in-memory runs, tests) or on remote runners.
    """
    global _FAST_EXIT
    driver = os.environ.get(LOCAL_DRIVER_ENV)
    if _FAST_EXIT or not driver or driver == str(os.getpid()):
        return
    import atexit

    _FAST_EXIT = True
    atexit.register(_exit_now)


def _exit_now() -> None:
    code = 1 if getattr(sys, "last_value", None) is not None else 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def acquire(handle: shared.Shared, build: Callable[[], Any], tag: str) -> tuple[Holder, bool]:
    """The process's object behind ``handle`` (built by ``build`` the first time) and whether this call built it.

    A handle (made in the DoFn's constructor, so every copy of the DoFn in a process shares its key) holds one
    object per process; ``tag`` names what it holds (a different tag would rebuild it)."""
    fast_exit_when_done()
    built: list[bool] = []

    def _build() -> Holder:
        built.append(True)
        return Holder(build())

    return handle.acquire(_build, tag=tag), bool(built)


class Progress:
    """Counts per worker process and prints a line at most every ``every`` seconds.

    Writes to a duplicate of stderr taken at creation, because img2dataset's
    Resizer temporarily points fd 2 at /dev/null while it decodes.
    ``describe(counts, rate_per_second_of_first_count)`` makes the line.
    """

    def __init__(self, describe: Callable[[dict, float], str], every: float = 2.0):
        self.describe, self.every = describe, every
        self.start = self.last = time.monotonic()
        self.counts: dict[str, int] = {}
        try:
            self._fd = os.dup(sys.stderr.fileno())
        except (OSError, ValueError, AttributeError):
            self._fd = None

    def add(self, **counts: int) -> None:
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.emit()

    def emit(self) -> None:
        if self._fd is None or not self.counts:
            return
        first = next(iter(self.counts.values()))
        rate = first / max(1e-6, time.monotonic() - self.start)
        try:
            os.write(self._fd, f"[unicurate] worker {os.getpid()}: {self.describe(self.counts, rate)}\n".encode())
        except OSError:
            pass


_PROGRESS: dict[str, Progress] = {}


def progress(name: str, describe: Callable[[dict, float], str], every: float = 2.0) -> Progress:
    """The process's progress reporter called ``name`` (created on first use)."""
    if name not in _PROGRESS:
        _PROGRESS[name] = Progress(describe, every)
    return _PROGRESS[name]


def emit_progress(name: str) -> None:
    if name in _PROGRESS:
        _PROGRESS[name].emit()


def cpu_threads_per_process(beam_options: dict) -> Optional[int]:
    """CPU threads each worker process's models may use, so processes sharing a machine do not oversubscribe it.

    Local multi_processing: cores / worker processes. Dataflow starts one SDK process per vCPU unless
    ``no_use_multiple_sdk_containers`` is set: then 1 each; with one process per VM, the libraries' default
    (all cores). None = the libraries' default.
    """
    runner = str(beam_options.get("runner") or "DirectRunner").lower()
    if "dataflow" in runner:
        return None if "no_use_multiple_sdk_containers" in (beam_options.get("experiments") or []) else 1
    workers = int(beam_options.get("direct_num_workers") or 1)
    if beam_options.get("direct_running_mode") == "multi_processing" and workers > 1:
        return max(1, (os.cpu_count() or 1) // workers)
    return None


class StageSpan:
    """Wall-clock span of a stage over all workers: a Beam distribution of epoch milliseconds.

    Each bundle of work records when it started and ended; the distribution's min and max (merged by the
    runner over every worker) are the stage's first start and last end. ``counters()`` turns them into
    ``<name>_seconds``.
    """

    def __init__(self, name: str):
        self.name = name
        self.dist = Metrics.distribution(NAMESPACE, f"{name}_span_ms")

    def mark(self) -> None:
        now = time.time()
        self.dist.update(int(now * 1000))
        if os.environ.get("UNICURATE_TRACE"):  # debugging: one line per bundle start/end on stderr
            print(f"TRACE {self.name} {now:.3f} pid={os.getpid()}", file=sys.stderr, flush=True)


class Loading:
    """An object being built on a background thread: ``result()`` waits for it (and re-raises its error)."""

    def __init__(self, build: Callable[[], Any]):
        import threading

        self._done = threading.Event()
        self._value: Any = None
        self._error: Optional[BaseException] = None
        threading.Thread(target=self._run, args=(build,), name="unicurate-model-load", daemon=True).start()

    def _run(self, build: Callable[[], Any]) -> None:
        try:
            self._value = build()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class ModelDoFn(beam.DoFn):
    """A DoFn holding one model object per worker process (``shared.Shared``).

    Subclasses give ``build()`` (loads the models with :meth:`runtime`; runs once per process) and call
    :meth:`loaded` inside ``process`` when a batch first needs the models: it waits for the load and counts it
    once (Beam counters only count inside ``process``).

    The load runs on a background thread started in ``setup``: the work before the first batch (reading,
    downloads, decoding) starts at once instead of waiting the several seconds that importing torch/open_clip and
    loading weights take.
    """

    def __init__(self, tag: str, stage: str = "model", cpu_threads: Optional[int] = None):
        self.tag = tag
        self.cpu_threads = cpu_threads
        self._shared = shared.Shared()
        self.loads = Metrics.counter(NAMESPACE, "model_loads")
        self.batches = Metrics.counter(NAMESPACE, "model_batches")
        self.span = StageSpan(stage)

    def build(self) -> Any:
        raise NotImplementedError

    def runtime(self, models_cfg):
        """The model runtime ``build()`` loads with: the recipe's ``models`` section on this worker, its CPU
        threads capped to this process's share of the machine (``cpu_threads``)."""
        from unicurate.models.runtime import Runtime

        return Runtime.for_models(models_cfg, self.cpu_threads)

    def setup(self):
        self._holder, built = acquire(self._shared, lambda: Loading(self.build), tag=self.tag)
        self.model = None
        self._load_to_count = built

    def loaded(self) -> Any:
        """The process's model object, once its load has finished (counted once)."""
        if self.model is None:
            self.model = self._holder.value.result()
        if self._load_to_count:
            self._load_to_count = False
            self.loads.inc()
        return self.model
