"""WebDataset exports as their consumers read them: OpenCLIP's dataset size (sizes.json, __len__), and the
img2dataset layout next to a real img2dataset output of the same urls."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import output_rows, rewrite_shard, shard_files
from unicurate.manifests.export import ExportError, export

TABLES = {"train": "kept", "rejected": "rejected"}  # export table -> the run's shard folder


def tar_members(tar: Path) -> list[str]:
    with tarfile.open(tar) as tf:
        return tf.getnames()


def tar_keys(tar: Path) -> set[str]:
    return {n.split(".", 1)[0] for n in tar_members(tar)}


def read_keys(tars: list[Path]) -> list[str]:
    import webdataset as wds

    return [s["__key__"] for s in wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False)]


def check_sizes(folder: Path, pattern: str, expected: int) -> None:
    """sizes.json and __len__ hold what the tars hold, and OpenCLIP's get_dataset_size (given --train-data) says
    so for the brace pattern, the tars joined by '::', one tar alone and, without sizes.json, from __len__."""
    from open_clip_train.data import get_dataset_size

    tars = sorted(folder.glob("*.tar"))
    sizes = json.loads((folder / "sizes.json").read_text())
    assert sizes == {t.name: len(tar_keys(t)) for t in tars}
    assert int((folder / "__len__").read_text()) == expected == sum(sizes.values())
    stems = [re.fullmatch(pattern, t.name).group(1) for t in tars]
    brace = str(folder / pattern.replace(r"(\d+)", "{" + f"{stems[0]}..{stems[-1]}" + "}").replace("\\", ""))
    assert get_dataset_size(brace) == (expected, len(tars))
    assert get_dataset_size("::".join(str(t) for t in tars)) == (expected, len(tars))
    assert get_dataset_size(str(tars[-1])) == (sizes[tars[-1].name], 1)
    (folder / "sizes.json").rename(folder / "sizes.json.bak")
    assert get_dataset_size(brace) == (expected, len(tars))  # from __len__
    (folder / "sizes.json.bak").rename(folder / "sizes.json")


def test_default_layout_sizes_match_what_each_tar_holds(scored, tmp_path):
    out, manifest = scored[0], scored[1]
    dest = tmp_path / "wds"
    export(str(out), "webdataset", str(dest), max_count=20)
    for table, sub in TABLES.items():
        folder = dest / table
        check_sizes(folder, table + r"-(\d+)\.tar", manifest["counts"][sub])
        tars = sorted(folder.glob("*.tar"))
        assert sorted(read_keys(tars)) == sorted(r["key"] for r in output_rows(out, (sub,), ["key"]))
        assert all(n <= 20 for n in json.loads((folder / "sizes.json").read_text()).values())
    assert len(list((dest / "train").glob("*.tar"))) == math.ceil(manifest["counts"]["kept"] / 20)


def test_synthesis_sizes_and_no_img2dataset_layout(synthesized, tmp_path):
    out = synthesized[0]
    dest = tmp_path / "wds"
    em = export(str(out), "webdataset", str(dest), max_count=5)
    for table in ("edit", "subject"):
        rows = len(output_rows(out, (table,), ["key"]))
        assert rows and em["counts"][table] == rows
        check_sizes(dest / table, table + r"-(\d+)\.tar", rows)
    with pytest.raises(ExportError, match="default layout"):
        export(str(out), "webdataset", str(tmp_path / "i2d"), layout="img2dataset")


@pytest.mark.parametrize("layout", ["default", "img2dataset"])
def test_an_empty_table_writes_no_tar_and_counts_zero(scored, tmp_path, layout):
    out = tmp_path / "run"
    shutil.copytree(scored[0], out)
    for f in shard_files(out, ("kept",)):
        rewrite_shard(out, f"kept/{f.name}", lambda rows: [])
    dest = tmp_path / "wds"
    em = export(str(out), "webdataset", str(dest), layout=layout)
    assert em["counts"]["train"] == 0 and em["layout"] == layout
    assert sorted(p.name for p in (dest / "train").iterdir()) == ["__len__", "sizes.json"]
    assert json.loads((dest / "train" / "sizes.json").read_text()) == {}
    assert (dest / "train" / "__len__").read_text().strip() == "0"
    assert list((dest / "rejected").glob("*.tar"))


def test_img2dataset_layout_holds_every_row_and_only_images_in_tars(scored, tmp_path):
    import pandas as pd
    import webdataset as wds

    out, manifest = scored[0], scored[1]
    dest = tmp_path / "i2d"
    em = export(str(out), "webdataset", str(dest), max_count=20, layout="img2dataset")
    assert em["layout"] == "img2dataset"
    for table, sub in TABLES.items():
        folder = dest / table
        src = {r["key"]: r for r in output_rows(out, (sub,))}
        parquets = sorted(folder.glob("*.parquet"))
        assert [p.name for p in parquets] == [f"{i:05d}.parquet" for i in range(math.ceil(len(src) / 20))]
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["__len__", "sizes.json"] + [p.stem + s for p in parquets for s in (".parquet", ".tar", "_stats.json")])
        frame = pd.concat([pd.read_parquet(p) for p in parquets])
        assert sorted(frame["key"]) == sorted(src) and em["counts"][table] == len(src)
        successes = 0
        for p in parquets:
            rows = pq.read_table(p).to_pylist()
            stats = json.loads((folder / f"{p.stem}_stats.json").read_text())
            statuses = Counter(r["status"] for r in rows)
            assert stats["count"] == len(rows) == sum(stats["status_dict"].values()) and len(rows) <= 20
            assert (stats["successes"], stats["failed_to_download"], stats["failed_to_resize"]) == (
                statuses["success"], statuses["failed_to_download"], statuses["failed_to_resize"])
            assert stats["status_dict"] == dict(Counter(r["error_message"] or "success" for r in rows))
            assert stats["end_time"] - stats["start_time"] == pytest.approx(stats["duration"])
            ok = {r["key"]: r for r in rows if r["status"] == "success"}
            samples = {s["__key__"]: s for s in wds.WebDataset(str(folder / f"{p.stem}.tar"), shardshuffle=False,
                                                                 empty_check=False)}
            assert set(samples) == set(ok)
            for key, s in samples.items():
                assert next(v for k, v in s.items() if k in ("jpg", "png", "webp")) == src[key]["image"]
                assert s["txt"].decode() == (src[key]["caption"] or "")
                assert json.loads(s["json"]) == {k: None if isinstance(v, float) and math.isnan(v) else v
                                                 for k, v in ok[key].items()}
            for r in rows:
                reasons = src[r["key"]]["reject_reasons"]
                assert r["reject_reasons"] == reasons and (r["status"] == "success") == bool(src[r["key"]]["image"])
                assert (r["error_message"] is None) == (r["status"] == "success")
            successes += len(ok)
        check_sizes(folder, r"(\d+)\.tar", successes)
    assert int((dest / "train" / "__len__").read_text()) == manifest["counts"]["kept"]
    rejected = pd.concat([pd.read_parquet(p) for p in (dest / "rejected").glob("*.parquet")]).set_index("key")
    reasons = {r: s for rs, s in zip(rejected["reject_reasons"], rejected["status"]) for r in rs}
    assert reasons["http_error"] == reasons["timeout"] == reasons["duplicate_url"] == "failed_to_download"
    assert reasons["not_an_image"] == reasons["decode_error"] == "failed_to_resize"
    assert reasons["too_small"] == reasons["duplicate"] == "success"  # rejected later: its image is in the tar


# ------------------------------------------------------------------ next to img2dataset's own output
I2D_CASES = ("img-000", "img-002", "tiny", "http-404", "robots-noai", "not-an-image")


def run_img2dataset(web, folder: Path) -> Path:
    """img2dataset's webdataset output for :data:`I2D_CASES` of the sample web (two shards of three rows)."""
    import pyarrow as pa

    folder.mkdir()
    urls = [{"url": r["url"], "caption": r["caption"]} for r, c in zip(web.rows(), web.cases) if c.name in I2D_CASES]
    pq.write_table(pa.Table.from_pylist(urls), folder / "urls.parquet")
    kwargs = dict(url_list=str(folder / "urls.parquet"), input_format="parquet", url_col="url", caption_col="caption",
                  output_format="webdataset", output_folder=str(folder / "out"), processes_count=1, thread_count=2,
                  distributor="multiprocessing", number_sample_per_shard=3, timeout=5, retries=0)
    code = f"from img2dataset import download\ndownload(**{kwargs!r})\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "out"


