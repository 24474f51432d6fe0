"""Fault injection: a model that fails on one element, a killed run then rerun, a damaged output folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import base_recipe, first_shard, output_frame, unicurate
from unicurate.config import parse_recipe
from unicurate.filters.scoring import ModelScorer
from unicurate.filters.watermark import WatermarkFilter
from unicurate.manifests import manifest as mf
from unicurate.manifests.validate import validate
from unicurate.run.execute import run_curate


# ------------------------------------------------------------------ a. a model that fails on one element
@pytest.fixture(scope="module")
def good_input(web, tmp_path_factory) -> Path:
    """Ten sample-web images that pass every rule filter (so all ten reach the model stage)."""
    rows = [r for r in web.rows() if r["expected"] == "kept"][:10]
    path = tmp_path_factory.mktemp("faults-in") / "good.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _model_run(inp, out, batch_size):
    recipe = parse_recipe(base_recipe(inp, out, filters={"watermark": {}},  # record-only: every scored row is kept
                                      models={"profile": "tiny", "batch_size": batch_size}))
    return run_curate(recipe, say=lambda _m: None)


@pytest.fixture(scope="module")
def reference_scores(good_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults-ref")
    _model_run(good_input, out, 4)
    df = output_frame(out)
    assert df["watermark_score"].null_count() == 0 and df.height == 10
    return dict(zip(df["key"].to_list(), df["watermark_score"].to_list()))


def _poison(monkeypatch, caption: str | None):
    """The watermark model raises on any batch holding ``caption`` (None: on every batch)."""
    original = WatermarkFilter.score
    calls = []

    def score(self, batch):
        calls.append(len(batch))
        if caption is None or any(item.get("caption") == caption for item in batch):
            raise RuntimeError(f"injected fault: cannot score {caption or 'anything'}")
        return original(self, batch)

    monkeypatch.setattr(WatermarkFilter, "score", score)
    return calls


@pytest.mark.parametrize("batch_size", [4, 1], ids=["in_a_batch_of_4", "alone_in_its_batch"])
def test_one_failing_element_is_one_score_error(batch_size, good_input, reference_scores,
                                                monkeypatch, tmp_path):
    """The failing element ends as a rejected row (score_error, the exception text in `error`); every other
    element of its batch is scored as in a clean run; nothing is lost. Batch size 1 makes the element the whole
    batch: the scorer cannot isolate it by retrying, so the model is probed to tell a bad row from a bad model."""
    target = pq.read_table(good_input).to_pylist()[2]["caption"]
    calls = _poison(monkeypatch, target)
    out = tmp_path / "out"
    manifest = _model_run(good_input, out, batch_size)
    assert calls and (max(calls) > 1) == (batch_size > 1)
    assert validate(str(out)).ok
    assert manifest["counts"] == {"inputs": 10, "kept": 9, "rejected": 1}
    assert manifest["funnel"]["reasons"] == {"score_error": 1}
    assert manifest["_metrics"]["score_errors"] == 1
    df = output_frame(out)
    bad = df.filter(pl.col("caption") == target).row(0, named=True)
    assert bad["status"] == "rejected" and bad["reject_reasons"] == ["score_error"]
    assert f"RuntimeError: injected fault: cannot score {target}" in bad["error"]
    assert bad["watermark_score"] is None
    others = df.filter(pl.col("caption") != target)
    assert others["error"].null_count() == others.height and set(others["status"]) == {"kept"}
    for key, score in zip(others["key"].to_list(), others["watermark_score"].to_list()):
        assert score == pytest.approx(reference_scores[key], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("batch_size", [4, 1], ids=["batches_of_4", "batches_of_1"])
def test_a_model_failing_on_everything_fails_the_run(batch_size, good_input, monkeypatch,
                                                     tmp_path):
    """Not one bad row but a broken model: the probe fails too, so the run stops (no rows silently rejected)."""
    _poison(monkeypatch, None)
    out = tmp_path / "out"
    with pytest.raises(Exception, match="injected fault: cannot score anything"):
        _model_run(good_input, out, batch_size)
    assert not (out / mf.MANIFEST_NAME).exists()


def test_model_load_failure_fails_the_run(good_input, monkeypatch, tmp_path):
    def broken(self, *a, **k):
        raise RuntimeError("injected fault: the weights file is corrupt")

    monkeypatch.setattr(ModelScorer, "__init__", broken)
    out = tmp_path / "out"
    with pytest.raises(Exception, match="the weights file is corrupt"):
        _model_run(good_input, out, 4)
    assert not (out / mf.MANIFEST_NAME).exists()


# ------------------------------------------------------------------ b. kill a run, then rerun it
class Run:
    """``unicurate run`` as a subprocess in its own process group, its stderr read as it comes."""

    def __init__(self, recipe: Path, cwd: Path, trace: bool = True):
        import threading

        env = dict(os.environ, PYTHONUNBUFFERED="1", UNICURATE_TRACE="1" if trace else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "unicurate.cli", "run", str(recipe)], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.err: list[str] = []
        self.out: list[str] = []
        self._readers = [threading.Thread(target=lambda s=s, b=b: b.extend(s), daemon=True)
                         for s, b in ((self.proc.stderr, self.err), (self.proc.stdout, self.out))]
        for t in self._readers:
            t.start()

    def wait_for_stage(self, stage: str, timeout: float = 120) -> int:
        """Wait until a worker starts a bundle of ``stage`` (UNICURATE_TRACE lines); that worker's pid."""
        import re

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # workers write to the same pipe: a line may hold the end of another's, so search the whole text
            found = re.search(rf"TRACE {stage} [0-9.]+ pid=([0-9]+)\n", "".join(list(self.err)))
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended before {stage!r} started:\n{''.join(self.err)[-3000:]}")
            time.sleep(0.05)
        self.kill_group()
        pytest.fail(f"no {stage!r} stage within {timeout}s")

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            self.proc.wait()
            pytest.fail(f"the driver hung (still running {timeout}s later):\n{''.join(self.err)[-3000:]}")
        for t in self._readers:
            t.join(timeout=10)
        return code, "".join(self.out), "".join(self.err)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _workers_of(pid: int) -> list[int]:
    from unicurate.run.watchdog import children, cmdline

    return [w for shell in children(pid) if "sdk_worker_main" in cmdline(shell) for w in children(shell)]


