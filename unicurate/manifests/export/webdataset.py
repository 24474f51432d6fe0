"""WebDataset: tar shards written by ``webdataset.ShardWriter``, one sample per row.

A sample is ``{key}.json`` (every column but the images, JSON columns parsed)
plus one member per column of :data:`MEMBERS`: a curated sample adds
``{key}.jpg|png|webp`` + ``{key}.txt`` (caption); an edit triplet
``{key}.src.<ext>``, ``{key}.tgt.<ext>``, ``{key}.mask.png``,
``{key}.instruction.txt``; a subject sample ``{key}.ref.png``,
``{key}.tgt.<ext>``, ``{key}.mask.png``, ``{key}.instruction.txt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unicurate.manifests.export._base import (ExportFormat, Say, Source, Table, check_key, image_ext, json_safe,
                                              write_samples)

# member suffix of each column written as its own file, by table kind ("{ext}": the image's own format); a
# text column is written even when null (as ""), an image only when it has bytes
MEMBERS: dict[str, dict[str, str]] = {
    "curated": {"image": "{ext}", "caption": "txt"},
    "edit": {"source_image": "src.{ext}", "target_image": "tgt.{ext}", "mask": "mask.png",
             "instruction": "instruction.txt"},
    "subject": {"reference_image": "ref.png", "target_image": "tgt.{ext}", "mask": "mask.png",
                "instruction": "instruction.txt"},
}


def sample(table: Table, row: dict) -> dict[str, Any]:
    """The tar members of one row: ``__key__``, ``json`` and the table kind's :data:`MEMBERS`."""
    s: dict[str, Any] = {"__key__": check_key(row["key"]),
                         "json": json.dumps(json_safe(table, row), ensure_ascii=False, default=str).encode("utf-8")}
    for column, suffix in MEMBERS[table.kind].items():
        v = row.get(column)
        if column in table.binary:
            if v:
                s[suffix.format(ext=image_ext(row.get("image_format"), v))] = v
        else:
            s[suffix] = (v or "").encode("utf-8")
    return s


def write(source: Source, dest: Path, say: Say) -> dict[str, int]:
    import webdataset as wds

    def open_sink(folder: Path, table: Table):
        return wds.ShardWriter(str(folder / f"{table.name}-%06d.tar"), maxcount=source.options.max_count, verbose=0,
                               encoder=False, mtime=0)

    return write_samples(source, dest, say, open_sink, sample)


FORMAT = ExportFormat(name="webdataset", title="WebDataset", module="webdataset", requires="webdataset",
                      write=write)
