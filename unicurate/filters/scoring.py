"""Scores batches of curated rows with every model filter of a recipe. No Beam here.

:class:`ModelScorer` loads the models a recipe needs once (through the zoo's
resolver and loaders), then for each batch:

1. decodes the stored images and runs each filter's CPU preprocessing on a
   thread pool (one decode per image, shared by all filters);
2. runs each model once per batch: CLIP first (its normalised image embedding
   feeds the aesthetic and CLIP-NSFW heads), then the others;
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

from unicurate.filters.aesthetic import AestheticFilter
from unicurate.filters.clip_score import ClipScoreFilter
from unicurate.filters.nsfw import NsfwFilter
from unicurate.filters.text_coverage import TextCoverageFilter
from unicurate.filters.watermark import WatermarkFilter
from unicurate.models.resolver import ModelUnavailable
from unicurate.schema import SCORE_COLUMNS

log = logging.getLogger("unicurate")

FILTER_CLASSES = (ClipScoreFilter, AestheticFilter, NsfwFilter, WatermarkFilter, TextCoverageFilter)
FILTER_REASONS = {cls.name: cls.reasons for cls in FILTER_CLASSES}  # filter name -> the reasons it gives


def build_filters(filters_cfg, models: Optional[Mapping[str, Any]] = None, threads: int = 2) -> list:
    """The recipe's model filters in scoring order. ``models`` None builds them for deciding only."""
    m = models or {}
    out: list = []
    c = filters_cfg.clip_score
    if c is not None:
        out.append(ClipScoreFilter(m.get("clip"), c.min_score, c.keep_top_fraction, with_text=True))
    elif "clip" in m:  # CLIP only for the heads' image embedding
        out.append(ClipScoreFilter(m["clip"], with_text=False))
    if filters_cfg.aesthetic is not None:
        out.append(AestheticFilter(m.get("aesthetic"), filters_cfg.aesthetic.min_score))
    n = filters_cfg.nsfw
    if n is not None:
        model = m.get("nsfw_clip_head" if n.backend == "clip_head" else "nudenet")
        out.append(NsfwFilter(model, n.backend, n.max_score))
    if filters_cfg.watermark is not None:
        out.append(WatermarkFilter(m.get("watermark"), filters_cfg.watermark.max_score))
    t = filters_cfg.text_coverage
    if t is not None:
        out.append(TextCoverageFilter(m.get("ocr"), t.max_coverage, t.min_coverage, threads=threads))
    return out


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
            if getattr(f, "keep_top_fraction", None) is not None and "min_score" not in th:
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

    def __init__(self, filters_cfg, models_cfg, located=None):
        from unicurate.models import loaders, zoo

        self.filters_cfg = filters_cfg
        self.models_cfg = models_cfg
        located = located if located is not None else zoo.preflight(filters_cfg, models_cfg)
        self.device, self.precision = loaders.select_device(models_cfg.device, models_cfg.precision)
        loaders.set_compile(models_cfg.compile)
        by_name = {spec.name: (spec, path) for spec, path in located}
        models: dict[str, Any] = {}
        ctor = {"clip": loaders.ClipModel, "aesthetic": loaders.AestheticModel,
                "nsfw_clip_head": loaders.ClipNsfwHead, "watermark": loaders.WatermarkModel,
                "nudenet": loaders.NudeNetModel}
        for name, (spec, path) in by_name.items():
            if name in ctor:
                models[name] = ctor[name](spec, path, self.device, self.precision)
        if "ocr_det" in by_name:
            tc = filters_cfg.text_coverage
            models["ocr"] = loaders.OcrModel({n: s for n, (s, _) in by_name.items() if n.startswith("ocr_")},
                                             {n: p for n, (_, p) in by_name.items() if n.startswith("ocr_")},
                                             self.device, max_side=tc.max_side)
        self.models = models
        self.filters = build_filters(filters_cfg, models, threads=min(4, models_cfg.preprocess_threads))
        self._pool = ThreadPoolExecutor(models_cfg.preprocess_threads, thread_name_prefix="unicurate-prep")
        self.batches = 0

    # -------------------------------------------------------------- what the manifest records
    def model_records(self) -> list[dict]:
        out = []
        for m in self.models.values():
            out.extend(m.records() if hasattr(m, "records") else [m.record()])
        return out

    @property
    def uncalibrated(self) -> bool:
        return any(not r["calibrated"] for r in self.model_records())

    # -------------------------------------------------------------- scoring
    def _prepare(self, row: Mapping[str, Any]) -> dict:
        from PIL import Image

        data = row.get("image")
        if not data:
            raise ValueError("the row has no stored image")
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            pil = im.convert("RGB")
        item = {"caption": row.get("caption")}
        done: dict = {}  # filters sharing a preprocessing function (BGR arrays) compute it once
        for f in self.filters:
            key = getattr(f, "input_key", None)
            if key:
                fn = getattr(f.prepare, "__func__", f.prepare)
                if fn not in done:
                    done[fn] = f.prepare(pil)
                item[key] = done[fn]
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
        """Per row: the score columns (None where not computed) and ``score_error`` (None when fine)."""
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
        for k, i in enumerate(idx):
            item = items[k]
            for c in SCORE_COLUMNS:
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
