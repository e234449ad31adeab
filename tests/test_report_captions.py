"""`make run` ends with `snakemake --report`: every caption a rule names must exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "workflow" / "rules"


def test_every_report_caption_file_exists() -> None:
    named = {
        (smk.name, caption)
        for smk in RULES.glob("*.smk")
        for caption in re.findall(r'caption="([^"]+)"', smk.read_text())
    }
    assert named, "no report captions found: the pattern no longer matches the rules"
    missing = sorted(f"{smk}: {c}" for smk, c in named if not (RULES / c).resolve().is_file())
    assert not missing, f"caption files missing (the --report step fails): {missing}"
