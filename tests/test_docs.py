"""Every link in the README, SECURITY.md and docs/ resolves inside a clone.

The design notes used to live outside the repository (``../shared/``), so a
clone could not read what the README and the code cited.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli.test_main import REPO

DOCUMENTS = sorted(
    [REPO / "README.md", REPO / "SECURITY.md", *(REPO / "docs").rglob("*.md")],
    key=str,
)
# [text](target) and [text]: target, outside code spans.
INLINE = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _targets(document: Path) -> list[str]:
    text = CODE.sub("", document.read_text(encoding="utf-8"))
    return INLINE.findall(text) + REFERENCE.findall(text)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(document: Path) -> None:
    broken = []
    for target in _targets(document):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # https:, mailto:, in-page anchors
        path = (document.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(REPO) or not path.exists():
            broken.append(target)
    assert broken == [], f"{document.relative_to(REPO)}: links that a clone cannot follow"


def test_nothing_cites_files_outside_the_repository() -> None:
    cited = []
    for path in [*DOCUMENTS, *(REPO / "gateway").rglob("*.py")]:
        if "../shared" in path.read_text(encoding="utf-8"):
            cited.append(str(path.relative_to(REPO)))
    assert cited == []


def test_the_design_index_lists_every_note() -> None:
    design = REPO / "docs" / "design"
    index = (design / "README.md").read_text(encoding="utf-8")
    notes = {p.name for p in design.glob("*.md")} - {"README.md"}
    assert notes and all(f"]({name})" in index for name in notes)
