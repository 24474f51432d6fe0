"""Exports round-trip: WebDataset, MosaicML Streaming (MDS) and Hugging Face datasets, read back with each library."""

from __future__ import annotations

import glob
import json
import math
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import first_shard, output_rows, rewrite_shard, shard_files
from unicurate.manifests.export import EXPORT_MANIFEST, ExportError, export

SCORES = ("clip_score", "aesthetic_score", "watermark_score")


def source_rows(out: Path, subs) -> dict[str, dict]:
    return {r["key"]: r for r in output_rows(out, subs)}


def same(a, b) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or math.isnan(a)) and (b is None or (isinstance(b, float) and math.isnan(b)))
    return a == pytest.approx(b, rel=1e-6)


def check_export_manifest(dest: Path, counts: dict) -> None:
    import hashlib

    em = json.loads((dest / EXPORT_MANIFEST).read_text())
    assert em["counts"] == counts
    listed = {f["path"]: f for f in em["files"]}
    on_disk = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and p.name != EXPORT_MANIFEST}
    assert set(listed) == on_disk
    for rel, f in listed.items():
        assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == f["sha256"]


def test_webdataset_round_trip(scored, tmp_path):
    import webdataset as wds

    out = scored[0]
    src = source_rows(out, ("kept", "rejected"))
    dest = tmp_path / "wds"
    em = export(str(out), "webdataset", str(dest), max_count=20)
    check_export_manifest(dest, {"train": scored[1]["counts"]["kept"], "rejected": scored[1]["counts"]["rejected"]})
    assert len(glob.glob(str(dest / "train" / "*.tar"))) > 1  # maxcount splits shards
    seen = {}
    for table in ("train", "rejected"):
        for s in wds.WebDataset(sorted(glob.glob(str(dest / table / "*.tar"))), shardshuffle=False, empty_check=False):
            seen[s["__key__"]] = (table, s)
    assert set(seen) == set(src)
    for key, (table, s) in seen.items():
        row = src[key]
        meta = json.loads(s["json"])
        assert (table == "train") == (row["status"] == "kept")
        assert s["txt"].decode() == (row["caption"] or "")
        assert s.get("jpg") == row["image"]  # the exact stored bytes (None: not downloaded)
        assert meta["reject_reasons"] == row["reject_reasons"] and meta["url"] == row["url"]
        for c in SCORES:
            assert same(meta[c], row[c]), (key, c)
    assert em["format"] == "webdataset"


def test_mds_round_trip(scored, tmp_path):
    from streaming import StreamingDataset

    out = scored[0]
    src = source_rows(out, ("kept",))
    dest = tmp_path / "mds"
    export(str(out), "mds", str(dest), kept_only=True)
    check_export_manifest(dest, {"train": len(src)})
    assert not (dest / "rejected").exists()
    ds = StreamingDataset(local=str(dest / "train"), shuffle=False, batch_size=1)
    got = {ds[i]["key"]: ds[i] for i in range(len(ds))}
    assert set(got) == set(src)
    for key, s in got.items():
        row = src[key]
        assert s["caption"] == row["caption"] and s["image"] == row["image"]
        assert (s["width"], s["height"]) == (row["width"], row["height"])
        for c in SCORES:
            assert same(s[c], row[c]) and same(s["meta"][c], row[c])
        assert s["meta"]["status"] == "kept" and s["meta"]["reject_reasons"] == []


def test_hf_round_trip_and_dataset_card(scored, tmp_path):
    import datasets

    out = scored[0]
    src = source_rows(out, ("kept", "rejected"))
    dest = tmp_path / "hf"
    export(str(out), "hf", str(dest))
    card = (dest / "README.md").read_text()
    assert card.startswith("---\nlicense: other") and "configs:" in card and "## Funnel" in card
    assert "Uncalibrated models" in card and "| clip | `tiny://" in card
    for ds in (datasets.load_dataset(str(dest)), datasets.load_dataset("parquet", data_dir=str(dest))):
        assert set(ds) == {"train", "rejected"}
        assert ds["train"].features["image"] == datasets.Image()
        assert ds["train"].num_rows == scored[1]["counts"]["kept"]
        raw = ds.cast_column("image", datasets.Image(decode=False))
        for split in ("train", "rejected"):
            for r in raw[split]:
                row = src[r["key"]]
                assert r["caption"] == row["caption"] and r["reject_reasons"] == row["reject_reasons"]
                assert (r["image"]["bytes"] if r["image"] else None) == row["image"]
                for c in SCORES:
                    assert same(r[c], row[c]), (r["key"], c)
    first = datasets.load_dataset(str(dest), split="train")[0]["image"]
    assert first.size[0] > 0  # decodes to a PIL image


