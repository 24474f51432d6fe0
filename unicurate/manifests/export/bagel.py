"""BAGEL: the editing Parquet files its ``unified_edit`` datasets read, with their ``parquet_info`` JSON.

Each table is one BAGEL dataset folder, DEST/<table>/ (``edit``, ``subject``): one ``<table>-NNNNN.parquet``
per non-empty source shard, in row groups of :data:`ROW_GROUP_ROWS` rows (BAGEL's unit of work), and
DEST/parquet_info/<table>.json: ``{parquet path: {"num_row_groups": n, "num_rows": m}}``. BAGEL
(ByteDance-Seed/Bagel ``data/interleave_datasets/interleave_t2i_dataset.py``, ``ParquetStandardIterableDataset``)
lists ``data_dir``, keeps the files whose ``os.path.join(data_dir, name)`` is a key and reads each of their
``num_row_groups`` row groups; the keys are DEST's absolute paths, so ``data_dir`` is DEST/<table> written as
in the keys. DEST/dataset_info.json holds the ``DATASET_INFO["unified_edit"]`` entries that say so.

A row, as ``edit_dataset.py`` ``UnifiedEditIterableDataset.parse_row`` reads it:

* ``image_list``: the stored image bytes, input then output: ``[source_image, target_image]`` (a subject
  sample: ``[reference_image, target_image]``);
* ``instruction_list``: one list per step (here one): the row's ``instruction`` first, then the other
  templates of its bank filled with the same slots (:func:`phrasings`); BAGEL picks one at random;
* ``key``: the row's key (not read by BAGEL).

The masks are not exported: BAGEL's edit loader has none (the WebDataset, MDS and HF exports carry them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

from unicurate.manifests.export._base import IMAGE_PAIRS, ExportFormat, Say, Source, Table, check_key, inside
from unicurate.synthesis import subject as sj
from unicurate.synthesis import templates as tp
from unicurate.synthesis.edit_types import REGISTRY

ROW_GROUP_ROWS = 100
SCHEMA = pa.schema([pa.field("image_list", pa.list_(pa.binary())),
                    pa.field("instruction_list", pa.list_(pa.list_(pa.string()))),
                    pa.field("key", pa.string())])
DATASET_GROUP = "unified_edit"  # BAGEL's DATASET_REGISTRY name of UnifiedEditIterableDataset


def phrasings(table: Table, row: dict) -> list[str]:
    """The row's instruction and its alternative phrasings: every template of the bank it was rendered from
    (its edit type's, or the subject samples'), filled with the row's phrase (and caption) and the slots read
    back from the instruction (``templates.renderings``)."""
    instruction = row["instruction"] or ""
    if table.kind == "edit":
        spec = REGISTRY.get(row["edit_type"])
        bank = spec.templates if spec is not None else ()
        return tp.renderings(bank, row["template_id"], instruction, phrase=row["phrase"])
    return tp.renderings(sj.TEMPLATES, row["template_id"], instruction, phrase=row["phrase"],
                         caption=(row["caption"] or "").strip())


def record(table: Table, row: dict) -> dict:
    """One BAGEL row (``image_list``, ``instruction_list``, ``key``) of a source row."""
    return {"image_list": [row[c] for c in IMAGE_PAIRS[table.kind]], "instruction_list": [phrasings(table, row)],
            "key": check_key(row["key"])}


def write(source: Source, dest: Path, say: Say) -> dict[str, int]:
    import pyarrow.parquet as pq

    counts, entries = {}, {}
    for table in source.tables():
        folder = inside(dest, dest / table.name)
        data_dir = os.path.abspath(folder)
        info: dict[str, dict] = {}
        n = 0
        for rows in source.shards(table):
            if not rows:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{table.name}-{len(info):05d}.parquet"
            path = inside(dest, folder / name)
            pq.write_table(pa.Table.from_pylist([record(table, r) for r in rows], schema=SCHEMA), path,
                           row_group_size=ROW_GROUP_ROWS)
            info[os.path.join(data_dir, name)] = {"num_row_groups": pq.read_metadata(path).num_row_groups,
                                                  "num_rows": len(rows)}
            n += len(rows)
        counts[table.name] = n
        if not info:  # BAGEL cannot read a dataset folder without Parquet files: a table without rows gets none
            say(f"{table.name}: no rows, no files")
            continue
        info_path = inside(dest, dest / "parquet_info" / f"{table.name}.json")
        info_path.parent.mkdir(exist_ok=True)
        info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        entries[f"unicurate_{table.name}"] = {"data_dir": data_dir, "num_files": len(info), "num_total_samples": n,
                                               "parquet_info_path": os.path.abspath(info_path)}
        say(f"{table.name}: {n} rows in {len(info)} Parquet file(s) -> {folder} (parquet_info: {info_path})")
    (dest / "dataset_info.json").write_text(json.dumps({DATASET_GROUP: entries}, indent=2) + "\n",
                                            encoding="utf-8")
    return counts


FORMAT = ExportFormat(name="bagel", title="BAGEL editing Parquet", module="pyarrow", requires="pyarrow", write=write,
                      kinds=("synthesis",))
