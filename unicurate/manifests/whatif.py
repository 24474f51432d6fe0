"""What-if thresholds: recompute the selection of a curate run from its recorded scores.

No model runs. The run's recipe (from its manifest) gets the new thresholds;
each row's model-filter reasons are decided again by the same
:class:`~unicurate.filters.scoring.ModelDecider` the pipeline uses, and the
duplicate decisions are made again by the same functions (an exact duplicate's
winner is the earliest row that passes every other filter, so it can change
when thresholds do). Everything else a row was rejected for (download, decode,
rule filters, score errors) stays. The result is what a fresh ``unicurate run``
of the changed recipe would keep, given the same downloads and scores.

``apply`` writes the new selection as a complete output folder (shards with
the same names, a manifest whose recipe is the changed one and which records
where it was derived from), so every other command works on it.
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import polars as pl

from unicurate.filters import dedup as dd
from unicurate.filters.registry import Threshold, thresholds_by_column
from unicurate.manifests import curated
from unicurate.manifests import embeddings as emb
from unicurate.manifests import manifest as mf
from unicurate.manifests import stats as st
from unicurate.manifests.validate import check_run
from unicurate.schema import (CURATED_SCHEMA, CURATED_SCHEMA_VERSION, KEPT, REASON_STAGE, REJECTED, SCORE_COLUMNS,
                              Reason, Stage, shard_index)

# --set SCORE OP VALUE -> (the filter's section, its bounds on SCORE). OP is the direction a row must satisfy to be
# kept; each filter declares its bounds (unicurate/filters/registry.py)
SETTABLE = thresholds_by_column()
_SET_RE = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|=)\s*(\S+)\s*$")
# reasons a what-if decides again; every other reason a row has stays
MODEL_REASONS = frozenset(r.value for r in Reason if REASON_STAGE[r] == Stage.SCORE and r != Reason.SCORE_ERROR)
DEDUP_REASONS = frozenset({Reason.DUPLICATE.value, Reason.NEAR_DUPLICATE.value, Reason.SEMANTIC_DUPLICATE.value})
_CHUNK = 50_000


class WhatIfError(ValueError):
    """A --set expression or the output cannot be used; the message says why and what to do."""


@dataclass
class Setting:
    score: str
    op: str
    value: Optional[float]  # None: the bounds are removed ("off")
    section: str
    bounds: tuple[Threshold, ...]  # the bounds it sets (all of them for "off")

    def text(self) -> str:
        return f"{self.score}=off" if self.value is None else f"{self.score}{self.op}{self.value:g}"


def parse_setting(expr: str) -> Setting:
    """``clip_score>=0.3``, ``nsfw_score<=0.4``, ``text_coverage<=0.1``, ``watermark_score=off``."""
    m = _SET_RE.match(expr)
    if not m and expr.strip() in SETTABLE:
        raise WhatIfError(f"--set {expr!r} has no bound: quote the expression, or the shell takes '>' as a "
                          f"redirection, e.g. --set '{expr.strip()}>=0.3'")
    if not m:
        raise WhatIfError(f"--set {expr!r}: expected SCORE>=VALUE, SCORE<=VALUE or SCORE=off, "
                          f"e.g. clip_score>=0.3 (scores: {', '.join(SETTABLE)})")
    score, op, raw = m.groups()
    if score not in SETTABLE:
        raise WhatIfError(f"--set {expr!r}: unknown score {score!r}; scores with thresholds: {', '.join(SETTABLE)}")
    section, bounds = SETTABLE[score]
    if op == "=":
        if raw.lower() not in ("off", "none", "null"):
            raise WhatIfError(f"--set {expr!r}: use {score}{bounds[0].op}{raw} for a bound, or {score}=off "
                              "to remove it")
        return Setting(score, "=", None, section, bounds)
    try:
        value = float(raw)
    except ValueError:
        raise WhatIfError(f"--set {expr!r}: {raw!r} is not a number") from None
    chosen = tuple(t for t in bounds if t.op == op)
    if not chosen:
        want = bounds[0].op
        kind = "minimum" if want == ">=" else "maximum"
        raise WhatIfError(f"--set {expr!r}: {score} is a {kind} (rows are kept when {score} {want} the bound); "
                          f"use {score}{want}{raw}")
    return Setting(score, op, value, section, chosen)


def changed_recipe(recipe: dict, settings: Sequence[Setting]):
    """The run's recipe (resolved form, from the manifest) with the new bounds, validated (a CurateRecipe)."""
    from unicurate.config import RecipeError, parse_recipe

    data = copy.deepcopy(recipe)
    filters = data.setdefault("filters", {})
    for s in settings:
        sec = filters.get(s.section)
        if sec is None:
            raise WhatIfError(f"--set {s.text()}: the run did not use the {s.section} filter, so no {s.score} was "
                              "recorded; add the filter to the recipe and rerun")
        for bound in s.bounds:
            sec[bound.field] = s.value
            for replaced in bound.replaces:  # e.g. an absolute clip_score bound replaces the run-wide top fraction
                sec[replaced] = None
    try:
        return parse_recipe(data, source="what-if recipe")
    except RecipeError as exc:
        raise WhatIfError(str(exc)) from None


