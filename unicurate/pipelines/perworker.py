"""One object per worker process, shared by every DoFn instance in it (``apache_beam.utils.shared``)."""

from __future__ import annotations

from typing import Any, Callable

from apache_beam.utils import shared


class Holder:
    """``shared.Shared`` keeps objects by weak reference: this box makes any object weak-referenceable.

    The Shared entry lives while a DoFn holds its Holder, so keep the Holder, not just ``value``.
    """

    def __init__(self, value: Any):
        self.value = value


def acquire(handle: shared.Shared, build: Callable[[], Any], tag: str) -> tuple[Holder, bool]:
    """The process's object for ``tag`` (built by ``build`` the first time) and whether this call built it."""
    built: list[bool] = []

    def _build() -> Holder:
        built.append(True)
        return Holder(build())

    return handle.acquire(_build, tag=tag), bool(built)
