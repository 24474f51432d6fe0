"""Funnel, reason, source, score and size statistics of an output folder, with polars.

Everything is read through the manifest (the shards it lists) with
``pl.scan_parquet`` and a column projection that never includes image bytes,
so a run of millions of rows is summarised without its images in memory.
Curated shards are scanned through ``manifests.curated`` (a shard older than a
filter lacks its columns: they read as nulls).
The same functions summarise a recomputed selection (``whatif``).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import polars as pl
import pyarrow as pa

from unicurate.filters.registry import thresholds_by_column
from unicurate.manifests import curated
from unicurate.manifests import manifest as mf
from unicurate.manifests.manifest import FUNNEL_STAGES, STAGE_LABELS
from unicurate.schema import (CURATED_SCHEMA, EDIT_TYPES, IMAGE_STATUSES, KEPT, REASON_STAGE, REJECTED, SCORE_COLUMNS,
                              SYNTHESIS_DIRS, Reason, SynReason)

STATS_VERSION = 1
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
QUANTILE_NAMES = tuple(f"p{round(q * 100)}" for q in QUANTILES)
_SCORE_TYPES = {c: CURATED_SCHEMA.field(c).type for c in SCORE_COLUMNS}
# the numeric score columns (quantiles; not text such as ocr_text), and of those the float scores (histograms)
CURATED_SCORES = tuple(c for c, t in _SCORE_TYPES.items() if pa.types.is_integer(t) or pa.types.is_floating(t))
MODEL_SCORES = tuple(c for c, t in _SCORE_TYPES.items() if pa.types.is_floating(t))
SYNTHESIS_SCORES = ("detection_score", "pred_iou", "stability_score", "mask_area", "clip_similarity",
                    "change_outside", "redetect_score")
EDIT_SCORES = tuple(c for c in SYNTHESIS_SCORES if c != "mask_area")  # edit rows carry no mask_area
# curated columns a summary needs: everything but the image bytes (and the long free-text columns)
CURATED_LIGHT = ("key", "url", "caption", "source", "status", "reject_reasons", "error", "duplicate_of",
                 "image_format", "original_format", "width", "height", "original_width", "original_height",
                 "sha256", "phash", "caption_words", *CURATED_SCORES, "input_file", "input_row")
SIZE_BUCKETS = (256, 512, 1024, 2048)  # max side: <256, 256-511, 512-1023, 1024-2047, >=2048
STAGE_INDEX = {r.value: FUNNEL_STAGES.index(REASON_STAGE[r]) for r in Reason}


class StatsError(ValueError):
    """The folder cannot be summarised (no manifest, unknown kind); the message says why."""


# ------------------------------------------------------------------ reading
def shard_paths(out_dir: str, manifest: dict, subs: Sequence[str]) -> list[str]:
    """Full paths of the shards the manifest lists under ``subs`` (in manifest order)."""
    shards = manifest.get("shards", {})
    return [mf.join(out_dir, *s["path"].split("/")) for sub in subs for s in shards.get(sub, [])]


def load_manifest(out_dir: str) -> dict:
    try:
        manifest = mf.read_manifest(out_dir)
    except FileNotFoundError as exc:
        raise StatsError(str(exc)) from None
    except ValueError as exc:
        raise StatsError(f"{out_dir}/{mf.MANIFEST_NAME} is not valid JSON: {exc}") from None
    if manifest.get("kind") not in ("curated", "synthesis"):
        raise StatsError(f"{out_dir}: manifest kind {manifest.get('kind')!r} is neither curated nor synthesis")
    return manifest


def scan(out_dir: str, manifest: dict, subs: Sequence[str], columns: Sequence[str]) -> pl.LazyFrame:
    """Lazy frame over the listed shards of ``subs`` with only ``columns``; StatsError when none is listed, or
    when a curated shard breaks the curated/2 rule."""
    paths = shard_paths(out_dir, manifest, subs)
    if not paths:
        raise StatsError(f"{out_dir}: the manifest lists no shards under {', '.join(subs)}")
    if manifest.get("kind") == "curated":
        try:
            return curated.scan(paths, columns)
        except curated.CuratedShardError as exc:
            raise StatsError(str(exc)) from None
    return pl.scan_parquet(paths).select(list(columns))


def scan_curated(out_dir: str, manifest: dict, columns: Sequence[str] = CURATED_LIGHT) -> pl.LazyFrame:
    return scan(out_dir, manifest, (KEPT, REJECTED), columns)


# ------------------------------------------------------------------ helpers
def _pct(part: float, whole: float) -> Optional[float]:
    return round(100.0 * part / whole, 2) if whole else None


def _num(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 6)
    return v


def with_first_failed_stage(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``failed_stage``: index in FUNNEL_STAGES of the first stage a row failed (null: kept)."""
    return lf.with_columns(
        pl.col("reject_reasons").list.eval(pl.element().replace_strict(STAGE_INDEX, return_dtype=pl.Int8))
        .list.min().alias("failed_stage"))


