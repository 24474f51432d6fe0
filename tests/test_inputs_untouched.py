"""Inputs are read-only: no command writes, truncates, renames or adds a file in what it reads.

Every command runs in-process (``cli.main``) with its inputs hashed before and after: the URL list, the
recipes (the shipped ones in configs/ too) and, for the commands that read a curated folder, every file
under that folder. Any changed, removed or new file fails the test with its path. One small curate run
(a few URLs of the session's sample web on 127.0.0.1) is shared by the read-only commands. The one documented
exception: ``report DIR`` without ``--out`` adds ``DIR/report.html`` (and nothing else) to the folder it reads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from unicurate.cli import main

from conftest import SCORED_FILTERS, base_recipe, syn_base_recipe

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
N_URLS = 8


# ------------------------------------------------------------------ the invariant
def snapshot(paths) -> dict[str, tuple]:
    """Every file (sha256, size, mtime) and folder under ``paths``."""
    out: dict[str, tuple] = {}
    for root in map(Path, paths):
        for p in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            if p.is_dir():
                out[str(p)] = ("folder",)
            else:
                st = p.stat()
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


def touched(before: dict, after: dict) -> list[str]:
    """What changed between two snapshots, one line per path."""
    return ([f"changed: {p}" for p in before if p in after and after[p] != before[p]]
            + [f"removed: {p}" for p in before if p not in after]
            + [f"new: {p}" for p in after if p not in before])


def run_cli(paths, *argv) -> tuple[int, list[str]]:
    """``unicurate ARGV`` (exit code) and what it did to ``paths``."""
    before = snapshot(paths)
    code = main([str(a) for a in argv])
    return code, touched(before, snapshot(paths))


# ------------------------------------------------------------------ the inputs and one curated run
@pytest.fixture(scope="module")
def ctx(web, tmp_path_factory):
    base = tmp_path_factory.mktemp("untouched")
    inputs = base / "inputs"
    inputs.mkdir()
    rows = web.rows()
    mine = rows[: N_URLS - 1] + [r for r in rows if r["url"].endswith("/special/missing.jpg")]  # one 404
    urls = inputs / "my_urls.parquet"
    pq.write_table(pa.Table.from_pylist(mine), urls)
    recipe = inputs / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(base_recipe(urls, base / "placeholder", filters=SCORED_FILTERS,
                                                 output={"keep_rejected_images": True})))
    synth = inputs / "synthesize.yaml"
    synth.write_text(yaml.safe_dump(syn_base_recipe(base / "placeholder", base / "placeholder-syn",
                                                    input={"max_images": 2})))
    quick = inputs / "quickstart.yaml"  # the shipped demo recipe, as a user copies it
    shutil.copyfile(CONFIGS / "quickstart.yaml", quick)
    c = SimpleNamespace(base=base, inputs=inputs, urls=urls, mine=mine, recipe=recipe, synth=synth, quick=quick,
                        curated=base / "curated")
    code, c.run_touched = run_cli([inputs, CONFIGS], "run", recipe, "--output", c.curated)
    assert code == 0
    return c


def test_run_leaves_its_inputs_untouched(ctx):
    assert ctx.run_touched == []
    m = json.loads((ctx.curated / "manifest.json").read_text())
    assert m["counts"]["inputs"] == N_URLS


def test_quickstart_with_input_curates_my_urls_and_leaves_them_untouched(ctx, capsys):
    """Issue 16: `run configs/quickstart.yaml --input my_urls.parquet --output out` wrote the sample web's
    74 URLs over my_urls.parquet and curated the demo web."""
    out = ctx.base / "quick-out"
    code, diff = run_cli([ctx.inputs, CONFIGS], "run", ctx.quick, "--input", ctx.urls, "--output", out)
    assert code == 0 and diff == []
    said = capsys.readouterr().out
    assert f"sample_web ignored: --input given, curating {ctx.urls}" in said and "sample web:" not in said
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["inputs"] == len(ctx.mine) == pq.read_metadata(ctx.urls).num_rows
    assert m["recipe"]["sample_web"] is None
    got = {u for sub in ("kept", "rejected") for f in (out / sub).glob("*.parquet")
           for u in pq.read_table(f, columns=["url"])["url"].to_pylist()}
    assert got == {r["url"] for r in ctx.mine}
    assert not (out / "input").exists()  # no sample web url list either


def test_sample_web_recipe_naming_an_input_path_is_refused(ctx, capsys):
    """The old quickstart shape (sample_web + input.path) must never write the url list over input.path."""
    data = yaml.safe_load(ctx.quick.read_text())
    data["input"]["path"] = str(ctx.urls)
    old = ctx.base / "old-quickstart.yaml"
    old.write_text(yaml.safe_dump(data))
    out = ctx.base / "old-out"
    code, diff = run_cli([ctx.inputs, CONFIGS, old], "run", old, "--output", out)
    assert code == 2 and diff == []
    assert "sample_web writes its url list to" in capsys.readouterr().err
    assert not out.exists()


def test_sample_web_needs_a_local_output(ctx, capsys):
    code, diff = run_cli([ctx.inputs, CONFIGS], "run", ctx.quick, "--output", "gs://my-bucket/out")
    assert code == 2 and diff == []
    assert "output.path must be a local folder" in capsys.readouterr().err


def test_sample_web_on_dataflow_is_refused(ctx, capsys):
    from unicurate.run.options import _has_dataflow

    if not _has_dataflow():
        pytest.skip("needs apache-beam[gcp]")
    out = ctx.base / "df-out"
    code, diff = run_cli([ctx.inputs, CONFIGS], "run", ctx.quick, "--output", out, "--", "--runner=DataflowRunner",
                         "--project=p", "--region=us-central1", "--temp_location=gs://b/tmp",
                         "--sdk_container_image=example.com/img:1")
    assert code == 2 and diff == []
    assert "sample_web serves a demo web on this machine" in capsys.readouterr().err
    assert not out.exists()


def test_dry_runs_write_only_the_job_file(ctx, capsys):
    watched = [ctx.inputs, CONFIGS]
    # a plain recipe
    out = ctx.base / "dry-out"
    code, diff = run_cli(watched, "run", ctx.recipe, "--output", out, "--dry-run")
    assert code == 0 and diff == [] and not out.exists()
    assert (ctx.base / "dry-out.job.json").is_file()
    # a sample-web recipe: no url list is written anywhere (it is built from a temporary one, removed)
    out = ctx.base / "dry-quick"
    code, diff = run_cli(watched, "run", ctx.quick, "--output", out, "--dry-run")
    said = capsys.readouterr().out
    assert code == 0 and diff == [] and not out.exists()
    tmp = [w for w in said.split() if w.endswith("urls.parquet") and "unicurate-dry-run-" in w]
    assert tmp and not Path(tmp[0]).exists()
    desc = json.loads((ctx.base / "dry-quick.job.json").read_text())
    assert desc["recipe"]["input"]["path"] == str(out / "input" / "urls.parquet")
    # --set input.path turns the sample web off too
    out = ctx.base / "dry-set"
    code, diff = run_cli(watched, "run", ctx.quick, "--set", f"input.path={ctx.urls}", "--output", out, "--dry-run")
    assert code == 0 and diff == [] and not out.exists()
    assert f"sample_web ignored: --set input.path given, curating {ctx.urls}" in capsys.readouterr().out
    desc = json.loads((ctx.base / "dry-set.job.json").read_text())
    assert desc["recipe"]["sample_web"] is None and desc["recipe"]["input"]["path"] == str(ctx.urls)
    assert sorted(p.name for p in ctx.base.iterdir() if p.name.startswith("dry-")) == [
        "dry-out.job.json", "dry-quick.job.json", "dry-set.job.json"]


def test_demo_leaves_its_recipe_untouched(ctx):
    out = ctx.base / "demo"
    code, diff = run_cli([ctx.inputs, CONFIGS], "demo", "--no-synthesis", "--output", out)
    assert code == 0 and diff == []
    assert (out / "input" / "urls.parquet").is_file() and (out / "manifest.json").is_file()  # the same layout


def _read_only(c):
    from unicurate.manifests import stats as st

    clip = st.stats(str(c.curated))["scores"]["all"]["clip_score"]["p50"]
    out = c.curated
    return {
        "validate": ["validate", out],
        "stats": ["stats", out],
        "stats-json": ["stats", out, "--json"],
        "report": ["report", out, "--out", c.base / "report.html"],
        "whatif": ["whatif", out, "--set", f"clip_score>={clip}"],
        "whatif-apply": ["whatif", out, "--set", f"clip_score>={clip}", "--apply", c.base / "whatif-applied"],
        "export-webdataset": ["export", out, "--format", "webdataset", "--to", c.base / "x-wds"],
        "export-mds": ["export", out, "--format", "mds", "--to", c.base / "x-mds"],
        "export-hf": ["export", out, "--format", "hf", "--to", c.base / "x-hf"],
        "models-list": ["models", "list", "--recipe", c.recipe],
        "models-list-tiny": ["models", "list", "--profile", "tiny"],
        "synthesize": ["run", c.synth, "--input", out, "--output", c.base / "synthesized"],
    }


@pytest.mark.parametrize("name", ["validate", "stats", "stats-json", "report", "whatif", "whatif-apply",
                                  "export-webdataset", "export-mds", "export-hf", "models-list",
                                  "models-list-tiny", "synthesize"])
def test_commands_on_a_curated_folder_leave_it_untouched(ctx, name):
    argv = _read_only(ctx)[name]
    code, diff = run_cli([ctx.inputs, CONFIGS, ctx.curated], *argv)
    assert code == 0, argv
    assert diff == [], f"{name} touched its inputs: {diff}"


def test_report_without_out_adds_only_its_report_html(ctx, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(ctx.curated, folder)
    code, diff = run_cli([ctx.inputs, CONFIGS, folder], "report", folder)
    assert code == 0 and diff == [f"new: {folder / 'report.html'}"], diff
