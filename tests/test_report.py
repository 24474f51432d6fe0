"""The HTML report, rendered by a real headless Chromium: it draws, has the expected elements, escapes captions."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import first_shard, rewrite_shard, shard_files
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


def run_chromium(html: Path, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    """Headless Chromium (profile folder ``profile``) on the page ``html`` with extra ``flags``."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", *flags, html.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def render(html: Path, tmp: Path) -> tuple[str, "object"]:
    """(DOM after scripts ran, screenshot as a PIL image) from headless Chromium."""
    from PIL import Image

    window = ("--hide-scrollbars", "--window-size=1280,3000")
    dom = run_chromium(html, tmp / "profile", *window, "--virtual-time-budget=3000", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp / "shot.png"
    res = run_chromium(html, tmp / "profile", *window, f"--screenshot={shot}")
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
    # the hostile caption on each kept shard's smallest key: the report samples kept rows by key
    for shard in sorted((out / "kept").glob("part-*.parquet")):
        rewrite_shard(out, f"kept/{shard.name}", lambda rows: [
            dict(r, caption=HOSTILE) if rows and r["key"] == min(x["key"] for x in rows) else r for r in rows])
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


# ------------------------------------------------------------------ hostile data is shown as text, never run
XSS_SCRIPT = "<script>document.title='pwned';document.body.setAttribute('data-pwned','1')</script>"
XSS_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">"
XSS_BREAKOUT = ("</textarea></title></style></figcaption>\"'><svg onload=\"document.body.setAttribute("
                "'data-pwned','3')\">")
# sorts before the hex keys, so its row is among the sampled kept tiles
XSS_KEY = "\"'><img src=x onerror=\"document.body.setAttribute('data-pwned','4')\">"
XSS_DIR = "run\"'><svg onload=document.body.setAttribute('data-pwned','5')>"  # a folder name: no '/'


class _Dom:
    """Start tags, the title, all text and, per figure's data-key, the figure's text, from Chromium's dumped DOM."""

    def __init__(self, dom: str):
        from html.parser import HTMLParser

        self.tags: list[tuple[str, dict]] = []
        self.title = ""
        self.text = ""
        self.figure_text: dict[str, str] = {}
        stack: list[str] = []  # data-key of the figure we are in ('' when none)
        parent = self

        class P(HTMLParser):
            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                parent.tags.append((tag, a))
                if tag == "title":
                    stack.append("<title>")
                elif tag == "figure":
                    stack.append(a.get("data-key", ""))
                    parent.figure_text.setdefault(stack[-1], "")

            def handle_endtag(self, tag):
                if tag in ("title", "figure") and stack:
                    stack.pop()

            def handle_data(self, data):
                parent.text += data
                if stack and stack[-1] == "<title>":
                    parent.title += data
                elif stack:
                    parent.figure_text[stack[-1]] += data

        P(convert_charrefs=True).feed(dom)


def dump_dom(html: Path, tmp: Path) -> str:
    """The DOM after Chromium ran the page (and any script in it) for a while."""
    res = run_chromium(html, tmp / "profile-dom", "--virtual-time-budget=3000", "--dump-dom")
    assert res.returncode == 0 and "</html>" in res.stdout, res.stderr[-2000:]
    return res.stdout


def test_report_shows_hostile_data_as_text_in_chromium(scored, tmp_path):
    """Captions, errors, keys, the output path and manifest fields full of markup: Chromium runs none of it
    (no data-pwned attribute, the title is the report's, no element that was not ours) and shows it as text."""
    import json

    out = tmp_path / XSS_DIR
    shutil.copytree(scored[0], out)
    caption = f"{XSS_SCRIPT} {XSS_IMG} {XSS_BREAKOUT}"
    kept0 = first_shard(out, "kept").name
    rewrite_shard(out, f"kept/{kept0}", lambda rows: [dict(rows[0], key=XSS_KEY, caption=caption, url=caption,
                                                           metadata=json.dumps({"alt": caption}))] + rows[1:])
    rej_shards = [p.name for p in shard_files(out, ("rejected",))]
    for name in rej_shards:  # every rejected row: sampled tiles of every reason show them
        rewrite_shard(out, f"rejected/{name}",
                      lambda rows: [dict(r, caption=XSS_SCRIPT, error=XSS_IMG, url=XSS_BREAKOUT) for r in rows])
    mpath = out / "manifest.json"
    m = json.loads(mpath.read_text())
    m["recipe"]["name"] = XSS_SCRIPT
    m["created_at"] = XSS_IMG
    m["models"][0].update(title=XSS_BREAKOUT, uri=XSS_SCRIPT)
    mpath.write_text(json.dumps(m))

    path = write_report(str(out))
    page = path.read_text()
    for hostile in (XSS_SCRIPT, XSS_IMG, XSS_BREAKOUT, XSS_KEY, XSS_DIR):
        assert hostile not in page  # the raw markup never reaches the file
    dom = _Dom(dump_dom(path, tmp_path))
    tags = {t for t, _ in dom.tags}
    assert not tags & {"script", "svg", "textarea", "iframe", "object", "embed"}, tags
    for tag, attrs in dom.tags:
        assert "data-pwned" not in attrs, (tag, attrs)
        assert not any(a.startswith("on") for a in attrs), (tag, attrs)  # no event handler attribute anywhere
        if tag == "img":
            assert attrs["src"].startswith("data:image/"), attrs  # no injected <img src=x>
    assert dom.title == f"unicurate report: {XSS_SCRIPT} (curated)"  # shown as text, not run (no 'pwned')
    # the data shows as literal text where it belongs; the key round-trips intact as the tile's data-key
    assert caption in dom.figure_text[XSS_KEY]
    rejected_text = [t for k, t in dom.figure_text.items() if k != XSS_KEY and XSS_SCRIPT in t]
    assert rejected_text and all(XSS_IMG in t for t in rejected_text)  # caption and error of rejected tiles
    alts = [a.get("alt") for t, a in dom.tags if t == "img" and a.get("alt")]
    assert caption in alts  # the kept tile's thumbnail alt text is the caption, intact
    assert XSS_IMG in dom.figure_text[XSS_KEY] and XSS_BREAKOUT in dom.figure_text[XSS_KEY]
    for hostile in (XSS_BREAKOUT, XSS_DIR, XSS_IMG):  # model title and uri, output folder, created_at
        assert hostile in dom.text
    assert dom.text.count(XSS_SCRIPT) >= 3  # title, header, models table, rejected captions


def test_control_characters_are_drawn_and_long_captions_cut():
    from unicurate.manifests.report import CAPTION_CHARS, clip, esc

    assert esc("a\x00b\x07c\x1b[31m\x7f\x85<i>") == "a\u2400b\u2407c\u241b[31m\u2421\\x85&lt;i&gt;"
    assert esc("tab\tand\nnewline") == "tab\tand\nnewline"
    long = "word " * 20_480
    cut = clip(long)
    assert cut.startswith(long[:CAPTION_CHARS]) and cut.endswith("… (102,400 characters)")
    assert clip("short") == "short" and clip(None) == ""
