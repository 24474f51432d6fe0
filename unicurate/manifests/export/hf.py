"""Hugging Face datasets: Parquet files written by ``datasets`` with typed features, plus a dataset card.

Every column of the table gets the feature of its pyarrow type
(:func:`feature`); binary columns hold encoded images, so they become
``Image`` features. README.md (license, configs, the funnel, the models) makes
``datasets.load_dataset(DEST)`` and ``load_dataset("parquet", data_dir=...)``
work. A curated run's tables are splits of one config (``data/<split>-*``); a
synthesis run's are configs (``data/<table>/train-*``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from unicurate import __version__
from unicurate.manifests.export._base import ExportFormat, Say, Source, Table, check_key, inside, is_list, typed_columns


def feature(t: pa.DataType):
    """The ``datasets`` feature of a pyarrow type (None: none yet)."""
    import datasets as hf
    import numpy as np

    if pa.types.is_string(t):
        return hf.Value("string")
    if pa.types.is_binary(t):
        return hf.Image()
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return hf.Value(np.dtype(t.to_pandas_dtype()).name)
    if is_list(t):
        inner = feature(t.value_type)
        return None if inner is None else getattr(hf, "List", hf.Sequence)(inner)
    return None


def features(table: Table):
    import datasets as hf

    return hf.Features(typed_columns(table, "hf", feature))


def _columns(table: Table, features, rows: list[dict]) -> dict[str, list]:
    cols: dict[str, list] = {name: [] for name in features}
    for row in rows:
        check_key(row["key"])
        for name in features:
            v = row.get(name)
            if name in table.binary:
                v = {"bytes": bytes(v), "path": None} if v else None
            cols[name].append(v)
    return cols


def write(source: Source, dest: Path, say: Say) -> dict[str, int]:
    import datasets as hf

    hf.disable_progress_bars()
    counts = {}
    shards = source.manifest.get("shards") or {}
    for table in source.tables():
        feats = features(table)
        folder = inside(dest, dest / "data" / table.name) if source.synthesis else inside(dest, dest / "data")
        folder.mkdir(parents=True, exist_ok=True)
        split = "train" if source.synthesis else table.name
        # datasets cannot write or read an empty Parquet file with Image features: empty source shards are
        # skipped, files are numbered over the non-empty ones, and a table without rows gets no files
        n_files = sum(1 for sub in table.folders for sh in shards.get(sub, []) if sh.get("rows"))
        n = i = 0
        for rows in source.shards(table):
            if not rows:
                continue
            ds = hf.Dataset.from_dict(_columns(table, feats, rows), features=feats, split=hf.Split(split))
            ds.to_parquet(str(inside(dest, folder / f"{split}-{i:05d}-of-{n_files:05d}.parquet")))
            n += len(rows)
            i += 1
        counts[table.name] = n
        say(f"{table.name}: {n} rows -> {folder}")
    (dest / "README.md").write_text(dataset_card(source.manifest, counts, source.kept_only), encoding="utf-8")
    return counts


def dataset_card(manifest: dict, counts: dict[str, int], kept_only: bool) -> str:
    """README.md for the Hugging Face export: YAML header (license, configs) + funnel and models."""
    synthesis = manifest["kind"] == "synthesis"
    recipe = manifest.get("recipe", {})
    name = recipe.get("name") or manifest["kind"]
    y = ["---", "license: other", "license_name: mixed-web-sources",
         "license_details: >-", "  Images and captions come from the web URLs in the source lists; each keeps the",
         "  license of its origin. Check the rights of every source before training or redistribution.",
         "pretty_name: " + json.dumps(f"unicurate {name}"),
         "tags:", "- unicurate", "- image-text" if not synthesis else "- image-editing",
         "task_categories:", "- text-to-image" if not synthesis else "- image-to-image", "configs:"]
    tables = [t for t, n in counts.items() if n]  # a table without rows has no files to point at
    if synthesis:
        for i, table in enumerate(tables):
            y += [f"- config_name: {table}", "  data_files:", "  - split: train",
                  f"    path: data/{table}/train-*.parquet"]
            if i == 0:
                y.append("  default: true")
    else:
        y += ["- config_name: default", "  data_files:"]
        for table in tables:
            y += [f"  - split: {table}", f"    path: data/{table}-*.parquet"]
    y.append("---")
    body = [f"# unicurate {manifest['kind']} dataset: {name}", ""]
    if manifest.get("uncalibrated"):
        bad = ", ".join(m.get("name", "?") for m in manifest.get("models", []) if not m.get("calibrated"))
        body += [f"> **Uncalibrated models** ({bad}): scores come from randomly initialised models (tiny profile) "
                 "and are meaningless. Do not train on this selection.", ""]
    body += [f"Made by unicurate {manifest.get('unicurate_version', __version__)} on "
             f"{manifest.get('created_at', '?')}; recipe hash `{manifest.get('recipe_hash', '?')}`"
             f"{'; only kept rows' if kept_only and not synthesis else ''}.", "",
             "| split | rows |", "|---|---|"] + [f"| {t} | {n} |" for t, n in counts.items()] + [""]
    if synthesis:
        f = manifest.get("funnel", {})
        body += ["## Synthesis funnel", "", "| edit type | written | rejected |", "|---|---|---|"]
        for t, v in (f.get("edits") or {}).items():
            body.append(f"| {t} | {v.get('written', 0)} | {v.get('rejected', 0)} |")
        body.append("")
    else:
        f = manifest.get("funnel", {})
        body += ["## Funnel", "", f"{f.get('inputs', '?')} input rows.", "", "| stage | rows |", "|---|---|"]
        body += [f"| {s['label']} | {s['rows']} |" for s in f.get("stages", [])]
        if f.get("reasons"):
            body += ["", "| reject reason | rows |", "|---|---|"] + [f"| {r} | {n} |" for r, n in f["reasons"].items()]
        body.append("")
    body += ["## Models", "", "| model | weights | calibrated |", "|---|---|---|"]
    body += [f"| {m.get('name')} | `{m.get('uri')}` | {'yes' if m.get('calibrated') else '**no**'} |"
             for m in manifest.get("models", [])]
    body += ["", "## Load", "", "```python", "import datasets",
             "ds = datasets.load_dataset(\"path/to/this/folder\")" if not synthesis else
             "ds = datasets.load_dataset(\"path/to/this/folder\", \"edit\")  # or \"subject\"", "```", ""]
    return "\n".join(y + [""] + body)


FORMAT = ExportFormat(name="hf", title="Hugging Face datasets", module="datasets", requires="datasets", write=write)
