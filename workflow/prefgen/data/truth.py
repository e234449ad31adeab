"""The synthetic world's answer key, read back: who each user is and how they score any image.

``prefgen world`` (:mod:`prefgen.data.world`) writes ``data/truth/world.json`` (attributes,
their standardization, the planted types' weights, temperature, tie threshold) and
``data/truth/users.parquet`` (λ*_u per user). This module is the one reader of both:
:func:`load_truth` gives a :class:`Truth`; :func:`type_rewards` scores images (pixels and
caption only, through ``prefgen.data.attributes``) under every planted type, and
:func:`oracle_reward` is a user's true reward ``λ*_u · r(x, c)``: the physical limit of every
user model and the judge that knows the answer for generated images. No method or embedding
reads it (docs/architecture.md §3).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from prefgen.data.attributes import measure_attributes


@dataclass
class Truth:
    """The world's answer key, as loaded from ``data/truth/``."""

    attributes: list[str]
    attr_mean: np.ndarray  # [A]
    attr_std: np.ndarray  # [A]
    type_names: list[str]
    weights: np.ndarray  # [K, A] reward weights over standardized attributes
    temperature: float
    tie_threshold: float
    users: pd.DataFrame  # index user_id; lambda_true_0..K-1, dominant_type, n_pairs, is_pure
    meta: dict[str, Any]

    @property
    def n_types(self) -> int:
        return len(self.type_names)

    def lambdas(self, user_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[N, K]`` true mixture weights of the given users (error naming any unknown id)."""
        ids = np.asarray(user_ids, dtype=np.int64)
        known = self.users.index.to_numpy()
        missing = np.setdiff1d(ids, known)
        if len(missing):
            raise KeyError(
                f"user_id(s) not in the world's truth (users.parquet): "
                f"{missing[:10].tolist()}{' ...' if len(missing) > 10 else ''}"
            )
        cols = [f"lambda_true_{k}" for k in range(self.n_types)]
        return self.users.loc[ids, cols].to_numpy(dtype=np.float64)


def load_truth(truth_dir: str | Path) -> Truth:
    """Read ``world.json`` and ``users.parquet`` from a world's ``data/truth/`` directory."""
    truth_dir = Path(truth_dir)
    for name in ("world.json", "users.parquet"):
        if not (truth_dir / name).exists():
            raise FileNotFoundError(
                f"{truth_dir / name}: missing; is {truth_dir} a world's "
                "data/truth/ directory (written by `prefgen world`)?"
            )
    meta = json.loads((truth_dir / "world.json").read_text())
    users = pd.read_parquet(truth_dir / "users.parquet").set_index("user_id")
    attrs = list(meta["attributes"])
    return Truth(
        attributes=attrs,
        attr_mean=np.array([meta["attribute_mean"][a] for a in attrs]),
        attr_std=np.array([meta["attribute_std"][a] for a in attrs]),
        type_names=[t["name"] for t in meta["types"]],
        weights=np.array([[t["weights"][a] for a in attrs] for t in meta["types"]]),
        temperature=float(meta["temperature"]),
        tie_threshold=float(meta["tie_threshold"]),
        users=users,
        meta=meta,
    )


def standardize(attrs: pd.DataFrame, truth: Truth) -> np.ndarray:
    """``[N, A]`` z-scores with the world's statistics; an unmeasurable value counts as average."""
    z = (attrs[truth.attributes].to_numpy(np.float64) - truth.attr_mean) / truth.attr_std
    return np.nan_to_num(z, nan=0.0)


def type_rewards(
    images: np.ndarray | Sequence[Image.Image], captions: Sequence[str], truth: Truth
) -> np.ndarray:
    """``[N, K*]`` reward of each image under each planted type (pixels + caption only)."""
    return standardize(measure_attributes(images, captions), truth) @ truth.weights.T


def oracle_reward(
    images: np.ndarray | Sequence[Image.Image],
    captions: Sequence[str],
    user_ids: Sequence[int] | np.ndarray,
    truth: Truth,
) -> np.ndarray:
    """``[N]`` each user's true reward ``lambda*_u . r(x, c)`` of their image: the oracle judge."""
    if len(user_ids) != len(captions):
        raise ValueError(f"oracle_reward: {len(captions)} captions but {len(user_ids)} user_ids")
    return np.einsum("nk,nk->n", type_rewards(images, captions, truth), truth.lambdas(user_ids))
