"""The package as users get it: a wheel built from the checkout works on its own, outside the checkout.

The tests import unicurate from the checkout (the venv's editable install), where a file that is missing from
the wheel goes unnoticed. Here the wheel is built, installed into a folder of its own, and ``unicurate demo``
runs from it in a working directory away from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "unicurate" / "recipes"


def _pip(*args: str, cwd: Path) -> None:
    # --no-index: nothing is downloaded (the build backend is the venv's own setuptools: --no-build-isolation)
    subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "-q"], cwd=cwd, check=True)


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of the checkout's sources, built in a copy of them.

    setuptools builds in the source tree (``build/``, ``*.egg-info``): a copy keeps the checkout untouched, and a
    ``build/`` left over from an older tree cannot slip modules that no longer exist into the wheel.
    """
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "unicurate", src / "unicurate", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    _pip("wheel", "--no-build-isolation", "-w", str(dist), ".", cwd=src)
    (wheel,) = dist.glob("unicurate-*.whl")
    return wheel


def test_bundled_recipes_have_one_source():
    """configs/ (what the docs and users type) is a link to the recipes the package ships, not a copy."""
    configs = ROOT / "configs"
    assert configs.is_symlink() and os.readlink(configs) == "unicurate/recipes"
    assert sorted(p.name for p in configs.iterdir()) == sorted(p.name for p in RECIPES.glob("*.yaml"))


def test_the_wheel_runs_the_demo_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    # the package and its metadata only (no tests/, benchmarks/, configs/ link), with every bundled recipe
    assert {n.split("/")[0] for n in names} == {"unicurate", wheel.name.split("-py3")[0] + ".dist-info"}
    assert {n for n in names if n.startswith("unicurate/recipes/")} == {
        f"unicurate/recipes/{p.name}" for p in RECIPES.glob("*.yaml")}
    target, work, out = tmp_path / "site", tmp_path / "elsewhere", tmp_path / "demo-out"
    work.mkdir()
    _pip("install", "--target", str(target), str(wheel), cwd=work)
    # PYTHONPATH comes before the venv's editable install (a finder appended to sys.meta_path, consulted last)
    env = {**os.environ, "PYTHONPATH": str(target)}

    def python(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=240)

    where = python("-c", "import unicurate; print(unicurate.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).resolve().is_relative_to(target.resolve()), where.stdout
    res = python("-m", "unicurate", "demo", "--no-synthesis", "--output", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["inputs"] > 0 and counts["kept"] + counts["rejected"] == counts["inputs"]