# ------------------------------------------------------------------ recompute
def _order_of(df: pl.DataFrame) -> list[tuple]:
    """Input order (file index, row) as the pipeline defines it: files sorted by path."""
    files = sorted({f for f in df["input_file"].to_list() if f is not None})
    index = {f: i for i, f in enumerate(files)}
    return [(index.get(f, -1), r if r is not None else -1)
            for f, r in zip(df["input_file"].to_list(), df["input_row"].to_list())]


def recompute(out_dir: str, manifest: dict, settings: Sequence[Setting]) -> tuple:
    """(the changed CurateRecipe, a frame: key, old status and reasons, new reject_reasons, duplicate_of, status)."""
    from unicurate.filters.scoring import ModelDecider

    if manifest.get("kind") != "curated":
        raise WhatIfError(f"{out_dir} is a {manifest.get('kind')} output; what-if thresholds apply to curate runs")
    cfg = changed_recipe(manifest["recipe"], settings)
    cols = ["key", "status", "reject_reasons", "duplicate_of", "sha256", "phash", "input_file", "input_row",
            *SCORE_COLUMNS]
    df = st.scan_curated(out_dir, manifest, cols).collect()
    c = cfg.filters.clip_score
    cutoff = manifest.get("clip_score_cutoff") if c is not None and c.keep_top_fraction is not None else None
    decider = ModelDecider(cfg.filters)
    reasons: list[list[str]] = []
    for chunk in df.iter_slices(_CHUNK):
        rows = chunk.to_dicts()
        decided = decider.reasons(rows, clip_min_score=cutoff)
        for row, new in zip(rows, decided):
            base = [r for r in row["reject_reasons"] if r not in MODEL_REASONS and r not in DEDUP_REASONS]
            reasons.append(base + new)
    keys = df["key"].to_list()
    order = _order_of(df)
    # a repeated url keeps what ingest said (it was never downloaded); image duplicates are decided again
    dup_of = [old if Reason.DUPLICATE_URL.value in rs else None
              for old, rs in zip(df["duplicate_of"].to_list(), reasons)]
    dcfg = cfg.filters.dedup
    index = {k: i for i, k in enumerate(keys)}
    exact_losers: set[str] = set()
    if dcfg.exact:
        groups: dict[str, list] = defaultdict(list)
        for i, sha in enumerate(df["sha256"].to_list()):
            if sha:
                groups[sha].append(dd.Rec(order[i], keys[i], not reasons[i], sha))
        for recs in groups.values():
            for loser, winner in dd.exact_losers(recs):
                exact_losers.add(loser)
                dup_of[index[loser]] = winner
    near: dict[str, tuple] = {}
    if dcfg.near:
        bands: dict[tuple, list] = defaultdict(list)
        for i, ph in enumerate(df["phash"].to_list()):
            if ph and not reasons[i]:
                for band in dd.phash_bands(ph, dcfg.max_distance):
                    bands[band].append(dd.Rec(order[i], keys[i], True, ph))
        for recs in bands.values():
            for loser, (o, winner) in dd.near_losers(recs, dcfg.max_distance):
                if loser not in near or tuple(o) < tuple(near[loser][0]):
                    near[loser] = (tuple(o), winner)
    for i, k in enumerate(keys):
        if k in exact_losers:
            reasons[i].append(Reason.DUPLICATE.value)
        elif k in near and not reasons[i]:
            reasons[i].append(Reason.NEAR_DUPLICATE.value)
            dup_of[i] = near[k][1]
    if cfg.filters.semantic_dedup is not None:
        scores = df["clip_score"].to_list()
        for i, winner in _semantic_losers(out_dir, manifest, cfg.filters.semantic_dedup, keys, order, scores, reasons):
            reasons[i].append(Reason.SEMANTIC_DUPLICATE.value)
            dup_of[i] = winner
    result = pl.DataFrame({
        "key": keys,
        "old_status": df["status"],
        "old_reasons": df["reject_reasons"],
        "reject_reasons": pl.Series(reasons, dtype=pl.List(pl.String)),
        "duplicate_of": pl.Series(dup_of, dtype=pl.String),
    }).with_columns(pl.when(pl.col("reject_reasons").list.len() == 0).then(pl.lit(KEPT))
                    .otherwise(pl.lit(REJECTED)).alias("status"))
    return cfg, result


