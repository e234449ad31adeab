"""Fixtures for the evaluation tests: a fake run folder (samples index + PNGs + a hand-written
world truth) and a fake user-model scorer, so judges, evaluate and bundle are tested without the
upstream stages. Everything here is test-only and named as a fake.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from prefgen.data.attributes import ATTRIBUTES
from prefgen.evaluation.win_rates import INDEX_COLUMNS

#: two planted types of the hand-written truth: one likes bright images, one dark ones
TYPE_WEIGHTS = [{"brightness": 1.0}, {"brightness": -1.0}]
TYPE_NAMES = ["bright_lover", "dark_lover"]


def write_truth(truth_dir: Path, user_ids: list[int]) -> pd.DataFrame:
    """A minimal ``data/truth/`` in the format ``prefgen.data.truth.load_truth`` reads.

    Users alternate between pure type-0 and pure type-1 tastes, so the oracle's preference
    between a bright and a dark image flips with the user.
    """
    truth_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "attributes": list(ATTRIBUTES),
        "attribute_mean": {a: 0.5 for a in ATTRIBUTES},
        "attribute_std": {a: 0.25 for a in ATTRIBUTES},
        "types": [
            {"index": k, "name": TYPE_NAMES[k], "weights": {a: w.get(a, 0.0) for a in ATTRIBUTES}}
            for k, w in enumerate(TYPE_WEIGHTS)
        ],
        "temperature": 1.0,
        "tie_threshold": 0.0,
    }
    (truth_dir / "world.json").write_text(json.dumps(meta))
    lam = np.array([[1.0, 0.0] if i % 2 == 0 else [0.0, 1.0] for i in range(len(user_ids))])
    users = pd.DataFrame(
        {
            "user_id": np.asarray(user_ids, dtype=np.int64),
            "lambda_true_0": lam[:, 0],
            "lambda_true_1": lam[:, 1],
            "dominant_type": lam.argmax(1).astype(np.int64),
            "n_pairs": np.full(len(user_ids), 10, dtype=np.int64),
            "is_pure": np.ones(len(user_ids), dtype=bool),
        }
    )
    users.to_parquet(truth_dir / "users.parquet", index=False)
    return users


def brightness_of(
    method: str, step: int, user_id: int, prompt_id: int, seed: int, train_seed: int = -1
) -> int:
    """Grey level of a fake sample: a fixed function of the triple, shifted per method, step
    and training seed."""
    shift = {"base": 0, "dpo": 20, "pipe": 40}.get(method, 10) + step // 10 + 7 * max(train_seed, 0)
    return int((37 * user_id + 11 * prompt_id + 5 * seed + shift) % 200 + 20)


def write_samples(
    run_dir: Path,
    methods: dict[str, list[int]],
    user_ids: list[int],
    prompt_ids: list[int],
    seeds_per_prompt: int = 1,
    size: int = 16,
    unseen_every: int = 3,
) -> dict[str, Path]:
    """``samples/{model}/index.parquet`` + PNGs for every (user, prompt, seed) and step.

    A model is ``base`` or ``<method>/seed<k>`` (training seed k); another name is an untrained
    method (training seed -1). Every ``unseen_every``-th user is an unseen one. Paths in the
    index are relative to ``run_dir``, as the contract says.
    """
    out = {}
    for model, steps in methods.items():
        method, _, seed_part = model.partition("/seed")
        train_seed = int(seed_part) if seed_part else -1
        rows = []
        for step in steps:
            for u_i, user in enumerate(user_ids):
                for prompt in prompt_ids:
                    for s in range(seeds_per_prompt):
                        seed = 1000 * prompt + s
                        rel = f"samples/{model}/step-{step}/u{user}_p{prompt}_s{seed}.png"
                        grey = brightness_of(method, step, user, prompt, seed, train_seed)
                        arr = np.full((size, size, 3), grey, dtype=np.uint8)
                        arr[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (200, 40, 40)
                        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(arr).save(run_dir / rel)
                        rows.append(
                            {
                                "method": method,
                                "train_seed": train_seed,
                                "step": step,
                                "user_id": user,
                                "user_group": "unseen" if u_i % unseen_every == 2 else "seen",
                                "prompt_id": prompt,
                                "caption": f"a red square on a grey background {prompt}",
                                "seed": seed,
                                "path": rel,
                            }
                        )
        df = pd.DataFrame(rows, columns=INDEX_COLUMNS)
        for col in ["train_seed", "step", "user_id", "prompt_id", "seed"]:
            df[col] = df[col].astype(np.int64)
        path = run_dir / "samples" / model / "index.parquet"
        df.to_parquet(path, index=False)
        out[model] = path
    return out


class FakeUserModelScorer:
    """Test double of ``prefgen.user_model.scorer.UserModelScorer`` (same three methods).

    ``pipe`` has the hand-written truth's taste (even user ids like bright images, odd ones dark:
    ``write_truth`` gives consecutive ids starting even alternating types), so it orders pairs as
    the oracle does; ``population`` likes bright images for everyone, so it agrees with the
    oracle for the even half only; ``clip_score`` is the red share of the image.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    @classmethod
    def from_run(cls, run_dir: str | Path) -> FakeUserModelScorer:
        return cls(Path(run_dir))

    @staticmethod
    def _brightness(images) -> np.ndarray:
        return np.array([np.asarray(im, dtype=np.float64).mean() / 255.0 for im in images])

    def pipe(self, images, captions, user_ids) -> np.ndarray:
        b = self._brightness(images)
        sign = np.where(np.asarray(user_ids) % 2 == 0, 1.0, -1.0)
        return sign * b

    def population(self, images, captions) -> np.ndarray:
        return self._brightness(images)

    def clip_score(self, images, captions) -> np.ndarray:
        return np.array([(np.asarray(im)[..., 0] > 150).mean() for im in images], dtype=float)
