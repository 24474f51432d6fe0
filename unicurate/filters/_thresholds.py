"""Threshold helpers shared by the model filters."""

from __future__ import annotations

from typing import Any, Mapping, Optional


def merge(defaults: Mapping[str, Any], override: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    out = dict(defaults)
    if override:
        unknown = set(override) - set(defaults)
        if unknown:
            raise KeyError(f"unknown threshold(s) {sorted(unknown)}; known: {sorted(defaults)}")
        out.update(override)
    return out


def below(value, bound) -> bool:
    return value is not None and bound is not None and value < bound


def above(value, bound) -> bool:
    return value is not None and bound is not None and value > bound