@pytest.mark.parametrize("fmt", ["webdataset", "mds", "hf"])
def test_synthesis_exports_triplets_and_subjects(synthesized, tmp_path, fmt):
    out, manifest = synthesized
    edits, subjects = source_rows(out, ("edit",)), source_rows(out, ("subject",))
    assert edits and subjects
    dest = tmp_path / fmt
    export(str(out), fmt, str(dest))
    check_export_manifest(dest, {"edit": len(edits), "subject": len(subjects)})
    if fmt == "webdataset":
        import webdataset as wds

        got = {s["__key__"]: s for s in wds.WebDataset(sorted(glob.glob(str(dest / "edit" / "*.tar"))),
                                                         shardshuffle=False)}
        assert set(got) == set(edits)
        for key, s in got.items():
            ext = "jpg" if edits[key]["image_format"] in ("jpg", "jpeg") else edits[key]["image_format"]
            assert s[f"src.{ext}"] == edits[key]["source_image"] and s[f"tgt.{ext}"] == edits[key]["target_image"]
            assert s["mask.png"] == edits[key]["mask"]
            assert s["instruction.txt"].decode() == edits[key]["instruction"]
            assert json.loads(s["json"])["edit_type"] == edits[key]["edit_type"]
        subs = {s["__key__"]: s for s in wds.WebDataset(sorted(glob.glob(str(dest / "subject" / "*.tar"))),
                                                          shardshuffle=False)}
        ext = {k: "jpg" if r["image_format"] in ("jpg", "jpeg") else r["image_format"] for k, r in subjects.items()}
        assert {k: s[f"ref.{ext[k]}"] for k, s in subs.items()} == {k: r["reference_image"] for k, r in subjects.items()}
    elif fmt == "mds":
        from streaming import StreamingDataset

        ds = StreamingDataset(local=str(dest / "edit"), shuffle=False, batch_size=1)
        got = {ds[i]["key"]: ds[i] for i in range(len(ds))}
        assert set(got) == set(edits)
        for key, s in got.items():
            r = edits[key]
            assert (s["source_image"], s["target_image"], s["mask"]) == (r["source_image"], r["target_image"], r["mask"])
            assert s["instruction"] == r["instruction"] and same(s["clip_similarity"], r["clip_similarity"])
    else:
        import datasets

        ds = datasets.load_dataset(str(dest), "edit", split="train")
        raw = ds.cast_column("source_image", datasets.Image(decode=False)).cast_column(
            "target_image", datasets.Image(decode=False))
        assert {r["key"] for r in raw} == set(edits)
        for r in raw:
            e = edits[r["key"]]
            assert r["source_image"]["bytes"] == e["source_image"] and r["target_image"]["bytes"] == e["target_image"]
            assert r["instruction"] == e["instruction"] and r["edit_type"] == e["edit_type"]
        sub = datasets.load_dataset(str(dest), "subject", split="train")
        assert sorted(sub["key"]) == sorted(subjects)
        assert datasets.load_dataset("parquet", data_dir=str(dest / "data" / "edit"), split="train").num_rows == len(edits)


def test_export_refuses_unsafe_keys_and_foreign_destinations(scored, tmp_path):
    out = tmp_path / "evil"
    shutil.copytree(scored[0], out)
    kept0 = first_shard(out, "kept").name
    rewrite_shard(out, f"kept/{kept0}", lambda rows: [dict(rows[0], key="../../escaped")] + rows[1:])
    for fmt in ("webdataset", "mds", "hf"):
        dest = tmp_path / f"dest-{fmt}"
        with pytest.raises(ExportError, match="unsafe sample key"):
            export(str(out), fmt, str(dest))
        assert not dest.exists()  # refused before anything was written
        assert not list(tmp_path.glob("escaped*")) and not (tmp_path.parent / "escaped").exists()
    # a non-empty folder that is not an earlier export is refused; an earlier export is replaced
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        export(str(scored[0]), "webdataset", str(busy))
    assert (busy / "mine.txt").read_text() == "keep me"
    again = tmp_path / "again"
    export(str(scored[0]), "hf", str(again))
    em = export(str(scored[0]), "webdataset", str(again), kept_only=True)
    assert not (again / "data").exists() and set(em["counts"]) == {"train"}
    with pytest.raises(ExportError, match="inside the output folder"):
        export(str(scored[0]), "hf", str(Path(scored[0]) / "export"))
    with pytest.raises(ExportError, match="unknown format"):
        export(str(scored[0]), "tfrecord", str(tmp_path / "x"))


