"""The workflow's sources copied to a scratch folder, so a test run never touches results/."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: What a run needs: Snakemake reads envs/ for every rule's conda metadata even without
#: --sdm conda.
SOURCES = ("Snakefile", "workflow", "config", "envs")


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow sources into ``dest`` (created if absent) and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(src, dest / name)
    return dest
