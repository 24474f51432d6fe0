"""The HTML report, rendered by a real headless Chromium: it draws, has the expected elements, escapes captions."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import rewrite_shard
from unicurate.manifests import stats as st
from unicurate.manifests.report import write_report

HOSTILE = '<script>document.title="pwned";document.body.innerHTML=""</script><img src=x onerror="alert(1)">'


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("headless Chromium is required in CI (.ci/run installs the Debian package 'chromium')")
    pytest.skip("no chromium on this machine: apt-get install chromium (CI installs it)")


def render(html: Path, tmp: Path) -> tuple[str, "object"]:
    """(DOM after scripts ran, screenshot as a PIL image) from headless Chromium."""
    from PIL import Image

    exe = chromium()
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,3000"]
    url = html.resolve().as_uri()
    dom = subprocess.run(flags + ["--virtual-time-budget=3000", "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp / "shot.png"
    res = subprocess.run(flags + [f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    return dom.stdout, Image.open(shot).convert("RGB")


def count(dom: str, pattern: str) -> int:
    return len(re.findall(pattern, dom))


def assert_drawn(img) -> None:
    import numpy as np

    a = np.asarray(img)
    assert a.shape[0] >= 3000 and a.std() > 20, "blank screenshot"
    colours = np.unique(a[::4, ::4].reshape(-1, 3), axis=0)
    assert len(colours) > 500, f"only {len(colours)} colours: the thumbnails/plots did not render"
    top = a[:40].reshape(-1, 3).mean(axis=0)  # the red uncalibrated banner is the first thing on the page
    assert top[0] > 120 and top[1] < 80 and top[2] < 80, top


def test_curated_report_renders_in_chromium(scored, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(scored[0], out)
    kept0 = sorted(p.name for p in (out / "kept").glob("part-*.parquet"))[0]
    rewrite_shard(out, f"kept/{kept0}", lambda rows: [dict(rows[0], caption=HOSTILE)] + rows[1:])
    s = st.stats(str(out))
    path = write_report(str(out))
    assert path == out / "report.html"
    html = path.read_text()
    assert "<script" not in html.lower().replace("&lt;script", "")  # self-contained, and no script of ours
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched: images and plots are inline
    dom, shot = render(path, tmp_path)
    assert "<title>unicurate report" in dom and "pwned" not in dom.split("</title>")[0]
    assert "&lt;script&gt;document.title" in dom  # the caption shows as text
    assert 'id="uncalibrated-banner"' in dom and "UNCALIBRATED MODELS" in dom
    assert count(dom, r'<figure class="tile kept"') == min(24, s["kept"])
    assert count(dom, r'<section class="reason"') == len(s["reasons"])
    assert count(dom, r'<img class="plot hist"') == len([c for c in s["scores"]["all"] if c != "text_boxes"])
    assert count(dom, r'id="funnel-chart"') == 1
    for r in s["reasons"]:  # every reason's section shows up to 6 examples, each tagged with that reason
        block = dom.split(f'data-reason="{r["reason"]}"')[1].split("</section>")[0]
        assert count(block, r'<figure class="tile rejected"') == min(6, r["rows"])
    # rejected by a model filter: images were kept in the shards, so thumbnails show (not placeholders)
    model_block = dom.split('data-reason="low_clip_score"')[1].split("</section>")[0]
    assert count(model_block, r'<img src="data:image/jpeg') >= 1
    assert_drawn(shot)


def test_synthesis_report_renders_in_chromium(synthesized, tmp_path):
    out, manifest = synthesized
    path = write_report(str(out), str(tmp_path / "syn.html"))
    dom, shot = render(path, tmp_path)
    s = st.stats(str(out))
    assert 'data-kind="synthesis"' in dom and 'id="uncalibrated-banner"' in dom
    types = [e for e in s["edits"] if e["written"]]
    assert count(dom, r'<section class="edit-type"') == len(types)
    assert count(dom, r'<figure class="tile triplet"') == sum(min(4, e["written"]) for e in types)
    assert count(dom, r'<figure class="tile subject-pair"') == min(12, s["subjects"])
    assert count(dom, r'class="instruction"') == count(dom, r'<figure class="tile triplet"') + min(12, s["subjects"])
    assert count(dom, r'<img class="plot') >= 3
    assert_drawn(shot)


def test_report_cli(scored, tmp_path):
    from unicurate.cli import main

    assert main(["report", str(scored[0]), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 10_000
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
