"""Process-tree lookups through Linux /proc (empty answers elsewhere): the local runner's worker watchdog, the
benchmarks' memory sampling and the fault-injection tests use them."""

from __future__ import annotations

import os


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