def _semantic_losers(out_dir: str, manifest: dict, cfg, keys: list[str], order: list[tuple], scores: list,
                     reasons: list[list[str]]) -> list[tuple[int, str]]:
    """(row index, key of the kept copy) of semantic duplicates among the rows nothing else rejects, by the
    pipeline's own functions on the image embeddings the run wrote (``output.embeddings``). Memory: the candidates'
    image embeddings (float16)."""
    from unicurate.filters import semantic_dedup as sd

    if not manifest.get("embeddings"):
        raise WhatIfError("this run used semantic_dedup without output.embeddings: its image embeddings were not "
                          "kept, so semantic duplicates cannot be decided again; rerun it with output.embeddings: "
                          "true")
    wanted = {k: i for i, k in enumerate(keys) if not reasons[i]}
    members = []
    for _status, entry in emb.entries(manifest):
        entry_keys, arrays = emb.read(out_dir, entry, kinds=("img_emb",))
        for k, v in zip(entry_keys, arrays["img_emb"]):
            if k in wanted:
                i = wanted[k]
                members.append(sd.Member(order[i], k, scores[i], v.tobytes()))
    members.sort(key=lambda m: m.pos)
    row = {o: i for i, o in enumerate(order)}
    return [(row[pos], winner) for pos, winner in sd.decide(members, cfg)]


def _plan(out_dir: str, exprs: Sequence[str]) -> tuple:
    if not exprs:
        raise WhatIfError("give at least one --set, e.g. --set clip_score>=0.3")
    settings = [parse_setting(e) for e in exprs]
    manifest = st.load_manifest(out_dir)
    recipe, res = recompute(out_dir, manifest, settings)
    return manifest, settings, recipe, res


def whatif(out_dir: str, exprs: Sequence[str], apply_to: Optional[str] = None,
           say: Callable[[str], None] = lambda m: None) -> dict:
    """Counts and funnel before and after the new thresholds; with ``apply_to`` the selection is also written
    there (its manifest under "applied")."""
    if apply_to is not None and _same_folder(out_dir, apply_to):
        raise WhatIfError("--apply must name a new folder: the source run is never modified")
    manifest, settings, recipe, res = _plan(out_dir, exprs)
    summary = _summary(out_dir, manifest, settings, recipe, res)
    if apply_to is not None:
        summary["applied"] = _apply(out_dir, manifest, settings, recipe, res, apply_to, say)
    return summary


