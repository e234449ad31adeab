"""What a judge is: the contract every judge implements and the types its registry holds.

A judge is anything with ``score(images, captions, user_ids) -> float[N]`` (higher is better
for that user); judges that ignore the user are still called with the ids. Core judges get a
uint8 ``[N, H, W, 3]`` array when a batch's images share one size (else PIL images); external
judges always get PIL images, as their packages expect. The core judges and the registry by
name are in :mod:`prefgen.evaluation.judge_registry`, the paper-scale ones in
:mod:`prefgen.evaluation.external_judges`; both import this module and neither imports the
other at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

#: a batch of RGB images: PIL images, or one uint8 ``[N, H, W, 3]`` array (core judges only)
Images = Sequence[Image.Image] | np.ndarray


class Judge(Protocol):
    def score(self, images: Images, captions: Sequence[str], user_ids: np.ndarray) -> np.ndarray:
        """``[N]`` float scores, higher = better for that user and caption."""


@dataclass
class JudgeContext:
    """What a judge may need to load itself; ``cache`` shares loaded models between judges."""

    run_dir: Path
    truth_dir: Path | None = None
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JudgeSpec:
    """A registered judge: ``environment`` says which venv/conda env can build it."""

    name: str
    description: str
    environment: str  # "core" | "judges"
    personal: bool  # does the score depend on the user?
    build: Callable[[JudgeContext], Judge]
    synthetic_only: bool = False


@dataclass
class FunctionJudge:
    """A judge backed by one function of (images, captions, user_ids)."""

    fn: Callable[[Images, Sequence[str], np.ndarray], np.ndarray]

    def score(self, images: Images, captions: Sequence[str], user_ids: np.ndarray) -> np.ndarray:
        return self.fn(images, captions, user_ids)


def group_by_caption(captions: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(caption, row indices) in first-seen order: judges that encode a prompt once per call."""
    groups: dict[str, list[int]] = {}
    for i, caption in enumerate(captions):
        groups.setdefault(caption, []).append(i)
    for caption, idx in groups.items():
        yield caption, np.asarray(idx, dtype=np.int64)


def checked_scores(name: str, scores: Any, n: int) -> np.ndarray:
    """A judge's output as ``float64[n]``, or an error naming the judge and what was wrong."""
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"judge '{name}' returned {arr.shape[0]} scores for {n} images")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"judge '{name}' returned {int(bad.sum())} non-finite scores "
            f"(first at batch row {int(np.flatnonzero(bad)[0])})"
        )
    return arr
