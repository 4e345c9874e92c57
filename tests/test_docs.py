"""README.md stays a page a newcomer finishes, and what it and docs/ point at exists: a chapter
moved to docs/ or a test renamed would otherwise leave a dead link that nothing notices."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 180
# the README's promise to a fresh machine; scripts and CI are built around these exact lines
FRESH_MACHINE_COMMANDS = (
    "bash scripts/setup.sh && .venv/bin/biamat-engine demo",
    "bash scripts/setup.sh && bash scripts/test.sh",
)

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
_DOCS_PATH = re.compile(r"(?<![\w/.-])(docs/[\w./-]+\.md)\b")
_TEST_PATH = re.compile(r"(?<![\w/.-])(tests/test_\w+\.py)\b")


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def dead_links(page: Path) -> list[str]:
    """Local link targets of a markdown page that do not exist, relative to the page's folder."""
    dead = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):  # web links, anchors
            continue
        if not (page.parent / target.split("#")[0]).exists():
            dead.append(target)
    return dead


def missing_named_paths(page: Path, pattern: re.Pattern[str]) -> list[str]:
    """Repository paths a page names in its text (`docs/x.md`, `tests/test_x.py`) that do not exist."""
    return sorted({p for p in pattern.findall(page.read_text()) if not (REPO / p).exists()})


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move a chapter to docs/ and link it")


def test_readme_keeps_the_fresh_machine_commands():
    text = (REPO / "README.md").read_text()
    for command in FRESH_MACHINE_COMMANDS:
        assert command in text


def test_every_local_link_exists():
    dead = {str(p.relative_to(REPO)): dead_links(p) for p in _pages()}
    assert {page: links for page, links in dead.items() if links} == {}


def test_every_docs_page_named_exists():
    missing = {str(p.relative_to(REPO)): missing_named_paths(p, _DOCS_PATH) for p in _pages()}
    assert {page: paths for page, paths in missing.items() if paths} == {}


def test_every_test_file_named_exists():
    missing = {str(p.relative_to(REPO)): missing_named_paths(p, _TEST_PATH) for p in _pages()}
    assert {page: paths for page, paths in missing.items() if paths} == {}


def test_docs_chapters_are_linked_from_the_readme():
    # a page in docs/ that the README never reaches is a chapter a newcomer cannot find
    readme_links = {t.split("#")[0] for t in _LINK.findall((REPO / "README.md").read_text())}
    unlinked = [p.name for p in sorted((REPO / "docs").glob("*.md")) if f"docs/{p.name}" not in readme_links]
    assert unlinked == []


def test_the_checks_catch_what_they_look_for(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("")
    page.write_text(
        "[ok](there.md) [web](https://example.org/x.md) [anchor](#top) [gone](missing.md#part)\n"
        "see docs/no-such-chapter.md and tests/test_no_such_file.py, but tests/test_docs.py is here\n")
    assert dead_links(page) == ["missing.md#part"]
    assert missing_named_paths(page, _DOCS_PATH) == ["docs/no-such-chapter.md"]
    assert missing_named_paths(page, _TEST_PATH) == ["tests/test_no_such_file.py"]