def _summary(out_dir, manifest, settings, new_recipe, res: pl.DataFrame) -> dict:
    before_inputs, before = st.funnel_from(res.lazy().select(pl.col("old_reasons").alias("reject_reasons")))
    inputs, after = st.funnel_from(res.lazy())
    kept = res.filter(pl.col("status") == KEPT).height
    was = res.filter(pl.col("old_status") == KEPT).height
    gained = res.filter((pl.col("status") == KEPT) & (pl.col("old_status") != KEPT)).height
    lost = res.filter((pl.col("status") != KEPT) & (pl.col("old_status") == KEPT)).height
    order = [r.value for r in Reason]
    return {
        "out_dir": str(out_dir),
        "settings": [s.text() for s in settings],
        "rows": inputs,
        "before": {"kept": was, "rejected": inputs - was, "funnel": before,
                   "reasons": st.reasons_from(res.lazy().select(pl.col("old_reasons").alias("reject_reasons")),
                                              before_inputs, order)},
        "after": {"kept": kept, "rejected": inputs - kept, "funnel": after,
                  "reasons": st.reasons_from(res.lazy(), inputs, order)},
        "newly_kept": gained,
        "newly_rejected": lost,
        "thresholds": {"before": st.thresholds(manifest["recipe"], manifest),
                       "after": st.thresholds(new_recipe.resolved(), {"clip_score_cutoff": None})},
        "uncalibrated": bool(manifest.get("uncalibrated")),
    }


def format_whatif(s: dict) -> str:
    lines = []
    if s["uncalibrated"]:
        lines += ["WARNING: this run used UNCALIBRATED models (tiny profile): its scores are meaningless", ""]
    lines.append(f"what if {' and '.join(s['settings'])} on {s['out_dir']} ({s['rows']} rows):")
    b, a = s["before"], s["after"]
    lines.append(f"  kept {b['kept']} -> {a['kept']} ({a['kept'] - b['kept']:+d}); "
                 f"{s['newly_kept']} newly kept, {s['newly_rejected']} newly rejected")
    lines.append("")
    lines += st._table(["stage", "before", "after", "after % of inputs"],
                       [[x["label"], x["rows"], y["rows"], st._pct_s(y["pct_of_inputs"])]
                        for x, y in zip(b["funnel"], a["funnel"])])
    rb = {r["reason"]: r["rows"] for r in b["reasons"]}
    ra = {r["reason"]: r["rows"] for r in a["reasons"]}
    changed = [code for code in dict.fromkeys(list(rb) + list(ra)) if rb.get(code, 0) != ra.get(code, 0)]
    if changed:
        lines += ["", "reasons that changed"] + st._table(["reason", "before", "after"],
                                                         [[c, rb.get(c, 0), ra.get(c, 0)] for c in changed])
    return "\n".join(lines)


# ------------------------------------------------------------------ apply
def apply(out_dir: str, exprs: Sequence[str], new_out: str, say: Callable[[str], None] = lambda m: None) -> dict:
    """Write the what-if selection to ``new_out`` (rows copied, same shard names); returns its manifest."""
    return whatif(out_dir, exprs, apply_to=new_out, say=say)["applied"]


