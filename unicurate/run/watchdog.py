"""The local runner's worker watchdog: a DirectRunner worker process that dies ends the run promptly with a clear
error (:class:`WorkerDied`) instead of a hang, and the process-tree lookups through Linux /proc it needs (empty
answers elsewhere; the benchmarks' memory sampling and the fault-injection tests use them too)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

log = logging.getLogger("unicurate")


def _children_by_scan(pid: int) -> list[int]:
    """Every process whose parent is ``pid``: a walk of /proc (kernels without ``/proc/PID/task/TID/children``)."""
    out = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid).encode():
            out.append(int(entry))
    return out


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` ([] when there is none, or no /proc)."""
    task = f"/proc/{pid}/task"
    try:
        tids = os.listdir(task)
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"{task}/{tid}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
        except FileNotFoundError:
            if not os.path.exists(task):  # the process ended meanwhile
                return out
            if os.path.exists(f"{task}/{tid}"):  # the thread is there but the kernel has no children files
                return _children_by_scan(pid)
        except OSError:
            pass
    return out


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ("" when it has gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def stop_local_workers() -> list[int]:
    """SIGKILL this process's DirectRunner worker processes (``sh -c ... sdk_worker_main`` children and the
    Python workers under them); the pids ended."""
    ended = []
    for shell in children(os.getpid()):
        if "sdk_worker_main" not in cmdline(shell):
            continue
        for pid in children(shell) + [shell]:
            try:
                os.kill(pid, signal.SIGKILL)
                ended.append(pid)
            except OSError:
                pass
    return ended


class WorkerDied(RuntimeError):
    """A local Beam worker process died (killed, out of memory): the DirectRunner cannot finish the run."""


@contextlib.contextmanager
def fail_when_a_worker_dies():
    """Local multi-process runs: end the run promptly, with a clear error, when a worker process dies.

    The DirectRunner starts each worker as ``sh -c python -m ...sdk_worker_main`` and watches the shell from a
    thread (``run_worker``), which raises "Worker subprocess exited with return code N" when the worker dies,
    and nothing else happens: a worker killed in the middle of a bundle fails the run only once the other
    workers' bundles end ("Channel closed prematurely"), and one killed before it opened its data stream makes
    the runner wait for it forever. Here that thread's error interrupts the driver's main thread (a signal, so
    it also wakes the runner's blocking waits) with :class:`WorkerDied`. Only in the main thread (signals);
    elsewhere, and for runners without local worker processes, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield
        return
    died: list[str] = []
    raised: list[bool] = []
    previous_hook = threading.excepthook

    def hook(args):
        text = str(args.exc_value)
        if args.thread is not None and args.thread.name == "run_worker" and "Worker subprocess exited" in text:
            if raised:
                return  # one of the workers ended below
            code = text.rsplit(" ", 1)[-1]
            if code.isdigit():  # N > 0: the worker exited or was killed (-N: only the wrapping shell was)
                died.append(code)
                os.kill(os.getpid(), signal.SIGUSR1)
                return
        if (args.thread is not None and args.thread.name in ("read_grpc_client_inputs", "beam_control_read")
                and type(args.exc_value).__name__ == "RpcError"):
            # the gRPC streams of a worker that went away: its death is reported above, once and clearly
            log.debug("worker stream ended in thread %s", args.thread.name,
                      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
            return
        previous_hook(args)

    def on_signal(signum, frame):
        if died and not raised:
            raised.append(True)
            # the runner's cleanup waits for every worker to exit, and the others wait for work that will not
            # come: end them (processes this run started) so that the error can reach the caller
            stop_local_workers()
            code = int(died[0])
            how = f"exit status {code}"
            if code > 128:  # the shell's way of saying "killed by signal code - 128"
                try:
                    how = f"killed by {signal.Signals(code - 128).name}"
                except ValueError:
                    how = f"killed by signal {code - 128}"
                if code - 128 == signal.SIGKILL:
                    how += ": kill -9, or the out-of-memory killer"
            raise WorkerDied(f"a local Beam worker process died ({how}); the DirectRunner cannot finish a run "
                             f"without it")

    previous_signal = signal.signal(signal.SIGUSR1, on_signal)
    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous_hook
        signal.signal(signal.SIGUSR1, previous_signal)