def funnel_from(lf: pl.LazyFrame) -> tuple[int, list[dict]]:
    """(inputs, funnel stages) of a frame with ``reject_reasons``."""
    counts = (with_first_failed_stage(lf).group_by("failed_stage").agg(pl.len().alias("n")).collect())
    failed = {row["failed_stage"]: row["n"] for row in counts.iter_rows(named=True)}
    inputs = sum(failed.values())
    remaining, prev = inputs, inputs
    stages = []
    for i, stage in enumerate(FUNNEL_STAGES):
        lost = failed.get(i, 0)
        remaining -= lost
        stages.append({"stage": stage.value, "label": STAGE_LABELS[stage], "rows": remaining, "rejected_here": lost,
                       "pct_of_inputs": _pct(remaining, inputs), "pct_of_previous": _pct(remaining, prev)})
        prev = remaining
    return inputs, stages


def reasons_from(lf: pl.LazyFrame, inputs: int, order: Sequence[str]) -> list[dict]:
    """Per reason: rows carrying it, rows carrying only it; in ``order`` (the enum's order)."""
    exploded = (lf.select(pl.col("reject_reasons"), pl.col("reject_reasons").list.len().alias("n_reasons"))
                .explode("reject_reasons").drop_nulls("reject_reasons"))
    agg = (exploded.group_by("reject_reasons")
           .agg(pl.len().alias("rows"), (pl.col("n_reasons") == 1).sum().alias("only_this")).collect())
    found = {row["reject_reasons"]: row for row in agg.iter_rows(named=True)}
    out = []
    for code in list(order) + sorted(set(found) - set(order)):
        if code in found:
            row = found[code]
            entry = {"reason": code, "rows": row["rows"], "only_this": row["only_this"],
                     "pct_of_inputs": _pct(row["rows"], inputs)}
            if code in STAGE_INDEX:
                entry["stage"] = FUNNEL_STAGES[STAGE_INDEX[code]].value
            out.append(entry)
    return out


def quantiles_of(lf: pl.LazyFrame, columns: Sequence[str]) -> dict[str, dict]:
    """count, mean, min, p1..p99, max of each numeric column (non-null values); columns absent skipped."""
    names = lf.collect_schema().names()
    cols = [c for c in columns if c in names]
    if not cols:
        return {}
    exprs = []
    for c in cols:
        x = pl.col(c).cast(pl.Float64)
        exprs += [x.count().alias(f"{c}|count"), x.mean().alias(f"{c}|mean"), x.min().alias(f"{c}|min"),
                  x.max().alias(f"{c}|max")]
        exprs += [x.quantile(q, interpolation="linear").alias(f"{c}|{name}") for q, name in zip(QUANTILES, QUANTILE_NAMES)]
    row = lf.select(exprs).collect().row(0, named=True)
    out = {}
    for c in cols:
        if not row[f"{c}|count"]:
            continue
        out[c] = {k: _num(row[f"{c}|{k}"]) for k in ("count", "mean", "min", *QUANTILE_NAMES, "max")}
    return out


def _size_stats(lf: pl.LazyFrame) -> dict:
    stored = quantiles_of(lf.filter(pl.col("width").is_not_null()), ("width", "height"))
    original = quantiles_of(lf.filter(pl.col("original_width").is_not_null()), ("original_width", "original_height"))
    side = pl.max_horizontal("original_width", "original_height")
    bucket = pl.lit(f">={SIZE_BUCKETS[-1]}")
    for lo, hi in reversed(list(zip((0,) + SIZE_BUCKETS[:-1], SIZE_BUCKETS))):
        bucket = pl.when(side < hi).then(pl.lit(f"{lo}-{hi - 1}")).otherwise(bucket)
    counts = (lf.filter(pl.col("original_width").is_not_null()).select(bucket.alias("b"))
              .group_by("b").agg(pl.len().alias("n")).collect())
    found = {r["b"]: r["n"] for r in counts.iter_rows(named=True)}
    labels = [f"{lo}-{hi - 1}" for lo, hi in zip((0,) + SIZE_BUCKETS[:-1], SIZE_BUCKETS)] + [f">={SIZE_BUCKETS[-1]}"]
    formats = (lf.filter(pl.col("original_format").is_not_null()).group_by("original_format")
               .agg(pl.len().alias("n")).sort(["n", "original_format"], descending=[True, False]).collect())
    return {
        "stored": {"width": stored.get("width"), "height": stored.get("height")},
        "original": {"width": original.get("original_width"), "height": original.get("original_height")},
        "original_max_side": [{"bucket": b, "rows": found.get(b, 0)} for b in labels],
        "original_formats": {r["original_format"]: r["n"] for r in formats.iter_rows(named=True)},
    }


