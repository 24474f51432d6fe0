"""Scores batches of curated rows with every model filter of a recipe. No Beam here.

:class:`ModelScorer` loads the models a recipe needs once (through the zoo's
resolver and loaders), then for each batch:

1. decodes the stored images and runs each filter's CPU preprocessing on a
   thread pool (one decode per image, shared by all filters);
2. runs each model once per batch, in the filters' registered order: CLIP first
   (its normalised image embedding feeds the aesthetic and CLIP-NSFW heads),
   then the others;
3. returns the score columns per row. A row whose image cannot be prepared, or
   that makes a model fail on its own, gets ``score_error`` and a message; the
   rest of the batch is scored normally.

Decisions are separate (:class:`ModelDecider`) and need no model: they only read
recorded columns, so thresholds can change later without re-scoring.
"""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Optional, Sequence

from unicurate.filters import registry
from unicurate.filters.base import Filter
from unicurate.models.resolver import ModelUnavailable

log = logging.getLogger("unicurate")


def build_filters(filters_cfg, models: Optional[Mapping[str, Any]] = None, threads: int = 2) -> list[Filter]:
    """The recipe's model filters in scoring order (see :func:`registry.active`). ``models`` None builds them for
    deciding only."""
    return [spec.build(section, models or {}, threads) for spec, section in registry.active(filters_cfg)]


