"""One handler per model: how a zoo model loads, and what the manifest records of it.

In the spirit of ``apache_beam.ml.inference``'s ``ModelHandler``: the pipelines, the curate scorer and the
synthesizer know nothing of a model's library. They resolve weights with the zoo (``zoo.preflight``,
``zoo.locate_all``: a list of ``(ModelSpec, path)``), then call::

    models = load_models(located, runtime, options)   # {key: loaded model}, once per worker process
    records = model_records(models)                   # what the manifest records of them

A handler is registered once, in the module that implements the model, under the model's zoo name::

    @register_handler("language_id")        # its zoo entry's name (unicurate/filters/language.py)
    class LanguageIdModel(Loaded):
        def __init__(self, spec, path, runtime, *, k=1):     # path: None for a tiny:// model
            ...
            self.spec, self.sha256 = spec, file_sha256(path, remember=False)
            self.device, self.precision = "cpu", "fp32"
            runtime.loaded(spec.name)

The handler is any callable ``(spec, path, runtime, **options) -> loaded model``; the loaded model has
``records() -> list[dict]`` (:class:`Loaded` gives the one record of its ``spec``, ``sha256``, ``device``
and ``precision``). ``options`` are the caller's per-model keyword arguments, keyed like the result (e.g.
``{"ocr": {"max_side": 960}}``). ``key`` names the result when it is not the zoo name (RapidOCR's three ONNX
models load as one ``"ocr"``); ``parts`` are zoo models loaded together with this one: each is handed to the
handler in the keyword ``parts`` ({name: (spec, path)} of those the recipe uses) and never loaded alone.

Handlers live beside their models: :mod:`unicurate.models.loaders` (the curate filters' models),
:mod:`unicurate.synthesis.grounding` and :mod:`unicurate.synthesis.edits` (synthesis), and any filter module
(the filters' registry imports every filter module); :func:`load_models` imports them all before it looks.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from unicurate.models.runtime import Runtime
from unicurate.models.zoo import ModelSpec

Located = Sequence[tuple[ModelSpec, Optional[Path]]]

_MODEL_MODULES = ("unicurate.models.loaders", "unicurate.synthesis.grounding", "unicurate.synthesis.edits")


@dataclass(frozen=True)
class Handler:
    name: str  # the zoo model it loads (ModelSpec.name)
    load: Callable[..., Any]  # (spec, path, runtime, **options) -> loaded model
    key: str  # its name in load_models' result
    parts: tuple[str, ...] = ()  # zoo models loaded with it (handed over in the keyword ``parts``)


_HANDLERS: dict[str, Handler] = {}


def register_handler(name: str, load: Optional[Callable[..., Any]] = None, *, key: Optional[str] = None,
                     parts: Sequence[str] = ()):
    """Register the handler of zoo model ``name``; a decorator, or a call with ``load``.

    Registering a second, different handler for a name is an error (two modules claiming one model).
    """
    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        new = Handler(name, fn, key or name, tuple(parts))
        old = _HANDLERS.get(name)
        if old is not None and old != new:
            raise ValueError(f"model {name!r} already has a handler ({old.load.__module__}.{old.load.__qualname__})")
        _HANDLERS[name] = new
        return fn

    return add if load is None else add(load)


def _discover() -> None:
    """Import every module that registers handlers (built-in model modules, then every filter module)."""
    for module in _MODEL_MODULES:
        importlib.import_module(module)
    from unicurate.filters import registry

    registry.specs()  # discovery: imports every filter module


def handlers() -> dict[str, Handler]:
    """Every registered handler, by zoo model name."""
    _discover()
    return dict(_HANDLERS)


def load_models(located: Located, runtime: Runtime, options: Optional[Mapping[str, Mapping[str, Any]]] = None
                ) -> dict[str, Any]:
    """Load each located model with its handler, in ``located`` order: {handler key: loaded model}.

    ``runtime``'s thread cap is applied first; every load is counted in ``runtime.loads``. Raises
    ModelUnavailable from the loaders (a file that is not the model's weights), LookupError for a model that
    no module handles.
    """
    registered = handlers()
    by_name = {spec.name: (spec, path) for spec, path in located}
    owner = {part: h for h in registered.values() for part in h.parts}
    for name in by_name:
        if name not in registered and name not in owner:
            raise LookupError(f"no handler loads model {name!r}; register one with "
                              f"@unicurate.models.handlers.register_handler({name!r}) in the module that implements it")
        if name in owner and owner[name].name not in by_name:
            raise LookupError(f"model {name!r} loads only together with {owner[name].name!r}, which is not located")
    runtime.limit_threads()
    models: dict[str, Any] = {}
    for name, (spec, path) in by_name.items():
        if name in owner:
            continue
        h = registered[name]
        kw = dict((options or {}).get(h.key, {}))
        if h.parts:
            kw["parts"] = {p: by_name[p] for p in h.parts if p in by_name}
        models[h.key] = h.load(spec, path, runtime, **kw)
    return models


def model_records(models: Mapping[str, Any]) -> list[dict]:
    """What the manifest records of loaded models, in load order."""
    return [rec for m in models.values() if m is not None for rec in m.records()]


def model_record(spec: ModelSpec, sha256: Optional[str], device: str, precision: str) -> dict:
    """What the manifest records of one loaded model."""
    return {"name": spec.name, "title": spec.title, "library": spec.library, "uri": spec.uri, "arch": spec.arch,
            "sha256": sha256, "calibrated": spec.calibrated, "device": device, "precision": precision}


class Loaded:
    """Common fields of a loaded model (what the manifest records); set by the loader."""

    spec: ModelSpec
    sha256: Optional[str]
    device: str = "cpu"
    precision: str = "fp32"

    def record(self) -> dict:
        return model_record(self.spec, self.sha256, self.device, self.precision)

    def records(self) -> list[dict]:
        """Every manifest record of this model (one; a model built from several zoo models gives one each)."""
        return [self.record()]
