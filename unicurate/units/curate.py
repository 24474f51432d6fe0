"""A curate unit, without Beam: its input rows downloaded, decoded, rule-filtered and scored, written in input
order to its unit file; then, once the run-wide decisions are known, each row's final form.

    input rows ─ Fetcher (downloads run ahead on a thread pool, rows come back in input order)
        ─ model batches of ``models.batch_size`` (the rows that reach the models, in input order)
        ─ unit file (row group by row group) + completion record ─ one :data:`Brief` per row

Batches are cut in input order, so a unit scores the same rows together whichever worker runs it, and a resumed
run writes the same shards as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np
import pyarrow as pa

from unicurate.download import ingest
from unicurate.filters import rules
from unicurate.filters import semantic_dedup as sd
from unicurate.schema import (CURATED_COLUMNS, CURATED_SCHEMA, KEPT, REASON_STAGE, REJECTED, SCORE_COLUMNS, Reason,
                              Stage)
from unicurate.units import store
from unicurate.units.plan import Unit, UnitPlan

_FETCH_COLUMNS = ("image", "image_format", "original_format", "width", "height", "original_width", "original_height",
                  "download_bytes", "sha256", "phash")
_INPUT_COLUMNS = ("key", "url", "caption", "source", "input_file", "input_row", "metadata")


class Brief(NamedTuple):
    """What of a row the run-wide steps read: no image bytes. ``ok``: the row passed every filter decided within
    its unit (the CLIP top-fraction cutoff, run-wide, aside)."""

    pos: int
    key: str
    sha256: Optional[str]
    phash: Optional[str]
    ok: bool
    clip_score: Optional[float]


BRIEF_COLUMNS = [store.POS, "key", "sha256", "phash", "reject_reasons", *SCORE_COLUMNS]

# what a unit file holds beyond the shard schema: the CLIP embeddings of each scored row (float16 bytes of the unit
# vector; null unless the recipe writes embeddings or runs semantic dedup), by the ModelScorer column they come from
EMBEDDINGS = {"clip_image_embedding": "clip_embedding", "clip_text_embedding": "clip_text_embedding"}
UNIT_SCHEMA = pa.schema(list(CURATED_SCHEMA) + [pa.field(c, pa.binary()) for c in EMBEDDINGS],
                        metadata=CURATED_SCHEMA.metadata)


def make_prefilter(filters_cfg):
    """The rule filters that need only the caption and the original size: run after the header probe, so a rejected
    image is not resized."""
    filters = rules.rule_filters(filters_cfg)

    def prefilter(row, fetched):
        probe = {"caption": row.get("caption"), "original_width": fetched.original_width,
                 "original_height": fetched.original_height}
        columns, reasons = rules.apply(filters, [probe])
        problem = (columns.get("caption_problem") or [None])[0]
        if problem and fetched.error is None:
            fetched.error = problem
        return reasons[0]

    return prefilter


def finish_row(row: dict, fetched) -> dict:
    """Input row and fetch result as a unit row (curated columns before run-wide decisions, plus ``pos``)."""
    out = {c: None for c in CURATED_COLUMNS}
    out.update({k: row.get(k) for k in (*_INPUT_COLUMNS, "error")})
    out[store.POS] = row["pos"]
    reasons = list(row["reject_reasons"])
    if fetched is not None:
        reasons.extend(fetched.reasons)
        out["error"] = fetched.error
        for name in _FETCH_COLUMNS:
            out[name] = getattr(fetched, name)
    out["caption_words"] = rules.count_words(out["caption"])
    out["reject_reasons"] = reasons
    return out


def reaches_models(row: dict) -> bool:
    """A row is scored when its image was downloaded and decoded (rule-rejected rows too, when they kept their
    image): every model scores every such row, so scores exist on rows that one filter rejects."""
    if row.get("image") is None:
        return False
    early = (Stage.INPUT, Stage.DOWNLOAD, Stage.DECODE)
    return not any(REASON_STAGE[Reason(r)] in early for r in row["reject_reasons"])


_FLOAT32 = {f.name for f in CURATED_SCHEMA if pa.types.is_float32(f.type)}


def add_scores(row: dict, result: dict, embeddings: bool = False) -> None:
    """A row's scores, as its unit file will hold them (float32 columns rounded to float32 here, so the decisions
    made now on the row's brief are the ones made later on the row read back); with ``embeddings``, its CLIP
    embeddings too."""
    for c in SCORE_COLUMNS:
        if c in result:
            v = result[c]
            row[c] = float(np.float32(v)) if c in _FLOAT32 and isinstance(v, float) else v
    if embeddings:
        for column, provided in EMBEDDINGS.items():
            if result.get(provided) is not None:
                row[column] = sd.pack(result[provided])
    if result["score_error"]:
        row["reject_reasons"] = list(row["reject_reasons"]) + [Reason.SCORE_ERROR.value]
        row["error"] = result["score_error"] if not row.get("error") else f"{row['error']}; {result['score_error']}"


def brief(row: dict, decider) -> Brief:
    """The row's brief; ``decider``: the model decisions (None: no model filter)."""
    reasons = list(row["reject_reasons"] or [])
    if decider is not None and not reasons:
        reasons = decider.reasons([row])[0]
    return Brief(int(row[store.POS]), row["key"], row.get("sha256"), row.get("phash"), not reasons,
                 row.get("clip_score"))


