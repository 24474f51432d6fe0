"""OmniGen: the JSON-lines files its fine-tuning reads, with the images as files beside them.

DEST/<table>.jsonl (``edit``, ``subject``) is a ``train.py --json_file``; ``--image_path DEST`` is the folder
its image paths are relative to. VectorSpaceLab/OmniGen ``OmniGen/train_helper/data.py`` (``DatasetFromJson``)
loads it with ``datasets.load_dataset("json")``, opens ``os.path.join(image_path, path)`` for every image and
passes the instruction with its input images to ``OmniGenProcessor.process_multi_modal_prompt``. A line:

* ``task_type``: ``image_edit`` (an edit triplet) or ``subject_driven`` (a subject sample); not read by OmniGen;
* ``instruction``: ``<img><|image_1|></img> `` then the row's ``instruction``: the placeholder stands for
  ``input_images[0]`` (OmniGen requires the tags ``<|image_1|>`` ... ``<|image_n|>`` for n input images, so a
  tag that a web caption happens to hold is removed from the text);
* ``input_images``: ``[source_image]`` (a subject sample: ``[reference_image]``), as ``images/<sha256>.<ext>``;
* ``output_image``: ``target_image``, as ``images/<sha256>.<ext>``;
* ``key``: the row's key (not read by OmniGen).

Images are written once per content (DEST/images/, named by the sha256 of the stored bytes, which are copied
as they are), so the source image that several triplets of one object share, or a subject sample's target, is
one file. The masks are not exported: OmniGen's loader has none.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from unicurate.manifests.export._base import (IMAGE_PAIRS, ExportFormat, Say, Source, Table, check_key, image_ext,
                                              inside)

IMAGE_DIR = "images"
TASK_TYPES = {"edit": "image_edit", "subject": "subject_driven"}
PLACEHOLDER = "<img><|image_1|></img>"
IMAGE_TAG = re.compile(r"<\|image_\d+\|>")  # OmniGen's processor splits the instruction on these


def image_path(dest: Path, row: dict, column: str) -> str:
    """The image of ``column`` written under DEST/images/ (once per content); its path relative to DEST."""
    data = row[column]
    rel = f"{IMAGE_DIR}/{hashlib.sha256(data).hexdigest()}.{image_ext(row['image_format'], data)}"
    path = inside(dest, dest / rel)
    if not path.exists():
        path.write_bytes(data)
    return rel


def sample(dest: Path, table: Table, row: dict) -> dict:
    """One JSON line of a source row, its images written."""
    key = check_key(row["key"])
    return {"task_type": TASK_TYPES[table.kind],
            "instruction": f"{PLACEHOLDER} {IMAGE_TAG.sub('', row['instruction'] or '')}",
            "input_images": [image_path(dest, row, IMAGE_PAIRS[table.kind][0])],
            "output_image": image_path(dest, row, IMAGE_PAIRS[table.kind][1]), "key": key}


def write(source: Source, dest: Path, say: Say) -> dict[str, int]:
    inside(dest, dest / IMAGE_DIR).mkdir(exist_ok=True)
    counts = {}
    for table in source.tables():
        path = inside(dest, dest / f"{table.name}.jsonl")
        n = 0
        with path.open("w", encoding="utf-8") as f:
            for rows in source.shards(table):
                for row in rows:
                    f.write(json.dumps(sample(dest, table, row), ensure_ascii=False) + "\n")
                    n += 1
        if not n:  # datasets cannot load an empty JSON-lines file: a table without rows gets none
            path.unlink()
        counts[table.name] = n
        say(f"{table.name}: {n} samples -> {path if n else 'no file'}")
    return counts


FORMAT = ExportFormat(name="omnigen", title="OmniGen JSON lines", module="json", requires="python", write=write,
                      kinds=("synthesis",))
