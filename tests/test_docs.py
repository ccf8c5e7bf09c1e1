"""The docs agree with the code: docs/learners.md is what docs/gen_params.py generates, README.md
stays short, every local markdown link resolves, and no page cites files or issues that are not
in the repository."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _gen_params():
    spec = importlib.util.spec_from_file_location("gen_params", DOCS / "gen_params.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learners_page_matches_params():
    expected = _gen_params().render()
    page = DOCS / "learners.md"
    assert page.exists(), "docs/learners.md is missing: run `make docs`"
    assert page.read_text(encoding="utf-8") == expected, (
        "docs/learners.md disagrees with the learners' Param declarations: run `make docs`")


def test_readme_is_short():
    size = README.stat().st_size
    assert size <= 15_000, f"README.md is {size} bytes (at most 15,000): move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_local_links_resolve(page):
    missing = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue   # http:, https:, mailto: ... and anchors within the page
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_references_to_missing_files_or_issues(page):
    text = page.read_text(encoding="utf-8")
    bad = [m.group(0) for m in re.finditer(r"DESIGN\.md|ENVIRONMENT\.md|\bissues? #?\d+", text,
                                           flags=re.IGNORECASE)]
    assert not bad, f"{page.relative_to(ROOT)} cites what the repository does not have: {bad}"