def thresholds(recipe: dict, manifest: dict) -> dict[str, dict]:
    """The decision bound of each score in a curate recipe: {"score": {"min"|"max": value}}."""
    f = recipe.get("filters", {}) or {}
    out: dict[str, dict] = {}
    c = f.get("clip_score")
    if c and c.get("keep_top_fraction") is not None and manifest.get("clip_score_cutoff") is not None:
        out["clip_score"] = {"min": manifest["clip_score_cutoff"], "keep_top_fraction": c["keep_top_fraction"]}
    for column, (name, bounds) in thresholds_by_column().items():
        sec = f.get(name)
        for bound in bounds:
            if sec and sec.get(bound.field) is not None:
                out.setdefault(column, {})[bound.side] = sec[bound.field]
    return out


# ------------------------------------------------------------------ curated
def curated_summary(lf: pl.LazyFrame, by: Optional[str] = None) -> dict:
    """Funnel, reasons, sources, scores and sizes of a frame of curated rows (light columns)."""
    names = lf.collect_schema().names()
    inputs, stages = funnel_from(lf)
    kept = stages[-1]["rows"]  # the rows no stage rejected: no second pass over the shards
    reason_order = [r.value for r in Reason]
    out: dict[str, Any] = {
        "rows": inputs, "kept": kept, "rejected": inputs - kept, "kept_pct": _pct(kept, inputs),
        "funnel": stages,
        "reasons": reasons_from(lf, inputs, reason_order),
        "sources": _groups(lf, "source"),
        "scores": {"all": quantiles_of(lf, CURATED_SCORES),
                   "kept": quantiles_of(lf.filter(pl.col("reject_reasons").list.len() == 0), CURATED_SCORES)},
        "image_sizes": _size_stats(lf),
    }
    if by:
        if by not in names:
            raise StatsError(f"--by {by}: no such column; choose one of {', '.join(sorted(names))}")
        values = (lf.select(pl.col(by).cast(pl.String)).unique().collect().to_series().to_list())
        groups = []
        for v in sorted(values, key=lambda x: (x is None, x or "")):
            sub = lf.filter(pl.col(by).cast(pl.String).is_null() if v is None else pl.col(by).cast(pl.String) == v)
            n, st = funnel_from(sub)
            groups.append({"value": v, "rows": n, "funnel": st, "reasons": reasons_from(sub, n, reason_order)})
        out["by"] = {"column": by, "groups": groups}
    return out


def _groups(lf: pl.LazyFrame, col: str) -> list[dict]:
    df = (lf.group_by(pl.col(col).cast(pl.String))
          .agg(pl.len().alias("rows"), (pl.col("reject_reasons").list.len() == 0).sum().alias("kept"))
          .sort(["rows", col], descending=[True, False]).collect())
    return [{col: r[col], "rows": r["rows"], "kept": r["kept"], "rejected": r["rows"] - r["kept"],
             "kept_pct": _pct(r["kept"], r["rows"])} for r in df.iter_rows(named=True)]


def curated_stats(out_dir: str, manifest: Optional[dict] = None, by: Optional[str] = None) -> dict:
    manifest = manifest or load_manifest(out_dir)
    lf = scan_curated(out_dir, manifest)
    body = curated_summary(lf, by)
    return {
        "stats_version": STATS_VERSION, "kind": "curated", "out_dir": str(out_dir),
        "schema_version": manifest.get("schema_version"), "recipe_hash": manifest.get("recipe_hash"),
        "uncalibrated": bool(manifest.get("uncalibrated")),
        "models": [{"name": m.get("name"), "uri": m.get("uri"), "calibrated": bool(m.get("calibrated"))}
                   for m in manifest.get("models", [])],
        "manifest_counts": manifest.get("counts"),
        "thresholds": thresholds(manifest.get("recipe", {}), manifest),
        **body,
    }