class ModelDecider:
    """Model-filter decisions from recorded scores; built once, no model needed (also serves what-if)."""

    def __init__(self, filters_cfg):
        self.filters = build_filters(filters_cfg, None)

    def reasons(self, rows: Sequence[Mapping[str, Any]], clip_min_score: Optional[float] = None,
                overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> list[list[str]]:
        """Reject reasons per row; rows without a filter's score get none from it.

        ``clip_min_score`` is the run-wide cutoff when clip_score uses keep_top_fraction; ``overrides``
        maps filter name -> thresholds (what-if).
        """
        out: list[list[str]] = [[] for _ in rows]
        for f in self.filters:
            cols = {c: [r.get(c) for r in rows] for c in f.columns}
            th = dict((overrides or {}).get(f.name, {}))
            if f.keep_top_fraction is not None and "min_score" not in th:
                th["min_score"] = clip_min_score
            for i, rs in enumerate(f.decide(cols, th or None)):
                out[i].extend(rs)
        return out


def decide_rows(filters_cfg, rows: Sequence[Mapping[str, Any]], clip_min_score: Optional[float] = None,
                overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> list[list[str]]:
    """One-off :meth:`ModelDecider.reasons` (build a ModelDecider to decide many batches)."""
    return ModelDecider(filters_cfg).reasons(rows, clip_min_score, overrides)


class ModelScorer:
    """Loads the recipe's models once and scores batches of rows (dicts with ``image`` bytes, ``caption``)."""

    def __init__(self, filters_cfg, models_cfg, located=None, runtime=None, keep: Sequence[str] = ()):
        from unicurate.models import handlers, zoo
        from unicurate.models.runtime import Runtime

        self.filters_cfg = filters_cfg
        self.models_cfg = models_cfg
        located = located if located is not None else zoo.preflight(filters_cfg, models_cfg)
        self.runtime = runtime or Runtime.for_models(models_cfg)  # how the models run (tests read its loads)
        options = registry.model_options(filters_cfg)  # e.g. the OCR detector's input size
        self.models = models = handlers.load_models(located, self.runtime, options)
        self.filters = build_filters(filters_cfg, models, threads=min(4, models_cfg.preprocess_threads))
        self._image_readers = [f for f in self.filters if f.input_key]  # the filters a row's image is decoded for
        self._pool = ThreadPoolExecutor(models_cfg.preprocess_threads, thread_name_prefix="unicurate-prep")
        self.keep = tuple(keep)  # provided columns returned too (the CLIP embeddings), not only recorded ones
        self.batches = 0

    # -------------------------------------------------------------- what the manifest records
    def model_records(self) -> list[dict]:
        from unicurate.models.handlers import model_records

        return model_records(self.models)

    @property
    def uncalibrated(self) -> bool:
        return any(not r["calibrated"] for r in self.model_records())

    # -------------------------------------------------------------- scoring
    def _prepare(self, row: Mapping[str, Any]) -> dict:
        from PIL import Image

        item = {"caption": row.get("caption")}
        if not self._image_readers:  # the recipe's filters read only the caption: no image is decoded
            return item
        data = row.get("image")
        if not data:
            raise ValueError("the row has no stored image")
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            pil = im.convert("RGB")
        done: dict = {}  # filters sharing a preprocessing function (BGR arrays) compute it once
        for f in self._image_readers:
            fn = getattr(f.prepare, "__func__", f.prepare)
            if fn not in done:
                done[fn] = f.prepare(pil)
            item[f.input_key] = done[fn]
        return item

    def _run(self, f, items: list[dict], errors: dict[int, str], idx: list[int]) -> dict[str, list]:
        """Score ``items`` with one filter; a failing batch is retried row by row to isolate bad rows. When every
        row fails (a batch of one included), a generated probe image tells bad rows from a failing model: if the
        models score the probe, the rows get their ``score_error``; if not, the exception stops the run."""
        try:
            return f.score(items)
        except ModelUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001
            first_exc: BaseException = exc
            if len(items) > 1:
                log.warning("%s failed on a batch of %d (%s); retrying row by row", f.name, len(items), exc)
        cols: dict[str, list] = {}
        failures = 0
        for j, item in enumerate(items):
            try:
                one = f.score([item]) if len(items) > 1 else None  # a batch of one has just failed
            except ModelUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001
                one = exc
            if not isinstance(one, dict):
                exc = one or first_exc
                failures += 1
                errors.setdefault(idx[j], f"{f.name}: {type(exc).__name__}: {exc}")
                continue
            for c, vals in one.items():
                cols.setdefault(c, [None] * len(items))[j] = vals[0]
        if failures == len(items) and not self._scores_a_probe():
            raise first_exc  # not bad rows: the model itself is failing
        return cols

    def _scores_a_probe(self) -> bool:
        """Whether every filter scores a plain generated image (asked again each time: a model can break mid-run)."""
        try:
            item = self._prepare(probe_row())
            for f in self.filters:
                for c, vals in f.score([item]).items():
                    item[c] = vals[0]
        except Exception:  # noqa: BLE001
            return False
        return True

    def score_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Per row: the score columns and the ``keep`` columns (absent where not computed) and ``score_error``
        (None when fine)."""
        results: list[dict] = [{"score_error": None} for _ in rows]
        prepared = list(self._pool.map(self._safe_prepare, rows))
        idx = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
        for i, p in enumerate(prepared):
            if isinstance(p, str):
                results[i]["score_error"] = p
        items = [prepared[i] for i in idx]
        errors: dict[int, str] = {}
        if items:
            for f in self.filters:
                live = [k for k, i in enumerate(idx) if i not in errors]
                if not live:
                    break
                sub = [items[k] for k in live]
                cols = self._run(f, sub, errors, [idx[k] for k in live])
                for c, vals in cols.items():
                    for k, v in zip(live, vals):
                        items[k][c] = v
        columns = [c for f in self.filters for c in f.columns] + list(self.keep)
        for k, i in enumerate(idx):
            item = items[k]
            for c in columns:
                if c in item:
                    results[i][c] = item[c]
            if i in errors:
                results[i]["score_error"] = errors[i]
        self.batches += 1
        return results

    def _safe_prepare(self, row):
        try:
            return self._prepare(row)
        except Exception as exc:  # noqa: BLE001 - a bad stored image is one row's problem
            return f"cannot prepare the image for the models: {type(exc).__name__}: {exc}"

    def close(self) -> None:
        self._pool.shutdown(wait=False)


_PROBE: list[dict] = []


def probe_row() -> dict:
    """A plain generated image with a caption: what every working model scores without error."""
    if not _PROBE:
        import numpy as np
        from PIL import Image

        y, x = np.mgrid[0:224, 0:224]
        rgb = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        _PROBE.append({"image": buf.getvalue(), "caption": "a photo of a colour gradient"})
    return dict(_PROBE[0])
