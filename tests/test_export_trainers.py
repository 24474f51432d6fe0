"""Trainer layouts of a synthesis run (BAGEL editing Parquet, OmniGen JSON lines), read back as the trainers'
own loaders read them: their reading steps are reproduced below (the loaders need torch and the models' code),
each citing the file and lines it follows."""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import first_shard, output_rows, rewrite_shard
from unicurate.manifests.export import ExportError, export
from unicurate.synthesis import subject as sj
from unicurate.synthesis import templates as tp
from unicurate.synthesis.edit_types import REGISTRY


def source_rows(out, table: str) -> dict[str, dict]:
    return {r["key"]: r for r in output_rows(out, (table,))}


def manifest_rows(manifest: dict, table: str) -> int:
    return sum(e["rows"] for e in manifest["shards"][table])


# ------------------------------------------------------------------ BAGEL (ByteDance-Seed/Bagel @ 056b5fd)
def bagel_rows(entry: dict):
    """The rows of one DATASET_INFO entry, read as BAGEL reads them: data/dataset_base.py L110-123 (data_dir,
    json.load of parquet_info_path), data/parquet_utils.py L27-43 (get_parquet_data_paths, one rank),
    data/interleave_datasets/interleave_t2i_dataset.py L152-161 (get_data_paths: the listed files' row groups)
    and L185-195 (pq.ParquetFile(f).read_row_group(rg).to_pandas(), iterrows)."""
    with open(entry["parquet_info_path"]) as f:
        parquet_info = json.load(f)
    data_dir, num_data_path = entry["data_dir"], entry["num_files"]
    data_paths_per_dir = [os.path.join(data_dir, name) for name in os.listdir(data_dir) if name.endswith(".parquet")]
    repeat = num_data_path // len(data_paths_per_dir)
    data_paths = (data_paths_per_dir * (repeat + 1))[:num_data_path]
    row_groups = [(p, rg) for p in data_paths if p in parquet_info for rg in range(parquet_info[p]["num_row_groups"])]
    for path, rg in row_groups:
        with open(path, "rb") as f:
            df = pq.ParquetFile(f).read_row_group(rg).to_pandas()
        for _, row in df.iterrows():
            yield row


def pil_img2rgb(image):
    """data/data_utils.py L118-127."""
    if image.mode == "RGBA" or image.info.get("transparency", None) is not None:
        image = image.convert("RGBA")
        white = Image.new(mode="RGB", size=image.size, color=(255, 255, 255))
        white.paste(image, mask=image.split()[3])
        return white
    return image.convert("RGB")


def bagel_parse_row(row, rng: random.Random):
    """data/interleave_datasets/edit_dataset.py L21-71 for a two-image row: (input image, instruction, output
    image), the instruction one of ``instruction_list[0]``."""
    image_num = len(row["image_list"])
    start_idx = rng.choice(range(image_num - 1))
    end_idx = rng.choice(range(start_idx + 1, min(start_idx + 3, image_num)))
    assert (start_idx, end_idx) == (0, 1)
    first = pil_img2rgb(Image.open(io.BytesIO(row["image_list"][start_idx])))
    instruction = rng.choice(row["instruction_list"][end_idx - 1])
    last = pil_img2rgb(Image.open(io.BytesIO(row["image_list"][end_idx])))
    return first, instruction, last


def expected_phrasings(row: dict) -> set[str]:
    """Every template of the row's bank filled from the row's own columns (an oracle independent of the
    read-back in templates.renderings): the slots each edit type renders (edit_types/*.py) from ``params``."""
    if "edit_type" not in row:
        slots = tp.with_articles({"phrase": row["phrase"], "caption": (row["caption"] or "").strip()})
        return {t.format(**slots) for t in sj.TEMPLATES}
    p = json.loads(row["params"])
    slots = {"add": lambda: {"where": p["where"]}, "recolor": lambda: {"color": p["color"]},
             "move": lambda: {"direction": tp.direction_phrase(p["dx"], p["dy"])},
             "resize": lambda: {"bigger_smaller": "bigger" if p["scale"] > 1 else "smaller"},
             "replace": lambda: {"other": p["other_phrase"]}}.get(row["edit_type"], dict)()
    return {t.format(**tp.with_articles({"phrase": row["phrase"], **slots}))
            for t in REGISTRY[row["edit_type"]].templates}