# ------------------------------------------------------------------ synthesis
def synthesis_stats(out_dir: str, manifest: Optional[dict] = None) -> dict:
    manifest = manifest or load_manifest(out_dir)
    present = [k for k in SYNTHESIS_DIRS if manifest.get("shards", {}).get(k)]
    images = scan(out_dir, manifest, ("images",), ("source_key", "status", "reject_reasons", "detections",
                                                  "objects_accepted", "subjects", "edits", "rejected"))
    n_images = images.select(pl.len()).collect().item()
    by_status = {r["status"]: r["n"] for r in
                 images.group_by("status").agg(pl.len().alias("n")).collect().iter_rows(named=True)}
    syn_order = [r.value for r in SynReason]
    out: dict[str, Any] = {
        "stats_version": STATS_VERSION, "kind": "synthesis", "out_dir": str(out_dir),
        "schema_version": manifest.get("schema_version"), "recipe_hash": manifest.get("recipe_hash"),
        "source": manifest.get("source"),
        "uncalibrated": bool(manifest.get("uncalibrated")),
        "models": [{"name": m.get("name"), "uri": m.get("uri"), "calibrated": bool(m.get("calibrated"))}
                   for m in manifest.get("models", [])],
        "manifest_counts": manifest.get("counts"),
        "images": {"rows": n_images,
                   "by_status": [{"status": s, "rows": by_status.get(s, 0), "pct": _pct(by_status.get(s, 0), n_images)}
                                 for s in IMAGE_STATUSES],
                   "reasons": reasons_from(images, n_images, syn_order)},
    }
    edits = scan(out_dir, manifest, ("edit",), ("edit_type", *EDIT_SCORES)) if "edit" in present else None
    rejected = scan(out_dir, manifest, ("rejected",), ("kind", "edit_type", "reject_reasons", *SYNTHESIS_SCORES)) \
        if "rejected" in present else None
    subjects = scan(out_dir, manifest, ("subject",), ("detection_score", "pred_iou", "stability_score", "mask_area")) \
        if "subject" in present else None
    written = ({r["edit_type"]: r["n"] for r in edits.group_by("edit_type").agg(pl.len().alias("n")).collect()
                .iter_rows(named=True)} if edits is not None else {})
    rej = {}
    if rejected is not None:
        rej = {r["edit_type"]: r["n"] for r in rejected.filter(pl.col("kind") == "edit").group_by("edit_type")
               .agg(pl.len().alias("n")).collect().iter_rows(named=True)}
    out["edits"] = [{"edit_type": t, "written": written.get(t, 0), "rejected": rej.get(t, 0),
                     "written_pct": _pct(written.get(t, 0), written.get(t, 0) + rej.get(t, 0))} for t in EDIT_TYPES]
    out["subjects"] = subjects.select(pl.len()).collect().item() if subjects is not None else 0
    if rejected is not None:
        n_rej = rejected.select(pl.len()).collect().item()
        out["rejections"] = {kind: reasons_from(rejected.filter(pl.col("kind") == kind),
                                                n_rej, syn_order) for kind in ("object", "edit")}
        out["rejections_by_edit_type"] = {
            t: reasons_from(rejected.filter((pl.col("kind") == "edit") & (pl.col("edit_type") == t)), rej.get(t, 0),
                            syn_order) for t in EDIT_TYPES if rej.get(t)}
    else:
        out["rejections"] = {"object": [], "edit": []}
        out["rejections_by_edit_type"] = {}
    out["scores"] = {
        "subject": quantiles_of(subjects, SYNTHESIS_SCORES) if subjects is not None else {},
        "edit": quantiles_of(edits, SYNTHESIS_SCORES) if edits is not None else {},
        "rejected": quantiles_of(rejected, SYNTHESIS_SCORES)
        if rejected is not None else {},
    }
    return out


def stats(out_dir: str, by: Optional[str] = None) -> dict:
    manifest = load_manifest(out_dir)
    if manifest["kind"] == "synthesis":
        if by:
            raise StatsError("--by applies to curated outputs; a synthesis output is summarised per edit type")
        return synthesis_stats(out_dir, manifest)
    return curated_stats(out_dir, manifest, by)