def member(row: dict, b: Brief) -> Optional[sd.Member]:
    """The row as a semantic dedup candidate: it passed everything decided within its unit and has an image
    embedding (None otherwise)."""
    emb = row.get("clip_image_embedding")
    return sd.Member(b.pos, b.key, b.clip_score, emb) if b.ok and emb else None


class UnitCurator:
    """Curates whole units in one worker process: ``fetcher`` (a :class:`~unicurate.download.fetch.Fetcher`),
    ``scorer()`` (the :class:`~unicurate.filters.scoring.ModelScorer`, waited for only when a row first reaches
    the models; None without model filters) and ``decider`` (the model decisions, None without model filters)."""

    def __init__(self, recipe, fetcher, scorer: Optional[Callable[[], object]], decider):
        self.recipe, self.fetcher, self.scorer, self.decider = recipe, fetcher, scorer, decider
        self.embeddings = recipe.wants_embeddings()
        self.semantic = recipe.filters.semantic_dedup is not None
        self.batch_size = recipe.models.batch_size
        self.block_rows = max(4 * self.batch_size, recipe.output.row_group_rows)  # most rows waiting for a batch
        self._scored = False  # a row of this process reached the models: their records go into the unit's record
        self.counts: Counter = Counter()  # batches, rows scored, score errors: what the Beam counters report

    def run(self, plan: UnitPlan, unit: Unit, recipe_hash: str,
            on_fetched: Callable[[bool], None] = lambda ok: None) -> tuple[dict, list[Brief], list[sd.Member]]:
        """Curate ``unit`` into its file under the output folder and write its completion record; returns the
        record, the briefs of its rows and its semantic dedup candidates (none unless the recipe runs it).
        ``on_fetched(ok)`` is told of every download."""
        start = time.monotonic()
        out_dir = self.recipe.output.path
        briefs: list[Brief] = []
        members: list[sd.Member] = []
        reasons: Counter = Counter()
        with store.writer(out_dir, unit, UNIT_SCHEMA, self.recipe.output.row_group_rows) as w:
            for row in self._rows(plan, unit, on_fetched):
                w.write(row)
                reasons.update(row["reject_reasons"])
                b = brief(row, self.decider)
                briefs.append(b)
                m = member(row, b) if self.semantic else None
                if m is not None:
                    members.append(m)
            info = w.close()
        models = self.scorer().model_records() if self._scored else []
        record = {"unit": unit.index, "first_row": unit.first, "rows": unit.rows, "recipe_hash": recipe_hash,
                  "files": [info.to_json()], "reasons": dict(sorted(reasons.items())),
                  "models": models, "seconds": round(time.monotonic() - start, 3), "pid": os.getpid()}
        if info.rows != unit.rows:
            raise RuntimeError(f"unit {unit.index}: wrote {info.rows} rows, the unit has {unit.rows}")
        store.write_record(out_dir, record)
        return record, briefs, members

    def _rows(self, plan: UnitPlan, unit: Unit, on_fetched: Callable[[bool], None]) -> Iterator[dict]:
        """The unit's rows, finished and scored, in input order."""
        seen: set[str] = set()

        def wanted(row: dict) -> bool:
            # invalid input rows and repeats of a url within the unit are not downloaded (repeats across units are
            # found run-wide, by the shard writer's decisions)
            if row["reject_reasons"] or row["key"] in seen:
                return False
            seen.add(row["key"])
            return True

        block: list[dict] = []  # rows in input order, waiting for the scores of their batch
        batch: list[dict] = []
        for row, fetched in self.fetcher.fetch(plan.read(unit, self.recipe.input), wanted=wanted):
            if fetched is not None:
                on_fetched(fetched.image is not None or (fetched.sha256 is not None
                                                         and fetched.original_width is not None))
            out = finish_row(row, fetched)
            block.append(out)
            if self.scorer is not None and reaches_models(out):
                batch.append(out)
            if len(batch) >= self.batch_size or len(block) >= self.block_rows:
                self._score(batch)
                yield from block
                block, batch = [], []
        self._score(batch)
        yield from block

    def _score(self, batch: list[dict]) -> None:
        if not batch:
            return
        self._scored = True
        for row, result in zip(batch, self.scorer().score_rows(batch)):
            add_scores(row, result, self.embeddings)
            self.counts["score_errors"] += bool(result["score_error"])
        self.counts["model_batches"] += 1
        self.counts["model_rows"] += len(batch)