@pytest.fixture(scope="module")
def bagel_export(synthesized, tmp_path_factory):
    from unicurate.manifests.export import bagel

    dest = tmp_path_factory.mktemp("bagel")
    patch = pytest.MonkeyPatch()
    patch.setattr(bagel, "ROW_GROUP_ROWS", 3)  # several row groups per file, as a large run has
    try:
        em = export(str(synthesized[0]), "bagel", str(dest))
    finally:
        patch.undo()
    return dest, em


def test_bagel_reads_every_triplet_and_subject_sample(synthesized, bagel_export):
    out, manifest = synthesized
    dest, em = bagel_export
    sources = {t: source_rows(out, t) for t in ("edit", "subject")}
    assert em["counts"] == {t: len(rows) for t, rows in sources.items()}
    assert em["counts"] == {t: manifest_rows(manifest, t) for t in ("edit", "subject")}
    info = json.loads((dest / "dataset_info.json").read_text())["unified_edit"]
    assert set(info) == {"unicurate_edit", "unicurate_subject"}
    rng = random.Random(0)
    for table, src in sources.items():
        entry = info[f"unicurate_{table}"]
        assert entry["data_dir"] == str(dest / table) and entry["num_total_samples"] == len(src)
        parquet_info = json.loads(Path(entry["parquet_info_path"]).read_text())
        assert len(parquet_info) == entry["num_files"] == len(list((dest / table).glob("*.parquet")))
        for path, meta in parquet_info.items():
            md = pq.read_metadata(path)
            assert meta == {"num_row_groups": md.num_row_groups, "num_rows": md.num_rows}
            assert md.num_row_groups == math.ceil(md.num_rows / 3)
        inputs = ("source_image", "target_image") if table == "edit" else ("reference_image", "target_image")
        seen = set()
        for row in bagel_rows(entry):
            r = src[row["key"]]
            seen.add(row["key"])
            assert list(row["image_list"]) == [r[c] for c in inputs]
            phrasings = list(row["instruction_list"][0])
            assert len(row["instruction_list"]) == 1 and phrasings[0] == r["instruction"]
            assert len(set(phrasings)) == len(phrasings) and set(phrasings) == expected_phrasings(r)
            first, instruction, last = bagel_parse_row(row, rng)
            assert instruction in phrasings
            assert first.mode == last.mode == "RGB" and last.size == (r["width"], r["height"])
        assert seen == set(src)


def test_bagel_edit_types_select_rows(synthesized, tmp_path):
    out, _ = synthesized
    edits = source_rows(out, "edit")
    kind, n = Counter(r["edit_type"] for r in edits.values()).most_common()[-1]
    em = export(str(out), "bagel", str(tmp_path / "one"), edit_types=[kind])
    assert em["counts"] == {"edit": n, "subject": len(source_rows(out, "subject"))} and em["edit_types"] == [kind]
    entry = json.loads((tmp_path / "one" / "dataset_info.json").read_text())["unified_edit"]["unicurate_edit"]
    assert {row["key"] for row in bagel_rows(entry)} == {k for k, r in edits.items() if r["edit_type"] == kind}


# ------------------------------------------------------------------ OmniGen (VectorSpaceLab/OmniGen @ d475201)
def omnigen_examples(json_file: Path, image_path: Path):
    """Each line as OmniGen's trainer takes it: OmniGen/train_helper/data.py L37 (load_dataset('json')), L40-44
    (images opened at os.path.join(image_path, file), converted to RGB) and L49-57, and
    OmniGen/processor.py L61-76 (the <|image_n|> tags: ids 1..n, as many as input images)."""
    import datasets

    data = datasets.load_dataset("json", data_files=str(json_file))["train"]
    for example in data:
        instruction, input_images, output_image = (example["instruction"], example["input_images"],
                                                   example["output_image"])
        image_tags = re.findall(r"<\|image_\d+\|>", instruction)
        image_ids = [int(s.split("|")[1].split("_")[-1]) for s in image_tags]
        unique_image_ids = sorted(set(image_ids))
        assert unique_image_ids == list(range(1, len(unique_image_ids) + 1))
        assert len(unique_image_ids) == len(input_images)
        opened = [Image.open(os.path.join(image_path, x)).convert("RGB") for x in input_images]
        yield example, opened, Image.open(os.path.join(image_path, output_image)).convert("RGB")