# ------------------------------------------------------------------ text
def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[("" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    fmt = lambda vals: "  ".join(  # noqa: E731
        (v.ljust(w) if i == 0 else v.rjust(w)) for i, (v, w) in enumerate(zip(vals, widths)))
    return [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells]


def _pct_s(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.1f}%"


def format_stats(s: dict) -> str:
    lines: list[str] = []
    if s.get("uncalibrated"):
        bad = ", ".join(m["name"] for m in s["models"] if not m["calibrated"])
        lines += [f"WARNING: UNCALIBRATED models ({bad}): their scores are meaningless (tiny profile)", ""]
    if s["kind"] == "synthesis":
        return "\n".join(lines + _format_synthesis(s))
    lines.append(f"{s['out_dir']}: {s['rows']} input rows, {s['kept']} kept ({_pct_s(s['kept_pct'])}), "
                 f"{s['rejected']} rejected")
    lines += ["", "funnel"] + _table(
        ["stage", "rows", "% of inputs", "% of previous", "rejected here"],
        [[f["label"], f["rows"], _pct_s(f["pct_of_inputs"]), _pct_s(f["pct_of_previous"]), f["rejected_here"]]
         for f in s["funnel"]])
    if s["reasons"]:
        lines += ["", "reject reasons (a row can have several)"] + _table(
            ["reason", "stage", "rows", "only this", "% of inputs"],
            [[r["reason"], r.get("stage", ""), r["rows"], r["only_this"], _pct_s(r["pct_of_inputs"])]
             for r in s["reasons"]])
    lines += ["", "sources"] + _table(["source", "rows", "kept", "rejected", "kept %"],
                                      [[g["source"], g["rows"], g["kept"], g["rejected"], _pct_s(g["kept_pct"])]
                                       for g in s["sources"]])
    th = s.get("thresholds", {})
    for label, scores in (("scores (every scored row)", s["scores"]["all"]), ("scores (kept rows)", s["scores"]["kept"])):
        if scores:
            lines += ["", label] + _table(
                ["score", "count", "threshold", *QUANTILE_NAMES],
                [[name, q["count"], _threshold_text(th.get(name)), *[q[p] for p in QUANTILE_NAMES]]
                 for name, q in scores.items()])
    sz = s["image_sizes"]
    size_rows = []
    for kind in ("original", "stored"):
        for dim in ("width", "height"):
            q = sz[kind][dim]
            if q:
                size_rows.append([f"{kind} {dim}", q["count"], q["min"], *[q[p] for p in QUANTILE_NAMES], q["max"]])
    if size_rows:
        lines += ["", "image sizes (px)"] + _table(["", "count", "min", *QUANTILE_NAMES, "max"], size_rows)
        lines.append("original max side: " + ", ".join(f"{b['bucket']}: {b['rows']}" for b in sz["original_max_side"]))
        if sz["original_formats"]:
            lines.append("original formats: " + ", ".join(f"{k}: {v}" for k, v in sz["original_formats"].items()))
    if "by" in s:
        col = s["by"]["column"]
        for g in s["by"]["groups"]:
            kept = g["funnel"][-1]["rows"]
            lines += ["", f"{col} = {g['value']}: {g['rows']} rows, {kept} kept ({_pct_s(_pct(kept, g['rows']))})"]
            lines += ["  " + x for x in _table(["stage", "rows", "% of inputs"],
                                               [[f["label"], f["rows"], _pct_s(f["pct_of_inputs"])] for f in g["funnel"]])]
            if g["reasons"]:
                lines.append("  reasons: " + ", ".join(f"{r['reason']} {r['rows']}" for r in g["reasons"]))
    return "\n".join(lines)


def _threshold_text(t: Optional[dict]) -> str:
    if not t:
        return ""
    parts = []
    if "min" in t:
        parts.append(f">={t['min']:.4g}")
    if "max" in t:
        parts.append(f"<={t['max']:.4g}")
    if "keep_top_fraction" in t:
        parts.append(f"(top {t['keep_top_fraction']:.0%})")
    return " ".join(parts)


def _format_synthesis(s: dict) -> list[str]:
    im = s["images"]
    lines = [f"{s['out_dir']}: {im['rows']} input images, {s['subjects']} subject samples, "
             f"{sum(e['written'] for e in s['edits'])} edit triplets"]
    lines += ["", "images by outcome"] + _table(["status", "images", "%"],
                                               [[b["status"], b["rows"], _pct_s(b["pct"])] for b in im["by_status"]])
    lines += ["", "edit triplets per type"] + _table(
        ["edit type", "written", "rejected", "written %"],
        [[e["edit_type"], e["written"], e["rejected"], _pct_s(e["written_pct"])] for e in s["edits"]])
    for kind in ("object", "edit"):
        rs = s["rejections"].get(kind) or []
        if rs:
            lines += ["", f"{kind} rejections by reason"] + _table(
                ["reason", "rows", "only this"], [[r["reason"], r["rows"], r["only_this"]] for r in rs])
    for table, scores in s["scores"].items():
        if scores:
            lines += ["", f"scores ({table} rows)"] + _table(
                ["score", "count", *QUANTILE_NAMES], [[n, q["count"], *[q[p] for p in QUANTILE_NAMES]]
                                                      for n, q in scores.items()])
    return lines