def brief_from_file(out_dir: str, unit: Unit, decider, semantic: bool = False) -> tuple[list[Brief], list[sd.Member]]:
    """The briefs of a finished unit and its semantic dedup candidates (``semantic``), from its file's small
    columns and the image embeddings (a resumed unit)."""
    rows = store.read_columns(out_dir, unit, BRIEF_COLUMNS + (["clip_image_embedding"] if semantic else [])).to_pylist()
    briefs = [brief(row, decider) for row in rows]
    members = [m for m in (member(r, b) for r, b in zip(rows, briefs)) if m is not None] if semantic else []
    return briefs, members


# ------------------------------------------------------------------ run-wide decisions, applied per row
class Decisions(NamedTuple):
    """The run-wide decisions for one final shard's rows, by position: ``repeats`` {pos: (occurrence number, key of
    the first row with that url)}, ``exact`` {pos: key of the kept copy}, ``near`` {pos: (position, key) of the earlier
    near copy}, the CLIP cutoff (None: no top-fraction filter, or nothing scored) and ``semantic`` {pos: key of the
    kept row it is a semantic copy of}."""

    repeats: dict
    exact: dict
    near: dict
    clip_cutoff: Optional[float]
    semantic: dict


def repeat_row(row: dict, occurrence: int, first_key: str) -> dict:
    """The ``occurrence``-th repeat of a url: rejected as such, keyed by the url and its occurrence, the input
    columns only (whatever a download of it found is dropped)."""
    out = {c: None for c in CURATED_COLUMNS}
    out.update({k: row.get(k) for k in _INPUT_COLUMNS})
    out.update(key=ingest.row_key(row["source"], row["url"], occurrence), caption_words=row.get("caption_words"), duplicate_of=first_key,
               reject_reasons=[Reason.DUPLICATE_URL.value], status=REJECTED)
    return out


def final_row(row: dict, decisions: Decisions, decider, keep_rejected_images: bool) -> dict:
    """A unit row with the run-wide decisions applied: a curated-schema row with its status."""
    pos = row.pop(store.POS)
    if pos in decisions.repeats:
        return repeat_row(row, *decisions.repeats[pos])
    reasons = list(row["reject_reasons"] or [])
    if decider is not None:
        reasons += decider.reasons([row], clip_min_score=decisions.clip_cutoff)[0]
    if pos in decisions.exact:
        reasons.append(Reason.DUPLICATE.value)
        row["duplicate_of"] = decisions.exact[pos]
    elif pos in decisions.near and not reasons:
        reasons.append(Reason.NEAR_DUPLICATE.value)
        row["duplicate_of"] = decisions.near[pos][1]
    elif pos in decisions.semantic and not reasons:
        reasons.append(Reason.SEMANTIC_DUPLICATE.value)
        row["duplicate_of"] = decisions.semantic[pos]
    row["reject_reasons"] = reasons
    row["status"] = REJECTED if reasons else KEPT
    if reasons and not keep_rejected_images:
        row["image"] = None
    return row
