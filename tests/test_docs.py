"""The documentation: generated pages match the code, the README stays a front page, every link resolves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from unicurate import reference

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
REGENERATE = "regenerate with: python -m unicurate.reference --write"

# [text](target) not preceded by ! (images are links too: keep them), skipping code spans and fenced blocks
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text(encoding="utf-8")))


def test_generated_docs_match_the_code():
    for path, text in reference.expected_files(ROOT).items():
        assert path.exists(), f"{path.relative_to(ROOT)} is missing; {REGENERATE}"
        assert path.read_text(encoding="utf-8") == text, f"{path.relative_to(ROOT)} is out of date; {REGENERATE}"


def test_recipe_reference_covers_every_field():
    from pydantic import BaseModel

    from unicurate.config import RECIPES

    text = (ROOT / reference.RECIPES_DOC).read_text(encoding="utf-8")

    def walk(model: type[BaseModel]):
        for name, field in model.model_fields.items():
            assert f"| `{name}` |" in text, f"{model.__name__}.{name} is not in {reference.RECIPES_DOC}"
            inner, _ = reference._strip_none(field.annotation)
            for arg in (inner, *reference._args(inner)):
                if reference._is_model(arg):
                    walk(arg)

    for model in RECIPES.values():
        walk(model)


def test_reason_tables_list_every_code():
    from unicurate.schema import Reason, SynReason

    text = (ROOT / reference.REASONS_DOC).read_text(encoding="utf-8")
    for member in [*Reason, *SynReason]:
        assert f"| `{member.value}` |" in text, f"{member.value} is not in {reference.REASONS_DOC}; {REGENERATE}"
        assert reference.reason_doc(member), f"reason {member.value} has no doc in unicurate/schema.py"


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < 200, f"README.md has {lines} lines; move detail to docs/ (it is the front page, under 200)"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for t in _links(README) if not t.startswith("#")}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ has no pages"
    missing = [p.relative_to(ROOT).as_posix() for p in pages if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


def test_relative_links_resolve():
    broken = []
    for path in [README, ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]:
        for target in _links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # http(s)://, mailto:, in-page anchors
            file = target.split("#", 1)[0]
            if not (path.parent / file).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, f"links to missing files: {broken}"


def test_the_generator_imports_nothing_heavy():
    code = ("import sys, unicurate.reference as r; r.render_recipes(); r.render_reason_table(); "
            "heavy = [m for m in ('torch', 'apache_beam', 'open_clip', 'timm') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"rendering the docs imported {proc.stdout.strip()} {proc.stderr[-2000:]}"


def test_the_generator_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "unicurate.reference"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == reference.render_recipes()