def test_hf_export_skips_empty_shards(scored, tmp_path):
    """datasets cannot write an empty Parquet file with Image features: an empty shard is skipped, not a crash."""
    import datasets

    out = tmp_path / "run"
    shutil.copytree(scored[0], out)
    names = [p.name for p in shard_files(out, ("kept",))]
    rewrite_shard(out, f"kept/{names[0]}", lambda rows: [])
    rest = sum(pq.read_metadata(out / "kept" / n).num_rows for n in names[1:])
    dest = tmp_path / "hf"
    em = export(str(out), "hf", str(dest), kept_only=True)
    assert em["counts"] == {"train": rest}
    files = sorted(p.name for p in (dest / "data").glob("*.parquet"))
    assert files == [f"train-{i:05d}-of-{len(names) - 1:05d}.parquet" for i in range(len(names) - 1)]
    assert datasets.load_dataset(str(dest), split="train").num_rows == rest


# ------------------------------------------------------------------ keys become file names: only safe ones
UNSAFE_KEYS = {
    "traversal": "../../escaped",
    "absolute": "/tmp/escaped-abs",
    "backslashes": "..\\..\\escaped",
    "nul": "a\x00b",
    "too-long": "k" * 201,
    "unicode": "ключ-😀",
    "final-newline": "abc\n",
    "dotfile": ".hidden",
    "dot": "a.b",
    "slash": "a/b",
    "empty": "",
    "space": "a b",
    "fullwidth-digits": "１２３",
}


