"""The filter registry: each filter is declared once, by a :class:`FilterSpec` in its own module.

A spec names everything the rest of unicurate needs to know about a filter: its recipe section, the models it
needs, the columns it records, the reasons it rejects for and the bounds what-if may change. The recipe
(``config.FiltersConfig``), the curated schema and the closed set of reasons (``schema``), the model zoo's
``needed_models``, the scorer, what-if, stats and the CLI help all derive from the specs, so adding a filter is
adding one module to this package: discovery imports every module of it (:func:`specs`), no list names them.

The declarations flow one way, filters -> registry -> schema / config. So a module of this package never imports
``unicurate.schema`` or ``unicurate.config`` at import time (both derive from the registry while they are
imported); it declares its reason codes and its section class itself (on :class:`unicurate.sections.Section`).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, NamedTuple, Optional, Sequence

if TYPE_CHECKING:
    import pyarrow as pa
    from pydantic import BaseModel

    from unicurate.filters.base import Filter

FilterStage = Literal["filter", "score"]
"""Where a filter runs in the curate funnel (a ``schema.Stage`` value): ``filter`` = the cheap rules, on every
decoded row before anything else; ``score`` = the model filters, batched on the rows that passed the rules."""
STAGES: tuple[FilterStage, ...] = ("filter", "score")


class Column(NamedTuple):
    """A column a filter records in every curated row (null where it did not run)."""

    name: str
    type: "pa.DataType"
    doc: str


class RejectReason(NamedTuple):
    """A reason code a filter writes into ``reject_reasons``; its funnel stage is the filter's stage."""

    code: str
    doc: str


class Threshold(NamedTuple):
    """A bound on a recorded column, held by a field of the filter's section: a row is kept when
    ``column op value``. What-if changes it (``--set column>=value``) and stats and the report show it."""

    column: str
    op: Literal[">=", "<="]
    field: str
    replaces: tuple[str, ...] = ()  # section fields this bound takes the place of (nulled when it is set)

    @property
    def side(self) -> str:
        """``min`` or ``max``: which end of the column the bound cuts."""
        return "min" if self.op == ">=" else "max"


def _no_models(section: Any) -> tuple[str, ...]:
    return ()


def _no_options(section: Any) -> dict[str, dict[str, Any]]:
    return {}


@dataclass(frozen=True)
class FilterSpec:
    """Everything unicurate needs to know about one filter.

    ``build(section, models, threads)`` makes the filter object (a :class:`~unicurate.filters.base.Filter`) from
    its section, the loaded models by name (empty when only deciding from recorded columns: build must not need
    them then) and the CPU threads it may use. ``section`` is None for a filter the recipe leaves out but whose
    ``provides`` another filter ``needs`` (CLIP for the aesthetic head's image embedding): it then runs only to
    provide them.
    """

    name: str  # the key of its section under the recipe's ``filters:``; the funnel and --set name it so
    stage: FilterStage
    order: int  # position within its stage: scoring order, and the order of its columns and reasons
    build: Callable[[Any, Mapping[str, Any], int], "Filter"]
    config: Optional[type["BaseModel"]] = None  # its section under ``filters:`` (null or absent: not run)
    select: Optional[Callable[[Any], Any]] = None  # instead of a section: what it reads of FiltersConfig, or None
    models: Callable[[Any], Sequence[str]] = _no_models  # zoo model names, given its section, in load order
    model_options: Callable[[Any], Mapping[str, Mapping[str, Any]]] = _no_options  # loaded model name -> kwargs
    columns: tuple[Column, ...] = ()
    reasons: tuple[RejectReason, ...] = ()
    thresholds: tuple[Threshold, ...] = ()
    provides: tuple[str, ...] = ()  # transient columns (not stored) that other filters read through ``needs``

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"filter {self.name!r}: stage {self.stage!r} is not one of {STAGES}")
        if (self.config is None) == (self.select is None):
            raise ValueError(f"filter {self.name!r}: give exactly one of its section class (config) and select")
        if self.stage == "filter" and (self.columns or self.thresholds):
            # the rule stage runs inside the download stage on what every row has (caption, original size) and
            # stores only its reasons; what-if re-decides the model filters only
            raise ValueError(f"filter {self.name!r}: a rule filter (stage 'filter') records no columns and no "
                             "what-if thresholds; a filter that records a value belongs to stage 'score'")
        columns = {c.name for c in self.columns}
        for t in self.thresholds:
            if t.column not in columns:
                raise ValueError(f"filter {self.name!r}: threshold on {t.column!r}, which it does not record")
            if self.config is None or any(f not in self.config.model_fields for f in (t.field, *t.replaces)):
                raise ValueError(f"filter {self.name!r}: threshold field {t.field!r} (or what it replaces) is not "
                                 "a field of its section")

    def section(self, filters_cfg: Any) -> Any:
        """Its options in a recipe's ``filters`` (a FiltersConfig), or None when the recipe does not run it."""
        return self.select(filters_cfg) if self.select is not None else getattr(filters_cfg, self.name)