def test_omnigen_reads_every_triplet_and_subject_sample(synthesized, tmp_path):
    out, manifest = synthesized
    dest = tmp_path / "omnigen"
    em = export(str(out), "omnigen", str(dest))
    referenced = set()
    for table, task, first in (("edit", "image_edit", "source_image"),
                               ("subject", "subject_driven", "reference_image")):
        src = source_rows(out, table)
        assert em["counts"][table] == len(src) == manifest_rows(manifest, table)
        seen = set()
        for example, inputs, output in omnigen_examples(dest / f"{table}.jsonl", dest):
            r = src[example["key"]]
            seen.add(example["key"])
            assert example["task_type"] == task
            assert example["instruction"] == "<img><|image_1|></img> " + r["instruction"]
            assert [(dest / p).read_bytes() for p in example["input_images"]] == [r[first]]
            assert (dest / example["output_image"]).read_bytes() == r["target_image"]
            assert output.size == (r["width"], r["height"]) and len(inputs) == 1
            referenced.update(example["input_images"] + [example["output_image"]])
        assert seen == set(src)
    # each content once: every file is used, none twice
    files = {p.relative_to(dest).as_posix() for p in (dest / "images").iterdir()}
    assert files == referenced
    assert len({(dest / p).read_bytes() for p in files}) == len(files)


def test_omnigen_edit_types_select_rows(synthesized, tmp_path):
    out, _ = synthesized
    edits = source_rows(out, "edit")
    kinds = sorted({r["edit_type"] for r in edits.values()})[:2]
    em = export(str(out), "omnigen", str(tmp_path / "two"), edit_types=kinds)
    keys = [json.loads(line)["key"] for line in (tmp_path / "two" / "edit.jsonl").read_text().splitlines()]
    assert keys and sorted(keys) == sorted(k for k, r in edits.items() if r["edit_type"] in kinds)
    assert em["counts"]["edit"] == len(keys) < len(edits)


def test_omnigen_removes_image_tags_a_caption_holds(synthesized, tmp_path):
    from unicurate.manifests.export import omnigen
    from unicurate.manifests.export._base import tables

    row = dict(next(iter(source_rows(synthesized[0], "subject").values())))
    row["instruction"] = "Show this cat: see <|image_2|> and <img><|image_1|></img>"
    subject = next(t for t in tables({"kind": "synthesis"}, False) if t.kind == "subject")
    tmp_path.joinpath("images").mkdir()
    line = omnigen.sample(tmp_path, subject, row)
    assert re.findall(r"<\|image_\d+\|>", line["instruction"]) == ["<|image_1|>"]
    assert line["instruction"] == "<img><|image_1|></img> Show this cat: see  and <img></img>"


# ------------------------------------------------------------------ what both refuse
@pytest.mark.parametrize("fmt", ["bagel", "omnigen"])
def test_trainer_formats_refuse_unknown_edit_types_and_curated_runs(synthesized, scored, tmp_path, fmt):
    with pytest.raises(ExportError, match="unknown paint"):
        export(str(synthesized[0]), fmt, str(tmp_path / "a"), edit_types=["remove", "paint"])
    with pytest.raises(ExportError, match=f"--format {fmt} exports synthesis runs; this is a curated run"):
        export(str(scored[0]), fmt, str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_trainer_formats_refuse_unsafe_keys_before_writing(synthesized, tmp_path):
    out = tmp_path / "src"
    shutil.copytree(synthesized[0], out)
    first = first_shard(out, "subject").name
    rewrite_shard(out, f"subject/{first}", lambda rows: [dict(rows[0], key="../../escaped")] + rows[1:])
    for fmt in ("bagel", "omnigen"):
        with pytest.raises(ExportError, match="unsafe sample key"):
            export(str(out), fmt, str(tmp_path / fmt))
        assert not (tmp_path / fmt).exists()
    assert not list(tmp_path.rglob("escaped*"))


def test_renderings_read_back_the_slots_or_keep_the_instruction_alone():
    bank = REGISTRY["recolor"].templates
    tid, text = REGISTRY["recolor"].instruction("seed", phrase="red car", color="blue")
    got = tp.renderings(bank, tid, text, phrase="red car")
    assert got[0] == text and set(got) == {t.format(phrase="red car", color="blue") for t in bank}
    assert tp.renderings(bank, tid, "Please " + text, phrase="red car") == ["Please " + text]  # not its rendering
    assert tp.renderings(bank, None, text, phrase="red car") == [text]
    assert tp.renderings(bank, "recolor/99", text, phrase="red car") == [text]