def _tree(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its size (links not followed): what an export may not change."""
    return {str(p.relative_to(root)): (p.lstat().st_size if not p.is_dir() else -1) for p in root.rglob("*")}


@pytest.mark.parametrize("case", sorted(UNSAFE_KEYS))
def test_every_format_refuses_unsafe_keys_before_writing(scored, tmp_path, case):
    """An unsafe key in any shard (kept or rejected) stops every format before DEST exists; nothing changes
    anywhere under the test's folder, and no file appears where a traversal would have put it."""
    key = UNSAFE_KEYS[case]
    out = tmp_path / "src"
    shutil.copytree(scored[0], out)
    sub = "rejected" if case in ("absolute", "nul", "unicode") else "kept"  # both tables are checked
    first = first_shard(out, sub).name
    rewrite_shard(out, f"{sub}/{first}", lambda rows: rows[:1] + [dict(rows[1], key=key)] + rows[2:])
    before = _tree(tmp_path)
    for fmt in ("webdataset", "mds", "hf"):
        dest = tmp_path / "export" / fmt / "dest"
        with pytest.raises(ExportError, match="unsafe sample key") as info:
            export(str(out), fmt, str(dest))
        assert len(str(info.value)) < 600  # a 201-character key is shortened in the message
        assert not (tmp_path / "export").exists()  # refused before anything was written, not even DEST's parents
    assert _tree(tmp_path) == before
    assert not Path("/tmp/escaped-abs").exists() and not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("table", ["edit", "subject"])
def test_synthesis_exports_refuse_unsafe_keys(synthesized, tmp_path, table):
    out = tmp_path / "src"
    shutil.copytree(synthesized[0], out)
    first = first_shard(out, table).name
    rewrite_shard(out, f"{table}/{first}", lambda rows: [dict(rows[0], key="../../../escaped")] + rows[1:])
    before = _tree(tmp_path)
    for fmt in ("webdataset", "mds", "hf"):
        with pytest.raises(ExportError, match="unsafe sample key '../../../escaped'"):
            export(str(out), fmt, str(tmp_path / f"dest-{fmt}"))
    assert _tree(tmp_path) == before


def test_check_key_accepts_only_plain_names():
    from unicurate.manifests.export import check_key

    for ok in ("0123456789abcdef0123", "a" * 200, "A-b_c", "9"):
        assert check_key(ok) == ok
    for bad in [*UNSAFE_KEYS.values(), None, 12, b"abc", "-lead", "_lead", "abc\r", "a\tb"]:
        with pytest.raises(ExportError, match="unsafe sample key"):
            check_key(bad)


def test_webdataset_members_are_key_named_files_under_dest(scored, tmp_path):
    """The longest and oddest keys that are allowed export as flat tar members named after the key."""
    import tarfile

    out = tmp_path / "src"
    shutil.copytree(scored[0], out)
    first = first_shard(out, "kept").name
    edge = ["A" * 200, "Z-_-9"]
    rewrite_shard(out, f"kept/{first}", lambda rows: [dict(r, key=k) for r, k in zip(rows, edge)] + rows[2:])
    dest = tmp_path / "wds"
    export(str(out), "webdataset", str(dest), kept_only=True)
    names = []
    for tar in sorted((dest / "train").glob("*.tar")):
        with tarfile.open(tar) as tf:
            names += [m.name for m in tf.getmembers()]
            assert all(m.isfile() for m in tf.getmembers())
    assert all("/" not in n and not n.startswith(".") and ".." not in n for n in names), names
    for k in edge:
        assert {f"{k}.jpg", f"{k}.txt", f"{k}.json"} <= set(names)


def test_export_does_not_follow_links_out_of_dest(scored, tmp_path):
    """A link planted in an earlier export's DEST (to a folder outside it) stops the export: the outside
    folder is neither emptied nor written to."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    dest = tmp_path / "dest"
    export(str(scored[0]), "webdataset", str(dest), kept_only=True)
    shutil.rmtree(dest / "train")
    (dest / "train").symlink_to(outside, target_is_directory=True)
    for fmt in ("webdataset", "mds", "hf"):
        with pytest.raises(ExportError, match="outside"):
            export(str(scored[0]), fmt, str(dest), kept_only=True)
        assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
        assert (outside / "precious.txt").read_text() == "keep me"


# ------------------------------------------------------------------ the format registry: columns come from the schemas
def _tables_of_every_kind():
    from unicurate.manifests.export._base import tables

    return tables({"kind": "curated"}, kept_only=False) + tables({"kind": "synthesis"}, kept_only=False)


def test_every_format_is_a_module_named_as_its_cli_choice():
    from unicurate.cli import build_parser
    from unicurate.manifests import export as ex
    from unicurate.manifests.export import FORMATS

    modules = sorted(p.stem for p in Path(ex.__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    assert sorted(FORMATS) == modules == ["bagel", "hf", "mds", "omnigen", "webdataset"]
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    fmt = next(a for a in sub.choices["export"]._actions if a.dest == "format")
    assert fmt.choices == list(FORMATS)


def test_format_columns_are_the_schema_columns():
    from unicurate.manifests.export import hf, mds
    from unicurate.schema import CURATED_SCHEMA, SYNTHESIS_SCHEMAS

    shard_schema = {"train": CURATED_SCHEMA, "rejected": CURATED_SCHEMA, "edit": SYNTHESIS_SCHEMAS["edit"],
                    "subject": SYNTHESIS_SCHEMAS["subject"]}
    for table in _tables_of_every_kind():
        names = shard_schema[table.name].names
        assert list(mds.columns(table)) == names and list(hf.features(table)) == names


def test_a_column_added_to_a_schema_is_exported_with_its_type():
    """A new filter's columns (here a string and a float32) reach every format without touching it."""
    import datasets
    import pyarrow as pa

    from unicurate.manifests.export import hf, mds, webdataset
    from unicurate.manifests.export._base import Table

    table = _tables_of_every_kind()[0]
    wider = Table(table.name, table.kind, table.folders,
                  table.schema.append(pa.field("language", pa.string())).append(
                      pa.field("language_score", pa.float32())))
    assert (mds.columns(wider)["language"].name, mds.columns(wider)["language_score"].name) == ("str", "float64")
    feats = hf.features(wider)
    assert (feats["language"], feats["language_score"]) == (datasets.Value("string"), datasets.Value("float32"))
    row = {"key": "k1", "language": "en", "language_score": None}
    assert mds.sample(wider, row)["language"] == "en" and math.isnan(mds.sample(wider, row)["language_score"])
    assert json.loads(webdataset.sample(wider, row)["json"])["language"] == "en"
    odd = Table(table.name, table.kind, table.folders, table.schema.append(pa.field("seen_on", pa.date32())))
    for columns in (mds.columns, hf.features):
        with pytest.raises(TypeError, match=r"train\.seen_on \(date32"):
            columns(odd)


def test_a_missing_format_library_is_reported_before_anything_is_written(scored, tmp_path, monkeypatch):
    from unicurate.manifests import export as ex

    monkeypatch.setitem(ex.FORMATS, "mds", ex.ExportFormat("mds", "MDS", "no_such_module_xyz", "mosaicml-streaming",
                                                          ex.FORMATS["mds"].write))
    with pytest.raises(ExportError, match=r"mosaicml-streaming is not installed .*unicurate\[export\]"):
        export(str(scored[0]), "mds", str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()
