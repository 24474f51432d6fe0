"""Beam stages of the model filters: batched scoring, the run-wide CLIP cutoff, decisions.

    rows ─ BatchElements ─ ScoreDoFn (one ModelScorer per worker process, via shared.Shared)
         ─┬─ clip scores ─ ApproximateQuantiles ─ cutoff (side input, keep_top_fraction only)
          └─ ApplyModelDecisions(cutoff) ─ rows with reasons

A row reaches the model stage when its image was downloaded and decoded (rule
filters may have rejected it, but only rows that still carry an image are
scored: all rule-passing rows, and rule-rejected rows when
``output.keep_rejected_images``). Every model scores every row that reaches
the stage, so scores exist on rows that one filter rejects.
"""

from __future__ import annotations

import logging
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from unicurate.config import CurateRecipe
from unicurate.filters.scoring import ModelDecider
from unicurate.pipelines import perworker
from unicurate.pipelines.common import collect_model_records, with_model_hints
from unicurate.schema import REASON_STAGE, SCORE_COLUMNS, Reason, Stage

log = logging.getLogger("unicurate")
_NS = perworker.NAMESPACE
MODELS_TAG = perworker.ModelDoFn.MODELS_TAG
QUANTILES = 1000  # cutoff resolution for keep_top_fraction: 0.1% of the run


def reaches_models(row: dict) -> bool:
    if row.get("image") is None:
        return False
    early = (Stage.INPUT, Stage.DOWNLOAD, Stage.DECODE)
    return not any(REASON_STAGE[Reason(r)] in early for r in row["reject_reasons"])


class ScoreDoFn(perworker.ModelDoFn):
    """Scores batches of rows with every model filter; models load once per worker process."""

    def __init__(self, recipe: CurateRecipe, cpu_threads: Optional[int] = None):
        super().__init__(tag="scorer", cpu_threads=cpu_threads)
        self.recipe = recipe
        self.scored = Metrics.counter(_NS, "model_rows")
        self.errors = Metrics.counter(_NS, "score_errors")

    def build(self):
        from unicurate.filters.scoring import ModelScorer

        return ModelScorer(self.recipe.filters, self.recipe.models, runtime=self.runtime(self.recipe.models))

    def records(self) -> list[dict]:
        return self.model.model_records()

    def process(self, batch: list[dict]) -> Iterator:
        yield from self.started()
        todo = [row for row in batch if reaches_models(row)]
        results = self.model.score_rows(todo) if todo else []
        if todo:
            self.batches.inc()
            self.scored.inc(len(todo))
        self.span.mark()
        by_id = {id(row): res for row, res in zip(todo, results)}
        for row in batch:
            res = by_id.get(id(row))
            if res is not None:
                row = dict(row)
                for c in SCORE_COLUMNS:
                    if c in res:
                        row[c] = res[c]
                if res["score_error"]:
                    self.errors.inc()
                    row["reject_reasons"] = list(row["reject_reasons"]) + [Reason.SCORE_ERROR.value]
                    row["error"] = res["score_error"] if not row.get("error") else f"{row['error']}; {res['score_error']}"
            yield row


def cutoff_from_quantiles(quantiles: list, keep_top_fraction: float) -> Optional[float]:
    """The clip_score a row needs to be in the run's top ``keep_top_fraction`` (None: nothing scored)."""
    if not quantiles:
        return None
    n = len(quantiles) - 1
    if n <= 0:
        return float(quantiles[0])
    pos = round((1.0 - keep_top_fraction) * n)
    return float(quantiles[min(max(pos, 0), n)])


def apply_decisions(row: dict, decider: ModelDecider, clip_cutoff: Optional[float]) -> dict:
    """Add the model filters' reasons (rows that never reached the models have no scores, so get none)."""
    reasons = decider.reasons([row], clip_min_score=clip_cutoff)[0]
    if reasons:
        row = dict(row)
        row["reject_reasons"] = list(row["reject_reasons"]) + reasons
    return row


def add_model_stages(rows, recipe: CurateRecipe, cpu_threads: Optional[int] = None):
    """Rows -> (rows with scores and model decisions, clip cutoff singleton, model records PCollection)."""
    p = rows.pipeline
    m = recipe.models
    scored = (
        rows
        | "BatchForModels" >> beam.BatchElements(min_batch_size=m.batch_bounds[0], max_batch_size=m.batch_bounds[1])
        | "ScoreWithModels" >> with_model_hints(beam.ParDo(ScoreDoFn(recipe, cpu_threads)), recipe).with_outputs(
            MODELS_TAG, main="rows")
    )
    c = recipe.filters.clip_score
    if c is not None and c.keep_top_fraction is not None:
        frac = c.keep_top_fraction
        cutoff = (
            scored.rows
            | "ClipScores" >> beam.FlatMap(lambda r: [r["clip_score"]] if r.get("clip_score") is not None else [])
            | "ClipQuantiles" >> beam.ApproximateQuantiles.Globally(QUANTILES + 1)
            | "ClipCutoff" >> beam.Map(cutoff_from_quantiles, frac)
        )
    else:
        cutoff = p | "NoClipCutoff" >> beam.Create([None])
    decided = scored.rows | "ApplyModelDecisions" >> beam.Map(apply_decisions, ModelDecider(recipe.filters),
                                                              beam.pvalue.AsSingleton(cutoff))
    return decided, cutoff, collect_model_records(scored[MODELS_TAG])