def _kill_a_worker(run: Run, stage: str) -> list[int]:
    """SIGKILL the worker that has just started ``stage``; the run must then fail promptly and clearly."""
    victim = run.wait_for_stage(stage)
    workers = _workers_of(run.proc.pid)
    assert victim in workers, (victim, workers)
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    code, out, err = run.finish()
    assert time.monotonic() - t0 < 30, "the driver took long to notice"
    assert code == 1, (code, err[-3000:])
    assert "error: the pipeline failed: a local Beam worker process died (killed by SIGKILL" in err, err[-3000:]
    assert "marked unfinished" in err and "Traceback" not in err, err[-3000:]
    assert _all_gone(workers), "worker processes outlived their driver"
    return workers


def _all_gone(pids: list[int], timeout: float = 10) -> bool:
    """Whether every pid has ended within ``timeout`` (SIGKILLed processes take a moment to go)."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds Beam's worker processes through /proc (Linux)")
def test_killed_runs_then_rerun_is_complete_and_valid(web, web_input, curated, tmp_path, monkeypatch):
    ref, ref_manifest = curated
    ref_keys = set(output_frame(ref)["key"].to_list())
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"pipeline: curate\ninput: {{path: '{web_input}'}}\noutput: {{path: '{out}', rows_per_shard: 25}}\n"
        "download: {timeout: 2, max_seconds: 5, thread_count: 4, allow_private_networks: true}\n"
        "filters: {min_width: 64, min_height: 64, max_aspect_ratio: 3.0, caption_min_words: 1}\n"
        "runner: {direct_num_workers: 2, direct_running_mode: multi_processing}\n")
    route = web.route

    def slow(path):  # every answer 0.2 s late: the download stage lasts a few seconds
        status, headers, body, delay = route(path)
        return status, headers, body, max(delay, 0.2)

    monkeypatch.setattr(web, "route", slow)

    # 1. a worker killed while downloading
    _kill_a_worker(Run(recipe, tmp_path), "units")
    assert not (out / mf.MANIFEST_NAME).exists()

    # 2. the driver and its workers killed together (kill -9 of the process group) while downloading
    run = Run(recipe, tmp_path)
    run.wait_for_stage("units")
    workers = _workers_of(run.proc.pid)
    run.kill_group()
    assert run.finish()[0] == -signal.SIGKILL
    assert workers and _all_gone(workers)

    # 3. a worker killed as it starts writing shards: some shards are written, others not
    monkeypatch.setattr(web, "route", route)
    _kill_a_worker(Run(recipe, tmp_path), "write")
    assert not (out / mf.MANIFEST_NAME).exists()
    assert any("did not finish" in p for p in validate(str(out)).problems)
    # what a kill in the middle of an atomic write leaves (seen with a worker killed in write_shard)
    leftover = out / "kept" / f".tmp-{'ab' * 16}-part-00001-of-00003.parquet"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"PAR1 half a shard")
    (out / f"manifest.json.tmp-{'cd' * 16}").write_text('{"half": ')

    # the same command again: complete, valid, the reference's keys, each once, nothing left of the killed runs
    code, stdout, err = Run(recipe, tmp_path, trace=False).finish(timeout=240)
    assert code == 0, err[-3000:]
    val = unicurate("validate", str(out))
    assert val.returncode == 0 and val.stdout.startswith("OK"), val.stdout + val.stderr
    df = output_frame(out)
    assert df["key"].n_unique() == df.height == ref_manifest["counts"]["inputs"]
    assert set(df["key"].to_list()) == ref_keys
    m = json.loads((out / mf.MANIFEST_NAME).read_text())
    assert {"kept/" + leftover.name, f"manifest.json.tmp-{'cd' * 16}"} <= set(m["removed_stale_shards"])
    assert not leftover.exists() and not list(out.rglob("*.tmp-*")) and not list(out.rglob(".tmp-*"))
    assert {p.name for p in out.glob("*/*.parquet")} == {s["path"].split("/")[1] for sub in m["shards"].values()
                                                        for s in sub}


# ------------------------------------------------------------------ c. an output folder damaged after its run
def _delete(out):
    p = first_shard(out, "kept")
    p.unlink()
    return p.name, ["listed in the manifest but missing"]


def _flip_a_byte(out):
    p = first_shard(out, "kept")
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    return p.name, ["does not match the manifest", "modified or corrupt"]


def _truncate(out):
    p = first_shard(out, "kept")
    size = p.stat().st_size
    p.write_bytes(p.read_bytes()[: size // 2])
    return p.name, [f"size {size // 2} bytes, manifest says {size}"]


def _edit_manifest(change):
    def damage(out):
        m = json.loads((out / "manifest.json").read_text())
        name, words = change(m)
        (out / "manifest.json").write_text(json.dumps(m, indent=1))
        return name, words
    damage.__name__ = change.__name__
    return damage


def _hand_edited_rows(m):
    e = m["shards"]["kept"][0]
    e["rows"] += 1
    return e["path"].split("/")[1], [f"{e['rows'] - 1} rows, manifest says {e['rows']}"]


def _hand_edited_sha(m):
    e = m["shards"]["rejected"][0]
    e["sha256"] = "0" * 64
    return e["path"].split("/")[1], ["does not match the manifest's 000000000000"]


def _hand_edited_entry(m):
    e = m["shards"]["kept"][0]
    del e["sha256"]
    return e["path"].split("/")[1], ["manifest.json", "sha256 is None, not a sha256 hex digest"]


def _hand_edited_counts(m):
    m["counts"]["inputs"] += 3
    return "manifest.json", [f"rows lost or duplicated: inputs {m['counts']['inputs']}"]


@pytest.mark.parametrize("damage", [_delete, _flip_a_byte, _truncate, *map(_edit_manifest, (
    _hand_edited_rows, _hand_edited_sha, _hand_edited_entry, _hand_edited_counts))], ids=lambda d: d.__name__.strip("_"))
def test_validate_command_names_the_damaged_file(damage, curated, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(curated[0], out)  # valid as it is (test_cli, test_curate_pipeline)
    name, words = damage(out)
    res = unicurate("validate", str(out))
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.startswith(f"INVALID {out}: ") and "Traceback" not in res.stderr, res.stderr
    problems = [line for line in res.stderr.splitlines() if line.startswith("  - ")]
    assert any(name in p and all(w in p for w in words) for p in problems), (name, words, res.stderr)
