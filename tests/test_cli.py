"""The unicurate command as a user runs it (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import unicurate

ROOT = Path(__file__).resolve().parents[1]


def test_entry_point_keeps_exit_code_and_python_cleanup(tmp_path):
    """The process entry skips native teardown (apache/arrow#34314) but keeps the exit code, atexit
    handlers (temp dirs, logging) and non-daemon threads."""
    code = ("import atexit, sys, threading, time\n"
            "from unicurate import cli\n"
            "atexit.register(lambda: print('atexit ran', flush=True))\n"
            "threading.Thread(target=lambda: (time.sleep(0.3), print('thread finished', flush=True))).start()\n"
            "sys.argv = ['unicurate', 'validate', sys.argv[1]]\n"
            "cli.main()\n"
            "print('not reached')\n")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1, res.stderr
    assert res.stdout.splitlines() == ["thread finished", "atexit ran"]
    assert "manifest.json not found" in res.stderr


def test_malformed_recipe_fails_before_work_naming_field(tmp_path):
    r = tmp_path / "bad.yaml"
    r.write_text("pipeline: curate\ninput: {path: x.parquet}\noutput: {path: out}\nresize: {resize_mode: stretch}\n")
    res = unicurate("run", str(r), cwd=tmp_path)
    assert res.returncode == 2
    assert "resize.resize_mode" in res.stderr and "keep_ratio" in res.stderr
    assert not (tmp_path / "out").exists()


def test_missing_input_column_is_one_clear_error(tmp_path):
    (tmp_path / "in.csv").write_text("href,caption\nhttp://127.0.0.1/a.jpg,hi\n")
    r = tmp_path / "r.yaml"
    r.write_text("pipeline: curate\ninput: {path: in.csv}\noutput: {path: out}\n")
    res = unicurate("run", str(r), cwd=tmp_path)
    assert res.returncode == 2
    assert "in.csv: no url column 'url'" in res.stderr and "Traceback" not in res.stderr


def test_unknown_beam_option_is_refused(tmp_path):
    (tmp_path / "in.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    r = tmp_path / "r.yaml"
    r.write_text("pipeline: curate\ninput: {path: in.txt, caption_col: null}\noutput: {path: out}\n")
    res = unicurate("run", str(r), "--", "--direct_num_wrkers", "2", cwd=tmp_path)
    assert res.returncode == 2 and "direct_num_wrkers" in res.stderr


def test_run_with_overrides_prints_funnel_and_validates(web_input, tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text(
        "pipeline: curate\ninput: {path: placeholder.parquet}\noutput: {path: placeholder}\n"
        "download: {timeout: 1.0, allow_private_networks: true}\n"
        "filters: {min_width: 64, min_height: 64, max_aspect_ratio: 3, caption_min_words: 1}\n"
    )
    out = tmp_path / "out"
    res = unicurate("run", str(r), "--input", str(web_input), "--output", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "kept (after dedup)" in res.stdout and "reject reasons" in res.stdout
    assert "[unicurate] worker" in res.stderr  # progress while it runs
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    assert f"kept {c['kept']} + rejected {c['rejected']} = {c['inputs']}" in res.stdout
    ok = unicurate("validate", str(out))
    assert ok.returncode == 0 and ok.stdout.startswith("OK")
    next(out.glob("kept/part-*.parquet")).unlink()
    bad = unicurate("validate", str(out))
    assert bad.returncode == 1 and "missing" in bad.stderr


def test_demo_and_quickstart_multiprocessing(tmp_path):
    """The README's quickstart: the demo, then the same recipe on two worker processes. The demo, an export, the
    what-if and the second run are commands in their own processes; the audit commands run in this one."""
    res = unicurate("demo", "--output", str(tmp_path / "demo"), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "every broken case was rejected with its expected reason" in res.stdout
    for reason in ("http_error", "timeout", "not_an_image", "decode_error", "duplicate", "too_small",
                   "aspect_ratio", "robots_disallowed", "empty_response", "duplicate_url", "caption_too_short"):
        assert f"  {reason} " in res.stdout, reason
    # every model filter ran and the funnel shows its reject count; tiny scores are flagged
    assert "WARNING: UNCALIBRATED scores" in res.stdout
    block = res.stdout.split("model filters (rows rejected by each")[1].split("kept ")[0]
    for name in ("clip_score", "aesthetic", "nsfw", "watermark", "text_coverage", "language"):
        assert f"  {name} " in block, name
    assert "once per worker process" in block
    assert cli("validate", str(tmp_path / "demo"))[0] == 0
    # step 2: synthesis on the demo's own kept images, every edit type written, outputs valid
    syn = tmp_path / "demo" / "synthesis"
    sm = json.loads((syn / "manifest.json").read_text())
    assert sm["kind"] == "synthesis" and sm["uncalibrated"] is True
    assert sm["counts"]["inputs"] == d_kept(tmp_path / "demo") == sm["counts"]["images"]
    assert sm["funnel"]["subjects"] > 0 and sm["counts"]["subject"] == sm["funnel"]["subjects"]
    for etype in ("remove", "add", "recolor", "move", "resize", "background", "replace"):
        assert sm["funnel"]["edits"].get(etype, {}).get("written", 0) > 0, etype
        assert f"\n{etype} " in res.stdout, etype
    assert "WARNING: UNCALIBRATED models: grounding_dino" in res.stdout
    code, said = cli("validate", str(syn))
    assert code == 0 and "one images/ row per input image" in said

    # audit and export the demo's output with the commands the demo prints
    demo = tmp_path / "demo"
    d = json.loads((demo / "manifest.json").read_text())
    code, said = cli("stats", str(demo), "--json")
    assert code == 0, said
    s = json.loads(said)
    assert (s["rows"], s["kept"]) == (d["counts"]["inputs"], d["counts"]["kept"])
    assert json.loads(cli("stats", str(syn), "--json")[1])["subjects"] == sm["counts"]["subject"]
    for target in (demo, syn):
        code, said = cli("report", str(target))
        assert code == 0 and (target / "report.html").stat().st_size > 50_000, said
    # the export command the demo prints, then every format (in process: the command is the same function), read
    # back where a trainer's reader is at hand: OpenCLIP's dataset size, the embeddings the demo writes
    from open_clip_train.data import get_dataset_size

    from unicurate.manifests.export import FORMATS, export

    ex = unicurate("export", str(demo), "--format", "webdataset", "--to", str(tmp_path / "x-wds"), "--kept-only",
                   "--max-count", "16", "--embeddings")
    assert ex.returncode == 0, ex.stderr
    tars = sorted(str(t) for t in (tmp_path / "x-wds" / "train").glob("*.tar"))
    assert len(tars) > 1 and get_dataset_size("::".join(tars)) == (d["counts"]["kept"], len(tars))
    emb_keys = [k for f in sorted((tmp_path / "x-wds" / "embeddings" / "train" / "metadata").glob("*.parquet"))
                for k in pq.read_table(f).column("key").to_pylist()]
    assert emb_keys == [k for f in sorted((demo / "kept").glob("*.parquet"))
                        for k in pq.read_table(f).column("key").to_pylist()]
    for target, name in ((demo, "curated"), (syn, "synthesis")):
        want = ({"train": d["counts"]["kept"], "rejected": d["counts"]["rejected"]} if name == "curated"
                else {"edit": sm["counts"]["edit"], "subject": sm["counts"]["subject"]})
        for fmt in (f for f in FORMATS.values() if name in f.kinds):
            for layout in fmt.layouts if name == "curated" else fmt.layouts[:1]:
                em = export(str(target), fmt.name, str(tmp_path / f"x-{name}-{fmt.name}-{layout}"), layout=layout)
                assert em["counts"] == want and em["files"], (fmt.name, name, layout)

    # what-if on the demo == a fresh run of the quickstart with those thresholds (here on two worker processes)
    clip_t = s["scores"]["all"]["clip_score"]["p50"]
    aes_t = s["scores"]["kept"]["aesthetic_score"]["p25"]
    wi = unicurate("whatif", str(demo), "--set", f"clip_score>={clip_t}", "--set", f"aesthetic_score>={aes_t}",
                   "--json")
    assert wi.returncode == 0, wi.stderr
    w = json.loads(wi.stdout)
    assert w["before"]["kept"] == d["counts"]["kept"] and w["after"]["kept"] < d["counts"]["kept"]
    res = unicurate("run", str(ROOT / "configs" / "quickstart.yaml"),
                    "--set", f"filters.clip_score.min_score={clip_t}", "--set", "filters.clip_score.keep_top_fraction=null",
                    "--set", f"filters.aesthetic.min_score={aes_t}", "--",
                    "--direct_num_workers", "2", "--direct_running_mode", "multi_processing",
                    cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "FnApiRunner (multi_processing, 2 workers)" in res.stdout
    assert cli("validate", str(tmp_path / "unicurate-demo"))[0] == 0
    m = json.loads((tmp_path / "unicurate-demo" / "manifest.json").read_text())
    assert m["engine"] == "FnApiRunner (multi_processing, 2 workers)"
    assert m["recipe"]["filters"]["clip_score"]["min_score"] == clip_t
    assert m["counts"]["kept"] == w["after"]["kept"]
    assert m["funnel"]["reasons"] == {r["reason"]: r["rows"] for r in w["after"]["reasons"]}
    assert m["counts"]["inputs"] == d["counts"]["inputs"]


def cli(*args: str) -> tuple[int, str]:
    """``unicurate ARGS`` in this process (the same command code, without a process start): exit code, stdout."""
    import contextlib
    import io

    from unicurate.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def d_kept(out) -> int:
    return json.loads((out / "manifest.json").read_text())["counts"]["kept"]


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["--version"]])
def test_help(args):
    res = unicurate(*args)
    assert res.returncode == 0 and "unicurate" in res.stdout


def test_failed_pipeline_is_one_clear_message(web_input, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept").write_text("a file where the kept/ folder should be")
    r = tmp_path / "r.yaml"
    r.write_text(f"pipeline: curate\ninput: {{path: {web_input}}}\noutput: {{path: {out}}}\n"
                 "download: {timeout: 1.0, allow_private_networks: true}\nrunner: {direct_num_workers: 1}\n")
    res = unicurate("run", str(r), cwd=tmp_path)
    assert res.returncode == 1
    assert "the pipeline failed" in res.stderr and "marked unfinished" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_bundled_recipe_is_found_by_name_where_no_such_file_exists(tmp_path, monkeypatch):
    """An installed wheel has no configs/: `unicurate run quickstart.yaml` (or configs/laion-style.yaml) reads the
    recipe bundled in the package; a file of that name in the working directory wins; other names are left to
    load_recipe's "not found"."""
    from unicurate.cli import default_recipe, recipe_path

    monkeypatch.chdir(tmp_path)
    said = []
    assert recipe_path("quickstart.yaml", said.append) == str(default_recipe("quickstart.yaml"))
    assert recipe_path("configs/laion-style.yaml") == str(default_recipe("laion-style.yaml"))
    assert said and "bundled" in said[0]
    (tmp_path / "quickstart.yaml").write_text("pipeline: curate\n")
    assert recipe_path("quickstart.yaml") == "quickstart.yaml"
    assert recipe_path("mine.yaml") == "mine.yaml"
