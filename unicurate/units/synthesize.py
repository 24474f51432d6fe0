"""A synthesize unit, without Beam: its source images (kept rows of a curate run, in order) synthesized in batches
of ``models.batch_size`` and written to four unit files (images, subject, edit, rejected; each row with the
position of its source image), then a completion record; and the funnel counts of a set of written rows.

Batches are cut in input order and a unit starts with no partner images from earlier batches, so a unit
synthesizes the same way whichever worker runs it, after whatever unit."""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Callable, Iterable, Iterator

from unicurate.manifests import curated
from unicurate.schema import EDIT_TYPES, SYNTHESIS_DIRS, SYNTHESIS_SCHEMAS
from unicurate.units import store
from unicurate.units.plan import KeptShard, Unit, UnitPlan

READ_COLUMNS = ["key", "caption", "image", "width", "height"]


def unit_rel(kind: str) -> Callable[[int], str]:
    """A unit's file of one output kind (``images``, ``subject``, ``edit``, ``rejected``)."""
    return lambda index: f"{store.UNITS_DIR}/unit-{index:06d}-{kind}.parquet"


def read_images(plan: UnitPlan, unit: Unit) -> Iterator[dict]:
    """The unit's source images, each with its ``pos``."""
    for shard, skip, take, first in plan.pieces(unit):
        yield from _read_piece(shard, skip, take, first)


def _read_piece(shard: KeptShard, skip: int, take: int, first: int) -> Iterator[dict]:
    n = 0
    for row in curated.iter_rows(shard.path, READ_COLUMNS, batch_size=64):
        if shard.max_key is not None and row["key"] > shard.max_key:
            continue
        if n >= skip + take:
            return
        if n >= skip:
            row[store.POS] = first + n - skip
            yield row
        n += 1
    if n < skip + take:
        raise RuntimeError(f"{shard.path}: expected {take} kept images from image {skip} on, found {n - skip}: the "
                           "curate run changed since this run was planned")


class UnitSynthesizer:
    """Synthesizes whole units in one worker process; ``synthesizer()`` is the process's
    :class:`~unicurate.synthesis.synthesizer.Synthesizer` (waited for when the first batch needs it)."""

    def __init__(self, recipe, synthesizer: Callable[[], object]):
        self.recipe, self.synthesizer = recipe, synthesizer
        self.counts: Counter = Counter()  # batches, images, samples: what the Beam counters report

    def run(self, plan: UnitPlan, unit: Unit, recipe_hash: str,
            on_batch: Callable[[int, int], None] = lambda images, samples: None) -> dict:
        """Synthesize ``unit`` into its files and write its completion record; returns the record."""
        start = time.monotonic()
        out = self.recipe.output
        self.synthesizer().reset_partners()
        writers = {kind: store.writer(out.path, unit, SYNTHESIS_SCHEMAS[kind], out.row_group_rows,
                                      rel=unit_rel(kind)) for kind in SYNTHESIS_DIRS}
        try:
            batch: list[dict] = []
            for row in read_images(plan, unit):
                batch.append(row)
                if len(batch) >= self.recipe.models.batch_size:
                    self._synthesize(batch, writers, on_batch)
                    batch = []
            self._synthesize(batch, writers, on_batch)
            infos = [writers[kind].close() for kind in SYNTHESIS_DIRS]
        except BaseException:
            for w in writers.values():
                w.discard()
            raise
        images = infos[list(SYNTHESIS_DIRS).index("images")].rows
        if images != unit.rows:
            raise RuntimeError(f"unit {unit.index}: wrote {images} image rows, the unit has {unit.rows}")
        record = {"unit": unit.index, "first_row": unit.first, "rows": unit.rows, "recipe_hash": recipe_hash,
                  "files": [i.to_json() for i in infos], "models": self.synthesizer().records if self.counts else [],
                  "seconds": round(time.monotonic() - start, 3), "pid": os.getpid()}
        store.write_record(out.path, record)
        return record

    def _synthesize(self, batch: list[dict], writers: dict, on_batch: Callable[[int, int], None]) -> None:
        if not batch:
            return
        results = self.synthesizer().process(batch)
        pos_of = {row["key"]: row[store.POS] for row in batch}
        samples = 0
        for res in results:
            pos = pos_of[res.image["source_key"]]
            writers["images"].write({**res.image, store.POS: pos})
            for kind in ("subject", "edit", "rejected"):
                for x in sorted(getattr(res, kind), key=lambda x: x["key"]):
                    writers[kind].write({**x, store.POS: pos})
            samples += len(res.subject) + len(res.edit)
        self.counts.update(batches=1, images=len(results), samples=samples)
        on_batch(len(results), samples)


# ------------------------------------------------------------------ funnel
def funnel_part(images: Iterable[dict], subjects: Iterable[dict], edits: Iterable[dict],
                rejected: Iterable[dict]) -> dict:
    """Counts over some written rows of each kind (merged with :func:`merge_funnel`)."""
    c: Counter = Counter()
    for img in images:
        c["images"] += 1
        c[f"status:{img['status']}"] += 1
        c["detections"] += img["detections"]
        c["objects_accepted"] += img["objects_accepted"]
    c["subjects"] += sum(1 for _ in subjects)
    for e in edits:
        c[f"edit:{e['edit_type']}"] += 1
    for rj in rejected:
        scope = "object" if rj["kind"] == "object" else f"edit:{rj['edit_type']}"
        c[f"rejected:{scope}"] += 1
        for code in rj["reject_reasons"]:
            c[f"reason:{scope}:{code}"] += 1
    return dict(c)


def merge_funnel(parts) -> dict:
    c: Counter = Counter()
    for p in parts:
        c.update(p)
    statuses = {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("status:")}
    edits = {}
    for t in EDIT_TYPES:
        made, rej = c.get(f"edit:{t}", 0), c.get(f"rejected:edit:{t}", 0)
        reasons = {k.rsplit(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith(f"reason:edit:{t}:")}
        if made or rej:
            edits[t] = {"written": made, "rejected": rej, "reasons": reasons}
    obj_reasons = {k.rsplit(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("reason:object:")}
    return {
        "images": c.get("images", 0),
        "image_status": {s: statuses.get(s, 0) for s in ("produced", "no_object", "all_rejected", "image_error")},
        "objects": {"detected": c.get("detections", 0), "accepted": c.get("objects_accepted", 0),
                    "rejected": c.get("rejected:object", 0), "reasons": obj_reasons},
        "subjects": c.get("subjects", 0),
        "edits": edits,
    }
