"""Malformed inputs: file-level problems stop the run before any work, naming the file and the problem;
row-level problems become rejected rows (``invalid_input``) with a clear error. Never a crash, never a lost row."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import output_frame, unicurate
from unicurate.config import InputConfig
from unicurate.manifests.validate import validate
from unicurate.download import ingest
from unicurate.run import execute
from unicurate.run.execute import run_curate

GOOD = [{"url": "http://127.0.0.1:9/a.jpg", "caption": "a red square"},
        {"url": "http://127.0.0.1:9/b.jpg", "caption": "a blue circle"}]


def _parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _good_parquet(path: Path, **extra) -> Path:
    return _parquet(path, {"url": [r["url"] for r in GOOD], "caption": [r["caption"] for r in GOOD], **extra})


# each case: (input folder) -> (input.path, recipe input overrides, the bad file's name, words the error must hold)
def case_no_url_column(d):
    _parquet(d / "pairs.parquet", {"href": ["http://127.0.0.1:9/a.jpg"], "caption": ["x"]})
    return "*.parquet", {}, "pairs.parquet", ["no url column 'url'", "href"]


def case_url_int64(d):
    _parquet(d / "ints.parquet", {"url": [1, 2], "caption": ["a", "b"]})
    return "*.parquet", {}, "ints.parquet", ["column 'url'", "int64", "expected text"]


def case_url_list(d):
    _parquet(d / "lists.parquet", {"url": [["http://127.0.0.1:9/a.jpg"], []], "caption": ["a", "b"]})
    return "*.parquet", {}, "lists.parquet", ["column 'url'", "list<", "expected text"]


def case_url_struct(d):
    _parquet(d / "structs.parquet", {"url": [{"href": "http://127.0.0.1:9/a.jpg"}], "caption": ["a"]})
    return "*.parquet", {}, "structs.parquet", ["column 'url'", "struct<href: string>", "expected text"]


def case_caption_not_text(d):
    _parquet(d / "caps.parquet", {"url": ["http://127.0.0.1:9/a.jpg"], "caption": [[1.5, 2.5]]})
    return "*.parquet", {}, "caps.parquet", ["column 'caption'", "list<", "expected text"]


def case_image_col_not_bytes(d):
    _parquet(d / "imgs.parquet", {"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"], "jpg": [7]})
    return "*.parquet", {"image_col": "jpg"}, "imgs.parquet", ["column 'jpg'", "int64", "encoded image bytes"]


def case_random_bytes_parquet(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "noise.parquet").write_bytes(os.urandom(4096))
    return "*.parquet", {}, "noise.parquet", ["cannot read as parquet"]


def case_truncated_footer(d):
    p = _good_parquet(d / "cut.parquet")
    p.write_bytes(p.read_bytes()[:-12])  # the footer length and the PAR1 magic are gone
    return "*.parquet", {}, "cut.parquet", ["cannot read as parquet"]


def _empty(ext):
    def case(d):
        d.mkdir(parents=True, exist_ok=True)
        (d / f"empty.{ext}").write_bytes(b"")
        return f"*.{ext}", {"caption_col": None} if ext == "txt" else {}, f"empty.{ext}", ["empty file (0 bytes)"]
    case.__name__ = f"case_empty_{ext}"
    return case


def case_blank_txt_gz(d):
    """Not 0 bytes, but no url in it once decompressed."""
    d.mkdir(parents=True, exist_ok=True)
    with gzip.open(d / "blank.txt.gz", "wt") as fh:
        fh.write("\n   \n\n")
    return "*.txt.gz", {"caption_col": None}, "blank.txt.gz", ["empty file"]


def case_header_only_missing_url_csv(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "a.csv").write_text("link,caption\n")
    return "*.csv", {}, "a.csv", ["no url column 'url'", "link"]


def case_jsonl_that_is_not_json(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "pairs.jsonl").write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a cat\n")  # a csv with the wrong name
    return "*.jsonl", {}, "pairs.jsonl", ["not JSON lines", "first 2 line(s)", "line 1 is not JSON"]


def case_mixed_url_types(d):
    _good_parquet(d / "a.parquet")
    _parquet(d / "b.parquet", {"url": [3], "caption": ["c"]})
    return "*.parquet", {}, "b.parquet", ["column 'url'", "int64"]


def case_mixed_caption_types(d):
    _good_parquet(d / "a.parquet")
    _parquet(d / "b.parquet", {"url": ["http://127.0.0.1:9/c.jpg"], "caption": [{"en": "c"}]})
    return "*.parquet", {}, "b.parquet", ["column 'caption'", "struct<en: string>"]


def case_mixed_one_lacks_caption(d):
    _good_parquet(d / "a.parquet")
    _parquet(d / "b.parquet", {"url": ["http://127.0.0.1:9/c.jpg"]})
    return "*.parquet", {}, "b.parquet", ["no caption column 'caption'", "input.caption_col"]


def case_carry_column_one_file_lacks(d):
    _good_parquet(d / "a.parquet", license=["cc0", "cc-by"])
    _good_parquet(d / "b.parquet")
    return "*.parquet", {"carry_columns": ["license"]}, "b.parquet", ["'license'", "input.carry_columns"]


def case_carry_columns_on_txt(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    return "*.txt", {"caption_col": None, "carry_columns": ["license"]}, "urls.txt", ["no columns to carry"]


FILE_CASES = [case_no_url_column, case_url_int64, case_url_list, case_url_struct, case_caption_not_text,
              case_image_col_not_bytes, case_random_bytes_parquet, case_truncated_footer,
              *(_empty(ext) for ext in ("parquet", "csv", "tsv", "jsonl", "txt")), case_blank_txt_gz,
              case_header_only_missing_url_csv, case_jsonl_that_is_not_json, case_mixed_url_types, case_mixed_caption_types,
              case_mixed_one_lacks_caption, case_carry_column_one_file_lacks, case_carry_columns_on_txt]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.__name__[5:])
def test_file_problem_stops_before_any_work(case, tmp_path, make_recipe, monkeypatch):
    pattern, overrides, bad_name, words = case(tmp_path / "in")
    out = tmp_path / "out"
    # an earlier finished run in the output folder: a failed preflight must leave it exactly as it was
    (out / "kept").mkdir(parents=True)
    (out / "kept" / "part-00000-of-00001.parquet").write_bytes(b"earlier shard")
    (out / "manifest.json").write_text('{"earlier": true}')
    before = _snapshot(out)
    started = []
    monkeypatch.setattr(execute, "execute", lambda *a, **k: started.append(a))
    import apache_beam as beam

    monkeypatch.setattr(beam.Pipeline, "run", lambda *a, **k: started.append(a))
    recipe = make_recipe(tmp_path / "in" / pattern, out, input=overrides)
    with pytest.raises(ingest.InputError) as err:
        run_curate(recipe, say=lambda _m: None)
    msg = str(err.value)
    assert str(tmp_path / "in" / bad_name) in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    # the other file of a mixed pair is fine: the message names only the bad one
    assert "a.parquet" not in msg.replace(bad_name, "")
    assert started == [] and _snapshot(out) == before


def test_mixed_text_types_across_files_are_one_input(tmp_path):
    """string, large_string, dictionary, binary and all-null columns all hold text: files may differ in these."""
    d = tmp_path / "in"
    _good_parquet(d / "a.parquet")
    _parquet(d / "b.parquet", {"url": pa.array(["http://127.0.0.1:9/c.jpg"], pa.large_string()),
                               "caption": pa.array(["c"]).dictionary_encode()})
    _parquet(d / "c.parquet", {"url": pa.array([b"http://127.0.0.1:9/d.jpg"], pa.binary()),
                               "caption": pa.array([None], pa.null())})
    cfg = InputConfig(path=str(d / "*.parquet"))
    files = ingest.expand_inputs(cfg)
    ingest.preflight(files, cfg)
    rows = [r for s in ingest.plan_splits(files) for r in ingest.read_split(s, cfg)]
    assert [(r["url"], r["caption"]) for r in rows] == [
        (GOOD[0]["url"], GOOD[0]["caption"]), (GOOD[1]["url"], GOOD[1]["caption"]),
        ("http://127.0.0.1:9/c.jpg", "c"), ("http://127.0.0.1:9/d.jpg", None)]
    assert all(r["reject_reasons"] == [] for r in rows)


def test_json_lines_with_wrong_types_become_rejected_rows(tmp_path):
    """In jsonl, every line has its own types: a wrong one is that row's problem, never the file's."""
    p = tmp_path / "pairs.jsonl"
    lines = [{"url": GOOD[0]["url"], "caption": "fine"}, {"url": 12345, "caption": "number url"},
             {"url": {"href": "http://x/1.jpg"}, "caption": "object url"}, {"url": ["http://x/2.jpg"]},
             {"url": "http://127.0.0.1:9/c.jpg", "caption": {"en": "object caption"}},
             {"url": "http://127.0.0.1:9/d.jpg", "caption": True}, {"url": GOOD[1]["url"], "caption": 42}]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = InputConfig(path=str(p))
    files = ingest.expand_inputs(cfg)
    ingest.preflight(files, cfg)  # the first line being fine or not makes no difference to the file
    rows = [r for s in ingest.plan_splits(files) for r in ingest.read_split(s, cfg)]
    assert len(rows) == len(lines)
    assert [bool(r["reject_reasons"]) for r in rows] == [False, True, True, True, True, True, False]
    for row, (line_no, words) in zip(rows[1:6], [(2, "is a number, 12345"), (3, 'is an object, {"href"'),
                                                 (4, "is an array"), (5, "caption ('caption') is an object"),
                                                 (6, "caption ('caption') is a boolean")]):
        assert row["reject_reasons"] == ["invalid_input"] and row["url"] is None
        assert row["error"].startswith(f"line {line_no}: ") and words in row["error"], row["error"]
    assert rows[6]["caption"] == "42"
    assert len({r["key"] for r in rows}) == len(rows)
    # the same file with the wrong lines first, after a line that is no JSON at all, is no file-level problem
    # either: the first JSON object tells the columns
    p.write_text("{broken\n" + "".join(json.dumps(x) + "\n" for x in lines[1:] + lines[:1]))
    files = ingest.expand_inputs(cfg)
    assert ingest.preflight(files, cfg) == {str(p): ["url", "caption"]}
    rows = [r for s in ingest.plan_splits(files) for r in ingest.read_split(s, cfg)]
    assert len(rows) == len(lines) + 1 and "line 1: not JSON" in rows[0]["error"]
    assert [bool(r["reject_reasons"]) for r in rows] == [True, True, True, True, True, True, False, False]


# ------------------------------------------------------------------ the real command
def _recipe(tmp_path: Path, inp: str, out: Path, extra: str = "") -> Path:
    r = tmp_path / "r.yaml"
    r.write_text(f"pipeline: curate\ninput: {{path: '{inp}'{extra}}}\noutput: {{path: '{out}', rows_per_shard: 25}}\n"
                 "download: {timeout: 1.0, max_seconds: 5, allow_private_networks: true}\n"
                 "filters: {min_width: 64, min_height: 64, max_aspect_ratio: 3.0, caption_min_words: 1}\n"
                 "runner: {direct_num_workers: 1}\n")
    return r


@pytest.mark.parametrize("case", [case_url_int64, case_truncated_footer, _empty("jsonl"), case_mixed_one_lacks_caption],
                         ids=["url_int64", "truncated_footer", "empty_jsonl", "mixed_one_lacks_caption"])
def test_cli_file_problem_is_one_message_no_traceback(case, tmp_path):
    pattern, overrides, bad_name, words = case(tmp_path / "in")
    extra = "".join(f", {k}: {json.dumps(v)}" for k, v in overrides.items())
    out = tmp_path / "out"
    res = unicurate("run", str(_recipe(tmp_path, str(tmp_path / "in" / pattern), out, extra)), cwd=tmp_path)
    assert res.returncode == 2, (res.returncode, res.stderr)
    err = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and str(tmp_path / "in" / bad_name) in err[0], res.stderr
    assert all(w in err[0] for w in words), res.stderr
    assert "Traceback" not in res.stderr and "curate:" not in res.stdout  # stopped before the pipeline was built
    assert not out.exists()


def test_cli_row_problems_are_rejected_rows(web, tmp_path):
    """Good and bad JSON lines through a real run: the bad ones end as invalid_input rows, nothing lost."""
    good = [r for r in web.rows() if r["expected"] == "kept"][:3]
    lines = [json.dumps({"url": g["url"], "caption": g["caption"]}) for g in good]
    lines[1:1] = ['{"url": 404, "caption": "a number"}', '{"url": {"u": 1}, "caption": "an object"}',
                  '{"url": "' + good[0]["url"] + '?x", "caption": ["not", "text"]}', "{not json", "[1, 2]"]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    res = unicurate("run", str(_recipe(tmp_path, str(tmp_path / "in.jsonl"), out)), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert unicurate("validate", str(out), cwd=tmp_path).returncode == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"] == {"inputs": len(lines), "kept": len(good), "rejected": len(lines) - len(good)}
    rej = output_frame(out, ("rejected",)).sort("input_row")
    assert rej["input_row"].to_list() == [1, 2, 3, 4, 5]
    assert all(r == ["invalid_input"] for r in rej["reject_reasons"].to_list())
    errors = rej["error"].to_list()
    assert "line 2: the url ('url') is a number, 404" in errors[0]
    assert "line 3: the url ('url') is an object" in errors[1]
    assert "line 4: the caption ('caption') is an array" in errors[2]
    assert "line 5: not JSON" in errors[3] and "line 6: not a JSON object" in errors[4]
    kept = output_frame(out, ("kept",))
    assert sorted(kept["url"].to_list()) == sorted(g["url"] for g in good)


def _corrupt_first_row_group(path: Path) -> int:
    """Flip bytes inside the url column's compressed data of row group 0 (the footer stays valid)."""
    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(0).column(0)
    start = col.data_page_offset
    data = bytearray(path.read_bytes())
    for i in range(start + col.total_compressed_size // 3, start + col.total_compressed_size - 4):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return meta.row_group(0).num_rows


def test_corrupt_row_group_becomes_rejected_rows_not_a_crash(tmp_path, make_recipe):
    """A parquet whose footer reads fine but whose data is corrupt passes the preflight (it reads footers only);
    each row it cannot read still ends as one rejected row naming the file, and the other row groups are read."""
    p = tmp_path / "in" / "half.parquet"
    p.parent.mkdir()
    urls = [f"http://127.0.0.1:9/{i}.jpg" for i in range(40)]
    pq.write_table(pa.table({"url": urls, "caption": [f"caption number {i}" for i in range(40)]}), p,
                   row_group_size=20, compression="zstd", use_dictionary=False)
    lost = _corrupt_first_row_group(p)
    with pytest.raises(Exception):
        pq.read_table(p)  # really unreadable
    out = tmp_path / "out"
    manifest = run_curate(make_recipe(p, out), say=lambda _m: None)
    assert manifest["counts"]["inputs"] == 40 and manifest["counts"]["rejected"] == 40
    assert validate(str(out)).ok
    rej = output_frame(out, ("rejected",)).sort("input_row")
    assert rej["input_row"].to_list() == list(range(40))
    bad = rej.filter(pl.col("input_row") < lost)
    assert all(r == ["invalid_input"] for r in bad["reject_reasons"].to_list())
    assert all(f"row group 0 of {p} is unreadable" in e for e in bad["error"].to_list())
    good = rej.filter(pl.col("input_row") >= lost)  # read fine; rejected only because port 9 refuses
    assert good["url"].to_list() == urls[lost:] and "invalid_input" not in good["reject_reasons"].explode()
