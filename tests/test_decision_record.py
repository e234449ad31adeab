"""The decision record is one file per decision under docs/decisions/, listed in its index, and
every path to it (or to any other doc) that the repository mentions exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_product_vocabulary import REPO, product_files

DECISIONS = REPO / "docs" / "decisions"
INDEX = DECISIONS / "README.md"
ENTRY_NAME = re.compile(r"^(\d\d)-[a-z0-9]+(?:-[a-z0-9]+)*\.md$")
#: a doc named by its repository path, e.g. docs/decisions/05-splits-held-out-users.md
DOC_PATH = re.compile(r"\bdocs/[A-Za-z0-9_./-]*[A-Za-z0-9_]\.md\b")
#: an entry named from inside docs/decisions/ by its bare file name
BARE_ENTRY = re.compile(r"(?<![\w/.-])(\d\d-[a-z0-9]+(?:-[a-z0-9]+)*\.md)\b")
#: the single-file record this folder replaced, named without its folder
OLD_RECORD = re.compile(r"(?<![\w/.-])decisions\.md\b")
PARTS = ("**Context.**", "**Decision.**", "**Consequences.**", "**Evidence.**")


def entries() -> list[Path]:
    return sorted(p for p in DECISIONS.glob("*.md") if p.name != "README.md")


def mentions(pattern: re.Pattern[str], paths: list[Path]) -> list[tuple[Path, int, str]]:
    found = []
    for path in paths:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            found += [(path, n, m.group(0)) for m in pattern.finditer(line)]
    return found


def test_entries_are_numbered_once_and_have_the_four_parts() -> None:
    names = [p.name for p in entries()]
    assert names, "docs/decisions/ holds no entry"
    bad = [n for n in names if not ENTRY_NAME.match(n)]
    assert not bad, f"entry names must be NN-stage-slug.md: {bad}"
    numbers = [n[:2] for n in names]
    assert len(set(numbers)) == len(numbers), f"a number is used twice: {sorted(numbers)}"
    missing = {
        p.name: [part for part in PARTS if part not in p.read_text()]
        for p in entries()
        if any(part not in p.read_text() for part in PARTS)
    }
    assert not missing, f"entries without a part: {missing}"


def test_every_entry_is_in_the_index_and_every_index_link_exists() -> None:
    index = INDEX.read_text()
    linked = set(re.findall(r"\]\((\d\d-[^)]+\.md)\)", index))
    names = {p.name for p in entries()}
    assert names - linked == set(), f"entries missing from {INDEX.relative_to(REPO)}"
    assert linked - names == set(), f"{INDEX.relative_to(REPO)} links files that do not exist"


def test_every_doc_path_mentioned_in_the_repository_exists() -> None:
    this = Path(__file__).resolve()
    files = [p for p in product_files() if p.resolve() != this]  # its examples are not pointers
    absent = [
        f"{path.relative_to(REPO)}:{n}: {doc}"
        for path, n, doc in mentions(DOC_PATH, files)
        if not (REPO / doc).is_file()
    ]
    inside = [p for p in files if p.parent == DECISIONS or p == REPO / "docs" / "experiments.md"]
    absent += [
        f"{path.relative_to(REPO)}:{n}: {name}"
        for path, n, name in mentions(BARE_ENTRY, inside)
        if not (DECISIONS / name).is_file()
    ]
    if not (REPO / "docs" / "decisions.md").exists():
        absent += [f"{p.relative_to(REPO)}:{n}: {m}" for p, n, m in mentions(OLD_RECORD, files)]
    assert not absent, "paths to docs that do not exist:\n" + "\n".join(absent)


def test_the_path_checks_find_what_they_look_for() -> None:
    assert DOC_PATH.findall("(docs/decisions/05-splits-held-out-users.md).") == [
        "docs/decisions/05-splits-held-out-users.md"
    ]
    assert DOC_PATH.findall("see `docs/architecture.md`, and docs/decisions/") == [
        "docs/architecture.md"
    ]
    assert BARE_ENTRY.findall("(`12-user-model-ceiling.md`)") == ["12-user-model-ceiling.md"]
    assert not BARE_ENTRY.findall("docs/decisions/12-user-model-ceiling.md")
    assert OLD_RECORD.findall("(decisions.md)") == ["decisions.md"]
    assert DOC_PATH.findall("(docs/decisions.md)") == ["docs/decisions.md"]
    assert not OLD_RECORD.findall("docs/decisions/README.md docs/decisions.md")
