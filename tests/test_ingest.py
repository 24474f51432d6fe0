"""Input readers: formats, compression, column mapping, metadata, row and file problems."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unicurate.config import InputConfig
from unicurate.download import ingest


def _read_all(cfg: InputConfig) -> list[dict]:
    files = ingest.expand_inputs(cfg)
    ingest.preflight(files, cfg)
    return [row for split in ingest.plan_splits(files) for row in ingest.read_split(split, cfg)]


ROWS = [
    {"link": "http://a.example/1.jpg", "text": "a cat", "license": "cc0", "n": 1},
    {"link": "http://a.example/2.jpg", "text": "a dog", "license": "cc-by", "n": 2},
    {"link": "http://a.example/3.jpg", "text": None, "license": None, "n": 3},
]


def _write(fmt, path):
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=2)
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = [sep.join(["link", "text", "license", "n"])]
        lines += [sep.join(str(r[k] or "") for k in ("link", "text", "license", "n")) for r in ROWS]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl"])
def test_formats_map_columns_and_carry_metadata(tmp_path, fmt):
    p = tmp_path / f"pairs.{fmt}"
    _write(fmt, p)
    rows = _read_all(InputConfig(path=str(p), url_col="link", caption_col="text"))
    assert [r["url"] for r in rows] == [r["link"] for r in ROWS]
    assert rows[0]["caption"] == "a cat" and rows[1]["caption"] == "a dog"
    assert rows[2]["caption"] in (None, "")
    assert [r["input_row"] for r in rows] == [0, 1, 2]
    assert all(r["source"] == "pairs" and r["reject_reasons"] == [] for r in rows)
    meta = json.loads(rows[1]["metadata"])
    assert meta["license"] == "cc-by" and str(meta["n"]) == "2"
    assert "link" not in meta and "text" not in meta
    assert len({r["key"] for r in rows}) == 3


def test_parquet_splits_per_row_group_keep_row_numbers(tmp_path):
    p = tmp_path / "x.parquet"
    _write("parquet", p)
    cfg = InputConfig(path=str(p), url_col="link", caption_col="text")
    splits = ingest.plan_splits(ingest.expand_inputs(cfg))
    assert [(s.row_group, s.first_row) for s in splits] == [(0, 0), (1, 2)]


def test_txt_url_list_and_gzip(tmp_path):
    p = tmp_path / "urls.txt.gz"
    with gzip.open(p, "wt") as fh:
        fh.write("http://a.example/1.jpg\n\n  http://a.example/2.jpg  \n")
    rows = _read_all(InputConfig(path=str(p), caption_col=None))
    assert [r["url"] for r in rows] == ["http://a.example/1.jpg", "http://a.example/2.jpg"]
    assert rows[0]["caption"] is None and rows[0]["source"] == "urls"


def test_carry_columns_selection(tmp_path):
    p = tmp_path / "x.jsonl"
    _write("jsonl", p)
    rows = _read_all(InputConfig(path=str(p), url_col="link", caption_col="text", carry_columns=["n"]))
    assert json.loads(rows[0]["metadata"]) == {"n": 1}
    rows = _read_all(InputConfig(path=str(p), url_col="link", caption_col="text", carry_columns="none"))
    assert rows[0]["metadata"] is None


def test_bad_rows_become_invalid_input(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"url": "http://a/1.jpg", "caption": "ok"}\n{broken\n[1, 2]\n{"url": null}\n{"url": 5, "caption": 7}\n'
                 '{"url": "http://a/2.jpg", "caption": 7}\n')
    rows = _read_all(InputConfig(path=str(p)))
    assert len(rows) == 6
    assert [r["reject_reasons"] for r in rows] == [[], ["invalid_input"], ["invalid_input"], ["invalid_input"],
                                                   ["invalid_input"], []]
    assert "line 2" in rows[1]["error"] and "not JSON" in rows[1]["error"]
    assert "not a JSON object" in rows[2]["error"]
    # a url that is not a JSON string is the row's problem (not coerced to "5" and downloaded)
    assert rows[4]["error"] == "line 5: the url ('url') is a number, 5, not a string" and rows[4]["url"] is None
    assert rows[5]["caption"] == "7"  # a numeric caption is written as text
    assert len({r["key"] for r in rows}) == 6


def test_key_is_stable_and_depends_on_source_and_url():
    k = ingest.row_key("laion", "http://x/1.jpg")
    assert k == ingest.row_key("laion", "http://x/1.jpg")
    assert k != ingest.row_key("coyo", "http://x/1.jpg")
    assert k != ingest.row_key("laion", "http://x/1.jpg", occurrence=1)
    assert len(k) == 20


def test_file_problems_stop_before_work(tmp_path):
    with pytest.raises(ingest.InputError, match="matched no files"):
        ingest.expand_inputs(InputConfig(path=str(tmp_path / "*.parquet")))
    p = tmp_path / "x.csv"
    p.write_text("href,caption\nhttp://a/1.jpg,hi\n")
    cfg = InputConfig(path=str(p))
    with pytest.raises(ingest.InputError, match=r"x\.csv: no url column 'url' \(columns: href, caption\)"):
        ingest.preflight(ingest.expand_inputs(cfg), cfg)
    e = tmp_path / "empty.jsonl"
    e.write_text("")
    cfg = InputConfig(path=str(e))
    with pytest.raises(ingest.InputError, match="empty.jsonl: empty file"):
        ingest.preflight(ingest.expand_inputs(cfg), cfg)
    c = tmp_path / "corrupt.parquet"
    c.write_bytes(b"PAR1 this is not parquet")
    cfg = InputConfig(path=str(c))
    with pytest.raises(ingest.InputError, match="corrupt.parquet: cannot read as parquet"):
        ingest.preflight(ingest.expand_inputs(cfg), cfg)
    u = tmp_path / "x.xlsx"
    u.write_text("?")
    with pytest.raises(ingest.InputError, match="set input.format"):
        ingest.expand_inputs(InputConfig(path=str(u)))


def test_image_col_needs_parquet_and_the_column(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("url,caption\nhttp://a/1.jpg,hi\n")
    cfg = InputConfig(path=str(p), image_col="image")
    with pytest.raises(ingest.InputError, match=r"x\.csv: input.image_col needs parquet inputs"):
        ingest.preflight(ingest.expand_inputs(cfg), cfg)
    q = tmp_path / "y.parquet"
    pq.write_table(pa.table({"url": ["http://a/1.jpg"], "jpg": [b"\xff\xd8"], "extra": [1]}), q)
    cfg = InputConfig(path=str(q), image_col="image", caption_col=None)
    with pytest.raises(ingest.InputError, match=r"y\.parquet: no image column 'image' \(columns: url, jpg, extra\)"):
        ingest.preflight(ingest.expand_inputs(cfg), cfg)
    # img2dataset's column name works; the bytes ride along, and are not carried into metadata
    cfg = InputConfig(path=str(q), image_col="jpg", caption_col=None)
    ingest.preflight(ingest.expand_inputs(cfg), cfg)
    (row,) = list(ingest.read_split(ingest.plan_splits(ingest.expand_inputs(cfg))[0], cfg))
    assert row["image_bytes"] == b"\xff\xd8" and json.loads(row["metadata"]) == {"extra": 1}


def test_unreadable_json_lines_become_invalid_input_rows(tmp_path):
    """A line nested too deep for the parser, or with a number too long to convert, is one rejected row."""
    from unicurate.config import InputConfig
    from unicurate.download import ingest

    path = tmp_path / "hostile.jsonl"
    path.write_text('{"url": "http://a/x.jpg"}\n' + "[" * 100_000 + "\n"
                    + '{"url": "http://a/y.jpg", "n": ' + "9" * 5000 + "}\n" + '{"url": "http://a/z.jpg"}\n')
    cfg = InputConfig(path=str(path))
    [split] = ingest.plan_splits(ingest.expand_inputs(cfg))
    rows = list(ingest.read_split(split, cfg))
    assert [r["url"] for r in rows] == ["http://a/x.jpg", None, None, "http://a/z.jpg"]
    assert rows[1]["reject_reasons"] == ["invalid_input"] and "RecursionError" in rows[1]["error"]
    assert rows[2]["reject_reasons"] == ["invalid_input"] and "line 3" in rows[2]["error"]