_SPECS: dict[str, FilterSpec] = {}
_discovery: Optional[str] = None  # None, "running" or "done"


def register(spec: FilterSpec) -> FilterSpec:
    """Add a filter (at its module's import); returns the spec, for the module's ``SPEC = register(...)``."""
    if _SPECS.get(spec.name, spec) is not spec:
        raise ValueError(f"two filters are named {spec.name!r}")
    _SPECS[spec.name] = spec
    return spec


def _discover() -> None:
    """Import every module of ``unicurate.filters`` once: each registers its filters as it is imported."""
    global _discovery
    if _discovery == "done":
        return
    if _discovery == "running":
        raise RuntimeError("the filter registry was read while unicurate.filters was being imported: a filter "
                           "module imports unicurate.schema or unicurate.config (or something that does) at import "
                           "time; import it inside the function that needs it")
    _discovery = "running"
    try:
        import unicurate.filters as package

        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
        _check_unique("reason code", [r.code for s in _SPECS.values() for r in s.reasons])
        _check_unique("column", [c.name for s in _SPECS.values() for c in s.columns])
        _discovery = "done"
    finally:
        if _discovery == "running":
            _discovery = None


def _check_unique(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"two filters declare the {what} {n!r}")
        seen.add(n)


def specs(stage: Optional[FilterStage] = None) -> tuple[FilterSpec, ...]:
    """Every registered filter (or those of one stage) in funnel order: by stage, then ``order``."""
    _discover()
    ordered = sorted(_SPECS.values(), key=lambda s: (STAGES.index(s.stage), s.order, s.name))
    return tuple(s for s in ordered if stage is None or s.stage == stage)


def get(name: str) -> FilterSpec:
    _discover()
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"no filter named {name!r}; filters: {', '.join(s.name for s in specs())}") from None


def active(filters_cfg: Any, stage: FilterStage = "score") -> list[tuple[FilterSpec, Any]]:
    """The filters of ``stage`` a recipe runs, in order, each with its section; a filter the recipe leaves out is
    included (section None) when it provides a column that a filter of the recipe needs."""
    stage_specs = specs(stage)
    chosen = {s.name: s.section(filters_cfg) for s in stage_specs}
    needed = {n for s in stage_specs if chosen[s.name] is not None for n in s.build(chosen[s.name], {}, 1).needs}
    out: list[tuple[FilterSpec, Any]] = []
    provided: set[str] = set()
    for s in stage_specs:
        section = chosen[s.name]
        if section is None and not needed.intersection(s.provides):
            continue
        missing = set(s.build(section, {}, 1).needs) - provided
        if missing:
            raise ValueError(f"filter {s.name!r} needs {sorted(missing)}, which no filter scored before it "
                             "provides (a provider's order must be lower)")
        provided.update(s.provides)
        out.append((s, section))
    return out


def model_options(filters_cfg: Any) -> dict[str, dict[str, Any]]:
    """Loader options by loaded model name (e.g. the OCR detector's input size), from the recipe's filters."""
    out: dict[str, dict[str, Any]] = {}
    for s, section in active(filters_cfg):
        for model, kwargs in s.model_options(section).items():
            out.setdefault(model, {}).update(kwargs)
    return out


def thresholds_by_column() -> dict[str, tuple[str, tuple[Threshold, ...]]]:
    """Recorded column -> (its filter's name, the bounds on it): what what-if can change, in funnel order."""
    out: dict[str, tuple[str, tuple[Threshold, ...]]] = {}
    for s in specs():
        for c in s.columns:
            bounds = tuple(t for t in s.thresholds if t.column == c.name)
            if bounds:
                out[c.name] = (s.name, bounds)
    return out