def _apply(out_dir, manifest, settings, new_recipe, res: pl.DataFrame, new_out: str, say) -> dict:
    gained = res.filter((pl.col("status") == KEPT) & (pl.col("old_status") != KEPT))["key"].to_list()
    if gained:
        # a row that was not kept is in rejected/: only those shards' images are read (kept/ holds nearly all bytes)
        no_image = (st.scan(out_dir, manifest, (REJECTED,), ["key", "image"])
                    .filter(pl.col("key").is_in(gained) & pl.col("image").is_null())
                    .select("key").collect()["key"].to_list())
        if no_image:
            raise WhatIfError(
                f"{len(no_image)} row(s) would become kept but the run did not store their images "
                f"(output.keep_rejected_images was false), e.g. {no_image[0]}; tighten thresholds only, or rerun "
                "with output.keep_rejected_images: true to make any threshold applicable")
    decision = {r["key"]: r for r in res.select("key", "status", "reject_reasons", "duplicate_of").iter_rows(named=True)}
    recipe = new_recipe.model_copy(update={"output": new_recipe.output.model_copy(update={"path": str(new_out)})})
    keep_images = recipe.output.keep_rejected_images
    mf.remove_manifest(new_out)
    rg = recipe.output.row_group_rows
    shards = {KEPT: [], REJECTED: []}
    listed = {sh["path"] for sub in (KEPT, REJECTED) for sh in manifest["shards"].get(sub, [])}
    names = sorted({rel.split("/", 1)[1] for rel in listed})
    funnel_parts = []
    sets = {(status, e["index"]): e for status, e in emb.entries(manifest)}  # the source's embedding files
    embedding_sets: dict[str, list] = {KEPT: [], REJECTED: []}
    for name in names:  # the rows of a source shard's kept/ and rejected/ files make the new shard of that name
        rows = [row for sub in (KEPT, REJECTED) if f"{sub}/{name}" in listed
                for row in curated.read_rows(mf.join(out_dir, sub, name))]  # every column: nulls for absent ones
        kept, rejected = [], []
        for row in sorted(rows, key=lambda r: r["key"]):
            d = decision[row["key"]]
            row["reject_reasons"] = list(d["reject_reasons"])
            row["duplicate_of"] = d["duplicate_of"]
            row["status"] = d["status"]
            if row["status"] == REJECTED and not keep_images:
                row["image"] = None
            (kept if row["status"] == KEPT else rejected).append(row)
        for sub, part in ((KEPT, kept), (REJECTED, rejected)):
            info = mf.write_shard(new_out, f"{sub}/{name}", part, CURATED_SCHEMA, rg)
            shards[sub].append(info.to_json())
            funnel_parts.append(mf.funnel_counts(r["reject_reasons"] for r in part))
        if sets:  # so do their embeddings, re-cut
            index = shard_index(name)
            vectors = _vectors_by_key(out_dir, [sets[s, index] for s in (KEPT, REJECTED) if (s, index) in sets])
            for sub, part in ((KEPT, kept), (REJECTED, rejected)):
                writer = emb.EmbeddingWriter(str(new_out), sub, index)
                for r in part:
                    writer.add({**r, **vectors.get(r["key"], {})})
                entry = writer.close()
                if entry is not None:
                    embedding_sets[sub].append(entry)
        say(f"wrote {name}: {len(kept)} kept, {len(rejected)} rejected")
    stale = mf.remove_stale_shards(new_out, {s["path"] for sub in shards.values() for s in sub})
    stale += emb.remove_stale(str(new_out), {f["path"] for sets in embedding_sets.values() for e in sets
                                             for f in e["files"].values()})
    n_kept = sum(s["rows"] for s in shards[KEPT])
    n_rej = sum(s["rows"] for s in shards[REJECTED])
    clip = recipe.filters.clip_score
    new_manifest = {
        # the rows are the source run's, so are its inputs (which may be out of reach from here)
        **mf.manifest_header("curated", CURATED_SCHEMA_VERSION, recipe, inputs=manifest.get("inputs")),
        "models": manifest.get("models", []),
        "uncalibrated": manifest.get("uncalibrated", False),
        "model_filters": manifest.get("model_filters", []),
        "clip_score_cutoff": (manifest.get("clip_score_cutoff")
                              if clip is not None and clip.keep_top_fraction is not None else None),
        "beam_options": manifest.get("beam_options", {}),
        "counts": {"inputs": manifest["counts"]["inputs"], "kept": n_kept, "rejected": n_rej},
        "funnel": mf.merge_funnels(funnel_parts),
        "shards": shards,
        **({"embeddings": embedding_sets} if manifest.get("embeddings") else {}),
        "removed_stale_shards": stale,
        "derived_from": {"path": str(out_dir), "recipe_hash": manifest.get("recipe_hash"),
                         "whatif": [s.text() for s in settings], "rows": "copied"},
    }
    # the same check a run makes before it publishes: every row of the source run is in exactly one new row
    problems = check_run(str(new_out), new_manifest, manifest["counts"]["inputs"])
    if problems:
        raise WhatIfError(f"{new_out}: the new selection does not hold every row of {out_dir} once, so no manifest "
                          "was written: " + "; ".join(problems))
    mf.publish_manifest(str(new_out), new_manifest)
    return new_manifest


def _vectors_by_key(out_dir: str, entries: list[dict]) -> dict[str, dict]:
    """key -> the row's embedding columns, from these embedding file sets."""
    out: dict[str, dict] = {}
    for entry in entries:
        keys, arrays = emb.read(out_dir, entry)
        for i, key in enumerate(keys):
            out[key] = {column: arrays[kind][i].tobytes() for kind, column in emb.VECTORS.items()}
    return out


def _same_folder(a: str, b: str) -> bool:
    import os

    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)