def test_img2dataset_layout_reads_like_img2dataset_output(scored, web, tmp_path):
    theirs = run_img2dataset(web, tmp_path / "img2dataset")
    ours = tmp_path / "ours"
    export(str(scored[0]), "webdataset", str(ours), max_count=20, layout="img2dataset")
    shard_file = re.compile(r"\d{5}(\.tar|\.parquet|_stats\.json)")
    their_files = sorted(p.name for p in theirs.iterdir())
    assert their_files == ["00000.parquet", "00000.tar", "00000_stats.json",
                           "00001.parquet", "00001.tar", "00001_stats.json"]
    for table in TABLES:
        names = sorted(p.name for p in (ours / table).iterdir())
        assert [n for n in names if not shard_file.fullmatch(n)] == ["__len__", "sizes.json"]
        assert {m.group(1) for m in map(shard_file.fullmatch, names) if m} == {".tar", ".parquet", "_stats.json"}
    # the parquet: img2dataset's columns, with their types and in their order, first
    their_schema = pq.read_schema(theirs / "00000.parquet")
    our_schema = pq.read_schema(ours / "rejected" / "00000.parquet")
    assert [(f.name, f.type) for f in our_schema][:len(their_schema)] == [(f.name, f.type) for f in their_schema]
    assert {"reject_reasons", "clip_score", "aesthetic_score"} <= set(our_schema.names[len(their_schema):])
    # the stats: the same keys in the same order
    their_stats = json.loads((theirs / "00000_stats.json").read_text())
    assert list(json.loads((ours / "train" / "00000_stats.json").read_text())) == list(their_stats)
    # the tars: {key}.<image>, {key}.txt, {key}.json, the json holding the parquet columns first
    their_members = [n for t in sorted(theirs.glob("*.tar")) for n in tar_members(t)]
    our_tar = ours / "train" / "00000.tar"
    for members in (their_members, tar_members(our_tar)):
        by_key = Counter(n.split(".", 1)[0] for n in members)
        assert set(by_key.values()) == {3} and {n.split(".", 1)[1] for n in members} <= {"jpg", "png", "webp",
                                                                                          "txt", "json"}
    with tarfile.open(theirs / "00000.tar") as tf:
        their_json = json.load(tf.extractfile(next(n for n in tf.getnames() if n.endswith(".json"))))
    with tarfile.open(our_tar) as tf:
        our_json = json.load(tf.extractfile(next(n for n in tf.getnames() if n.endswith(".json"))))
    assert list(our_json)[:len(their_json)] == list(their_json)
    # the same url gets the same status (and, downloaded, the same bytes and size; failed, the same message)
    their_rows = {r["url"]: r for p in sorted(theirs.glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    our_rows = {r["url"]: r for t in TABLES for p in sorted((ours / t).glob("*.parquet"))
                for r in pq.read_table(p).to_pylist()}
    assert len(their_rows) == len(I2D_CASES)
    assert Counter(r["status"] for r in their_rows.values()) == {"success": 3, "failed_to_download": 2,
                                                                 "failed_to_resize": 1}
    for url, t in their_rows.items():
        o = our_rows[url]
        assert o["status"] == t["status"], url
        if t["status"] == "success":
            assert (o["sha256"], o["original_width"], o["original_height"]) == (
                t["sha256"], t["original_width"], t["original_height"])
        elif t["status"] == "failed_to_download":
            assert o["error_message"] == t["error_message"]
