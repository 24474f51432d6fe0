"""Work units: a run cut into pieces that finish (and resume) on their own.

The input is cut in input order into units of ``input.rows_per_unit`` rows (:mod:`.plan`). A unit is fetched,
decoded, filtered and scored by a worker and written atomically under ``OUT/units/`` with a completion record
(:mod:`.store`); what flows on through the pipeline is a small brief per row (position, key, hashes, the CLIP
score). A rerun of the same command skips every unit whose record is valid for the same data recipe
(:mod:`.folder`, which also refuses to mix units of another recipe and shows the progress).

    OUT/units/plan.json            the cut (input splits, rows per unit) and the data recipe it is for
    OUT/units/recipe.yaml          the recipe that made the units (to resume with it after a change)
    OUT/units/unit-000042.parquet  one unit's rows: the curated columns before run-wide decisions, plus ``pos``
    OUT/units/unit-000042.json     its completion record, written after the parquet file
"""
