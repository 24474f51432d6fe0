"""One self-contained HTML report of an output folder (inline CSS, images and plots as data URIs).

Curated runs: summary, models (a red banner when any is uncalibrated), the
funnel as a chart and a table, reject reasons, one histogram per score with
its threshold drawn, a grid of kept samples and, per reject reason, a sample of
rejected rows with their scores. Synthesis runs: summary, models, images by
outcome and edits per type as charts, score histograms, source / instruction /
target triplets per edit type and reference / target subject pairs, with the
mask overlaid on the target.

Statistics come from :mod:`unicurate.manifests.stats` (polars, lazily); only
the sampled rows' images are read. Every text from the data (captions, URLs,
instructions, errors) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import polars as pl

from unicurate.filters.rules import CONTROL_CHARS
from unicurate.manifests import stats as st
from unicurate.schema import EDIT_TYPES, KEPT, REJECTED

THUMB = 176
_NUMERIC = re.compile(r"^[-+]?[0-9.,%e–]+$")
PLOT_DPI = 96
_KEPT_COLOUR, _REJ_COLOUR, _LINE_COLOUR = "#2e7d32", "#c62828", "#1565c0"

CSS = """
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;
background:#f6f7f9}header{background:#1d2b3a;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header .meta{opacity:.8;font-size:13px}main{padding:18px 28px;max-width:1500px}section{background:#fff;
border:1px solid #e1e4e8;border-radius:8px;padding:14px 18px;margin:0 0 18px}h2{font-size:18px;margin:0 0 10px}
h3{font-size:15px;margin:14px 0 8px}.banner{background:#b71c1c;color:#fff;padding:12px 28px;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#f0f3f6;border-radius:6px;padding:10px 16px;min-width:130px}
.card b{display:block;font-size:22px}table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border-bottom:1px solid #e6e8eb;padding:4px 10px;text-align:left}td.n{text-align:right}
th{background:#f3f5f7}.no{color:#b71c1c;font-weight:600}.plots{display:flex;flex-wrap:wrap;gap:10px}
img.plot{max-width:100%;border:1px solid #eee;border-radius:4px}.grid{display:grid;gap:10px;
grid-template-columns:repeat(auto-fill,minmax(190px,1fr))}.tile{margin:0;background:#fafbfc;border:1px solid #e3e6ea;
border-radius:6px;padding:6px;overflow:hidden}.tile img{display:block;width:100%;height:auto;border-radius:4px}
.tile figcaption{font-size:12px;margin-top:4px;word-wrap:break-word}.scores{color:#555;font-size:11px;font-family:
ui-monospace,monospace}.noimg{height:120px;display:flex;align-items:center;justify-content:center;background:
repeating-linear-gradient(45deg,#eee,#eee 8px,#f7f7f7 8px,#f7f7f7 16px);color:#777;font-size:12px;text-align:center;
border-radius:4px;padding:6px}.reason-tag{display:inline-block;background:#fdecea;color:#b71c1c;border-radius:3px;
padding:0 5px;margin:1px;font-size:11px}.wide{grid-template-columns:repeat(auto-fill,minmax(400px,1fr))}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:6px}.pair .lbl{font-size:11px;color:#666}
.instruction{font-weight:600;margin:4px 0}footer{color:#777;font-size:12px;padding:0 28px 24px}
"""


class ReportError(ValueError):
    pass


# ------------------------------------------------------------------ images
def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(data: Optional[bytes], size: int = THUMB, mask: Optional[bytes] = None) -> Optional[str]:
    """A JPEG data URI of the image fitted in size x size; ``mask`` (PNG) overlaid in red. None if undecodable."""
    if not data:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = im.convert("RGB")
        if mask:
            rgb = _overlay(rgb, mask)
        rgb.thumbnail((size, size))
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=82)
        return _data_uri(buf.getvalue(), "image/jpeg")
    except Exception:  # noqa: BLE001 - a broken stored image becomes a placeholder, not a crash
        return None


def _overlay(rgb, mask_png: bytes):
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(mask_png)) as m:
            mk = np.asarray(m.convert("L").resize(rgb.size, Image.NEAREST)) > 0
    except Exception:  # noqa: BLE001
        return rgb
    arr = np.asarray(rgb).astype(np.float32)
    red = np.array([229, 57, 53], np.float32)
    arr[mk] = arr[mk] * 0.5 + red * 0.5
    edge = mk ^ (np.roll(mk, 1, 0) & np.roll(mk, -1, 0) & np.roll(mk, 1, 1) & np.roll(mk, -1, 1))
    arr[edge & mk] = red
    return Image.fromarray(arr.clip(0, 255).astype("uint8"))


# ------------------------------------------------------------------ plots
def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=PLOT_DPI, layout="constrained")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _data_uri(buf.getvalue(), "image/png")


def funnel_chart(stages: Sequence[dict]) -> str:
    fig = _figure(7.5, 0.42 * len(stages) + 0.9)
    ax = fig.add_subplot()
    labels = [s["label"] for s in stages][::-1]
    rows = [s["rows"] for s in stages][::-1]
    bars = ax.barh(labels, rows, color=_LINE_COLOUR)
    top = max(rows) if rows else 1
    for bar, s in zip(bars, stages[::-1]):
        pct = s.get("pct_of_inputs")
        ax.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2,
                f"{s['rows']}" + (f" ({pct:.1f}%)" if pct is not None else ""), va="center", fontsize=9)
    ax.set_xlim(0, top * 1.25 or 1)
    ax.set_xlabel("rows")
    ax.set_title("funnel")
    return _png(fig)


def bar_chart(title: str, labels: Sequence[str], series: dict[str, Sequence[int]], colours: Sequence[str]) -> str:
    import numpy as np

    fig = _figure(7.5, 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, ((name, vals), colour) in enumerate(zip(series.items(), colours)):
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=name, color=colour)
    ax.set_xticks(x, labels, rotation=20)
    ax.set_title(title)
    ax.legend()
    return _png(fig)


def histogram(name: str, kept: Sequence[float], rejected: Sequence[float], threshold: Optional[dict],
              labels: Sequence[str] = ("kept", "rejected")) -> str:
    import numpy as np

    fig = _figure(4.6, 2.9)
    ax = fig.add_subplot()
    values = [v for v in list(kept) + list(rejected) if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    for side in ("min", "max"):
        bound = (threshold or {}).get(side)
        if bound is not None:
            lo, hi = min(lo, bound), max(hi, bound)
    if hi <= lo:
        hi = lo + 1e-6
    bins = np.linspace(lo, hi, 31)
    ax.hist([list(kept), list(rejected)], bins=bins, stacked=True, color=[_KEPT_COLOUR, _REJ_COLOUR],
            label=list(labels))
    for side in ("min", "max"):
        if threshold and threshold.get(side) is not None:
            ax.axvline(threshold[side], color=_LINE_COLOUR, linestyle="--", linewidth=1.6)
            ax.annotate(f"{side} {threshold[side]:.4g}", xy=(threshold[side], 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", color=_LINE_COLOUR, fontsize=8)
    ax.set_title(name)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    return _png(fig)


# ------------------------------------------------------------------ html helpers
# control characters cannot appear in HTML (NUL) or show nothing: they are drawn as Unicode control pictures
CAPTION_CHARS = 300  # longer captions are cut in tiles (a 100 KB caption would bloat the page)


def _visible(m: re.Match) -> str:
    c = ord(m.group())
    return chr(0x2400 + c) if c < 0x20 else "\u2421" if c == 0x7F else f"\\x{c:02x}"


def esc(v: Any) -> str:
    """HTML-escaped text, with control characters made visible."""
    return html.escape(CONTROL_CHARS.sub(_visible, "" if v is None else str(v)), quote=True)


def clip(v: Any, limit: int = CAPTION_CHARS) -> str:
    """``v`` as text, cut to ``limit`` characters with the full length said."""
    text = "" if v is None else str(v)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if _NUMERIC.match(str(c)) else f"<td>{c}</td>"
                                    for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(uri: Optional[str], alt: str, placeholder: str) -> str:
    if uri:
        return f'<img src="{uri}" alt="{esc(alt)}" loading="lazy">'
    return f'<div class="noimg">{esc(placeholder)}</div>'


def _models_section(manifest: dict) -> str:
    rows = []
    for m in manifest.get("models", []):
        cal = "yes" if m.get("calibrated") else '<span class="no">NO (uncalibrated)</span>'
        rows.append([esc(m.get("name")), esc(m.get("title") or m.get("arch") or ""), f"<code>{esc(m.get('uri'))}</code>",
                     esc(", ".join(m.get("devices") or [m.get("device") or ""])), cal])
    return ('<section id="models"><h2>Models</h2>' +
            _table(["model", "what", "weights", "device", "calibrated"], rows) + "</section>")


def _banner(manifest: dict) -> str:
    if not manifest.get("uncalibrated"):
        return ""
    bad = [m.get("name", "?") for m in manifest.get("models", []) if not m.get("calibrated")]
    return (f'<div class="banner" id="uncalibrated-banner">UNCALIBRATED MODELS: {esc(", ".join(bad))}. '
            "Their weights are random (tiny profile): scores and selections in this report are meaningless.</div>")


def _page(title: str, meta: str, banner: str, sections: Sequence[str], kind: str) -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body data-kind=\"{esc(kind)}\">{banner}<header><h1>{esc(title)}</h1>"
            f"<div class=\"meta\">{meta}</div></header><main>{''.join(sections)}</main>"
            "<footer>Generated by unicurate from the manifest and shards of this folder.</footer></body></html>")


def _meta_line(out_dir: str, manifest: dict) -> str:
    return (f"{esc(out_dir)} · schema {esc(manifest.get('schema_version'))} · recipe "
            f"{esc((manifest.get('recipe') or {}).get('name'))} <code>{esc(str(manifest.get('recipe_hash'))[:12])}</code>"
            f" · unicurate {esc(manifest.get('unicurate_version'))} · {esc(manifest.get('created_at'))}")


# ------------------------------------------------------------------ curated
_TILE_SCORES = st.MODEL_SCORES


def _score_line(row: dict, names: Sequence[str]) -> str:
    parts = [f"{n.replace('_score', '')} {_fmt(row.get(n))}" for n in names if row.get(n) is not None]
    return f'<div class="scores">{esc(" · ".join(parts))}</div>' if parts else ""


def _curated_tile(row: dict, cls: str) -> str:
    reasons = "".join(f'<span class="reason-tag">{esc(r)}</span>' for r in row.get("reject_reasons") or [])
    err = f'<div class="scores">{esc(str(row["error"])[:160])}</div>' if row.get("error") else ""
    placeholder = "no image stored" + (" (rejected before download finished)" if not row.get("sha256") else "")
    return (f'<figure class="tile {cls}" data-key="{esc(row["key"])}">'
            f'{_img(thumbnail(row.get("image")), clip(row.get("caption") or row["key"]), placeholder)}'
            f'<figcaption>{esc(clip(row.get("caption")))}{_score_line(row, _TILE_SCORES)}{reasons}{err}'
            f'</figcaption></figure>')


_CURATED_TILE_COLUMNS = ["key", "caption", "url", "image", "reject_reasons", "error", "sha256", *_TILE_SCORES]


def _sample(out_dir: str, manifest: dict, sub: str, columns: Sequence[str], where: pl.Expr, n: int) -> list[dict]:
    """Up to ``n`` rows of OUT/sub matching ``where``, the first by key; only their images are read."""
    if not (manifest.get("shards") or {}).get(sub):
        return []
    lf = st.scan(out_dir, manifest, (sub,), columns)
    keys = lf.filter(where).select("key").sort("key").head(n).collect()["key"].to_list()
    if not keys:
        return []
    by_key = {r["key"]: r for r in lf.filter(pl.col("key").is_in(keys)).collect().iter_rows(named=True)}
    return [by_key[k] for k in keys]


def curated_report(out_dir: str, manifest: dict, max_kept: int = 24, per_reason: int = 6) -> str:
    s = st.curated_stats(out_dir, manifest)
    lf = st.scan_curated(out_dir, manifest)
    sections = []
    cards = [("input rows", s["rows"]), ("kept", s["kept"]), ("rejected", s["rejected"]),
             ("kept %", f"{s['kept_pct']:.1f}%" if s["kept_pct"] is not None else "–")]
    sections.append('<section id="summary"><h2>Summary</h2><div class="cards">' +
                    "".join(f'<div class="card">{esc(k)}<b>{esc(v)}</b></div>' for k, v in cards) + "</div></section>")
    sections.append(_models_section(manifest))
    sections.append(
        '<section id="funnel"><h2>Funnel</h2>'
        f'<img class="plot" id="funnel-chart" src="{funnel_chart(s["funnel"])}" alt="funnel chart">'
        + _table(["stage", "rows", "% of inputs", "% of previous", "rejected here"],
                 [[esc(f["label"]), f["rows"], _fmt(f["pct_of_inputs"]), _fmt(f["pct_of_previous"]), f["rejected_here"]]
                  for f in s["funnel"]])
        + "<h3>Reject reasons</h3><p>A row can have several reasons; “only this” counts rows with that reason alone.</p>"
        + _table(["reason", "stage", "rows", "only this", "% of inputs"],
                 [[esc(r["reason"]), esc(r.get("stage", "")), r["rows"], r["only_this"], _fmt(r["pct_of_inputs"])]
                  for r in s["reasons"]]) + "</section>")
    # histograms
    score_cols = [c for c in st.MODEL_SCORES if c in s["scores"]["all"]]
    plots = []
    if score_cols:
        vals = lf.select(["reject_reasons", *score_cols]).collect()
        is_kept = vals["reject_reasons"].list.len() == 0
        for c in score_cols:
            kept_v = vals.filter(is_kept & pl.col(c).is_not_null())[c].to_list()
            rej_v = vals.filter(~is_kept & pl.col(c).is_not_null())[c].to_list()
            plots.append(f'<img class="plot hist" data-score="{esc(c)}" '
                         f'src="{histogram(c, kept_v, rej_v, s["thresholds"].get(c))}" alt="{esc(c)} histogram">')
    sections.append('<section id="scores"><h2>Scores</h2><p>Kept and rejected rows stacked; the dashed line is the '
                    "recipe's threshold (for a keep-top-fraction CLIP filter, the run's cutoff).</p>"
                    f'<div class="plots">{"".join(plots) or "<p>No model scores in this run.</p>"}</div>'
                    + _score_table(s) + "</section>")
    # kept grid
    tiles = [_curated_tile(r, "kept") for r in _sample(out_dir, manifest, KEPT, _CURATED_TILE_COLUMNS, pl.lit(True),
                                                       max_kept)]
    sections.append(f'<section id="kept"><h2>Kept samples ({len(tiles)} of {s["kept"]})</h2>'
                    f'<div class="grid">{"".join(tiles)}</div></section>')
    # rejected per reason
    parts = []
    for r in s["reasons"]:
        code = r["reason"]
        rows = _sample(out_dir, manifest, REJECTED, _CURATED_TILE_COLUMNS, pl.col("reject_reasons").list.contains(code),
                       per_reason)
        parts.append(f'<section class="reason" data-reason="{esc(code)}"><h3>{esc(code)} '
                     f'({len(rows)} of {r["rows"]})</h3><div class="grid">'
                     + "".join(_curated_tile(row, "rejected") for row in rows) + "</div></section>")
    note = "" if (manifest.get("recipe", {}).get("output", {}) or {}).get("keep_rejected_images") else \
        "<p>This run did not store rejected images (output.keep_rejected_images: false), so only their data shows.</p>"
    sections.append(f'<section id="rejected"><h2>Rejected samples by reason</h2>{note}{"".join(parts)}</section>')
    title = f"unicurate report: {(manifest.get('recipe') or {}).get('name', 'curate')} (curated)"
    return _page(title, _meta_line(out_dir, manifest), _banner(manifest), sections, "curated")


def _score_table(s: dict) -> str:
    rows = []
    for name, q in s["scores"]["all"].items():
        rows.append([esc(name), q["count"], esc(json.dumps(s["thresholds"].get(name)) if s["thresholds"].get(name)
                                                 else ""), *[_fmt(q[p]) for p in st.QUANTILE_NAMES]])
    return _table(["score", "count", "threshold", *st.QUANTILE_NAMES], rows) if rows else ""


# ------------------------------------------------------------------ synthesis
def synthesis_report(out_dir: str, manifest: dict, per_type: int = 4, max_subjects: int = 12) -> str:
    s = st.synthesis_stats(out_dir, manifest)
    sections = []
    n_edits = sum(e["written"] for e in s["edits"])
    cards = [("input images", s["images"]["rows"]), ("subject samples", s["subjects"]), ("edit triplets", n_edits),
             ("images producing data", next((b["rows"] for b in s["images"]["by_status"] if b["status"] == "produced"), 0))]
    src = manifest.get("source") or {}
    sections.append('<section id="summary"><h2>Summary</h2><div class="cards">' +
                    "".join(f'<div class="card">{esc(k)}<b>{esc(v)}</b></div>' for k, v in cards) +
                    f'</div><p>From curated run <code>{esc(src.get("path") if isinstance(src, dict) else src)}</code>.'
                    "</p></section>")
    sections.append(_models_section(manifest))
    status_chart = bar_chart("input images by outcome", [b["status"] for b in s["images"]["by_status"]],
                             {"images": [b["rows"] for b in s["images"]["by_status"]]}, [_LINE_COLOUR])
    edit_chart = bar_chart("edit triplets per type", [e["edit_type"] for e in s["edits"]],
                           {"written": [e["written"] for e in s["edits"]],
                            "rejected": [e["rejected"] for e in s["edits"]]}, [_KEPT_COLOUR, _REJ_COLOUR])
    rej_rows = [[esc(kind), esc(r["reason"]), r["rows"], r["only_this"]]
                for kind in ("object", "edit") for r in s["rejections"].get(kind) or []]
    sections.append('<section id="funnel"><h2>Funnel</h2><div class="plots">'
                    f'<img class="plot" id="funnel-chart" src="{status_chart}" alt="images by outcome">'
                    f'<img class="plot" id="edit-chart" src="{edit_chart}" alt="edits per type"></div>'
                    + _table(["edit type", "written", "rejected"],
                             [[esc(e["edit_type"]), e["written"], e["rejected"]] for e in s["edits"]])
                    + "<h3>Rejections by reason</h3>" + _table(["level", "reason", "rows", "only this"], rej_rows)
                    + "</section>")
    plots = []
    rec = manifest.get("recipe") or {}
    checks = rec.get("checks") or {}
    bounds = {"clip_similarity": {k: v for k, v in (("min", checks.get("min_clip_similarity")),
                                                    ("max", checks.get("max_clip_similarity"))) if v is not None},
              "change_outside": {k: v for k, v in (("max", checks.get("max_change_outside")),) if v is not None}}
    q = rec.get("quality") or {}
    bounds.update({"pred_iou": {"min": q["min_pred_iou"]} if q.get("min_pred_iou") is not None else {},
                   "stability_score": {"min": q["min_stability"]} if q.get("min_stability") is not None else {}})
    for col in ("clip_similarity", "pred_iou", "stability_score", "change_outside"):
        kept_v = _column(out_dir, manifest, "edit", col)
        rej_v = _column(out_dir, manifest, "rejected", col)
        if kept_v or rej_v:
            plots.append(f'<img class="plot hist" data-score="{esc(col)}" '
                         f'src="{histogram(col, kept_v, rej_v, bounds.get(col), ("written", "rejected"))}" '
                         f'alt="{esc(col)} histogram">')
    sections.append('<section id="scores"><h2>Scores</h2><p>Written (green) and rejected (red) rows; dashed lines '
                    f'are the recipe\'s bounds.</p><div class="plots">{"".join(plots)}</div></section>')
    cols = ["key", "edit_type", "instruction", "source_image", "target_image", "mask", "phrase", "clip_similarity",
            "change_outside", "pred_iou"]
    parts = []
    for t in EDIT_TYPES:
        rows = _sample(out_dir, manifest, "edit", cols, pl.col("edit_type") == t, per_type)
        if not rows:
            continue
        figs = [f'<figure class="tile triplet" data-key="{esc(r["key"])}" data-edit="{esc(t)}"><div class="pair">'
                f'<div><div class="lbl">source</div>{_img(thumbnail(r["source_image"], 240), "source", "no image")}</div>'
                f'<div><div class="lbl">target (mask in red)</div>'
                f'{_img(thumbnail(r["target_image"], 240, r["mask"]), "target", "no image")}</div></div>'
                f'<figcaption><div class="instruction">{esc(r["instruction"])}</div>'
                f'{_score_line(r, ("clip_similarity", "change_outside", "pred_iou"))}</figcaption></figure>'
                for r in rows]
        parts.append(f'<section class="edit-type" data-edit="{esc(t)}"><h3>{esc(t)}</h3>'
                     f'<div class="grid wide">{"".join(figs)}</div></section>')
    sections.append(f'<section id="triplets"><h2>Edit triplets: source / instruction / target</h2>{"".join(parts)}'
                    "</section>")
    rows = _sample(out_dir, manifest, "subject", ["key", "instruction", "reference_image", "target_image", "mask",
                                                    "phrase", "pred_iou", "mask_area"], pl.lit(True), max_subjects)
    figs = [f'<figure class="tile subject-pair" data-key="{esc(r["key"])}"><div class="pair">'
            f'<div><div class="lbl">reference</div>{_img(thumbnail(r["reference_image"], 240), "reference", "no image")}'
            f'</div><div><div class="lbl">target (mask in red)</div>'
            f'{_img(thumbnail(r["target_image"], 240, r["mask"]), "target", "no image")}</div></div>'
            f'<figcaption><div class="instruction">{esc(r["instruction"])}</div>'
            f'{_score_line(r, ("pred_iou", "mask_area"))}</figcaption></figure>' for r in rows]
    sections.append(f'<section id="subjects"><h2>Subject samples: reference / target ({len(figs)} of '
                    f'{s["subjects"]})</h2><div class="grid wide">{"".join(figs)}</div></section>')
    title = f"unicurate report: {rec.get('name', 'synthesize')} (synthesis)"
    return _page(title, _meta_line(out_dir, manifest), _banner(manifest), sections, "synthesis")


def _column(out_dir, manifest, sub, col) -> list[float]:
    if not (manifest.get("shards") or {}).get(sub):
        return []
    return (st.scan(out_dir, manifest, (sub,), [col]).drop_nulls().collect()[col].to_list())


# ------------------------------------------------------------------ entry
def write_report(out_dir: str, out_html: Optional[str] = None, **kw: Any) -> Path:
    """Write the report (default OUT/report.html for local folders); returns its path."""
    manifest = st.load_manifest(out_dir)
    page = synthesis_report(out_dir, manifest, **kw) if manifest["kind"] == "synthesis" else \
        curated_report(out_dir, manifest, **kw)
    if out_html is None:
        if "://" in out_dir:
            raise ReportError("give --out for a remote output folder, e.g. --out report.html")
        out_html = str(Path(out_dir) / "report.html")
    path = Path(out_html)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
