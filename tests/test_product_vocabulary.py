"""The product speaks of itself only: no tracker numbers, numbered rounds of work, citations of
documents the repository does not contain, or scratch folders of past experiments."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: what a reader of the repository cannot follow
FORBIDDEN = re.compile(
    r"\b[Ii]ssues? #?\d+|\b[Ss]essions? \d+\b|\b[Ff]ollow-ups? \d+\b|\bDESIGN(\.md)?\s*§"
    r"|\bDESIGN\.md\b|\.\./shared/"
)
#: scratch folders cited as evidence (a runtime default such as the test cluster's state
#: directory in a script is a path the code uses, not a citation)
SCRATCH = re.compile(r"`/tmp/[^`]*`")
SUFFIXES = {".py", ".smk", ".yaml", ".yml", ".md", ".rst", ".sh", ".toml", ".cfg", ".txt"}
ROOTS = [
    "workflow",
    "config",
    "tests",
    "bench",
    "docs",
    "envs",
    ".ci",
    "results/README.md",
    "README.md",
    "Makefile",
    "Snakefile",
    "pyproject.toml",
]


def product_files() -> list[Path]:
    files: list[Path] = []
    for root in ROOTS:
        path = REPO / root
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [
                p
                for p in path.rglob("*")
                if p.is_file()
                and (p.suffix in SUFFIXES)
                and "__pycache__" not in p.parts
                and "data" not in p.parts[-2:-1]
            ]
    return sorted(files)


def test_no_process_vocabulary_or_outside_citations() -> None:
    this = Path(__file__).resolve()
    hits = []
    for path in product_files():
        if path.resolve() == this:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if FORBIDDEN.search(line) or SCRATCH.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:120]}")
    assert not hits, "\n".join(hits)


def test_the_check_finds_what_it_forbids() -> None:
    for text in (
        "see issue 4",
        "Session 8 gave",
        "levers tried in follow-up 2",
        "DESIGN §5",
        "(DESIGN.md)",
        "../shared/x",
        "run in `/tmp/fr4`",
    ):
        assert FORBIDDEN.search(text) or SCRATCH.search(text), text
    for text in ("ranking sessions", "pairs_per_session", "an issue with ties", "/tmp dir"):
        assert not (FORBIDDEN.search(text) or SCRATCH.search(text)), text


def test_the_decision_record_and_experiments_are_checked() -> None:
    """The record is where past work is most tempting to cite by number: it must stay covered."""
    files = set(product_files())
    assert REPO / "docs" / "experiments.md" in files
    assert REPO / "docs" / "decisions" / "README.md" in files
    entries = sorted((REPO / "docs" / "decisions").glob("[0-9][0-9]-*.md"))
    assert entries and set(entries) <= files
