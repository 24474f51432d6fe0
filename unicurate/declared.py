"""Finding what a package's modules declare: the registries of edit types and export formats are the modules of
their package, each naming its own declaration, so adding one is adding a module (no list to edit)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

T = TypeVar("T")


def declarations(package: str, path, attr: str, kind: type[T]) -> list[T]:
    """``attr`` of every public module of ``package`` (its ``__name__`` and ``__path__``), in module-name order.

    Each must be a ``kind`` whose ``name`` is the module's name, so a module's file name is its recipe or CLI
    value; anything else is a TypeError naming the module (a half-written module must not vanish silently).
    """
    found: list[T] = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        value = getattr(module, attr, None)
        if not isinstance(value, kind) or getattr(value, "name", None) != info.name:
            raise TypeError(f"{module.__name__} must declare {attr} = {kind.__name__}(name={info.name!r}, ...)")
        found.append(value)
    return found
