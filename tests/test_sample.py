"""Sampling: the index contract, paired seeds across methods and training seeds, the per-seed
layout, batching-independent images, and explicit handling of users without an embedding."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from prefgen.cli import main
from prefgen.generation.sample import INDEX_COLUMNS

from tests.generation_helpers import shared_setup, smoke_config, train_args


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """base, dpo and pipe sampled from quick adapters on the fixture world."""
    setup = shared_setup(tmp_path_factory, "personal")
    run = setup["root"] / "run-sample"
    cfg = smoke_config()["train"] | {"steps": 4, "checkpoint_every": 2, "lr": 1e-2}
    for method in ("dpo", "pipe"):
        assert (
            main(train_args(setup, method, run / "adapters" / method / "seed1" / "final.json", cfg))
            == 0
        )
    sample_cfg = smoke_config()["sample"] | {"num_inference_steps": 3}
    out = {}
    for method in ("base", "dpo", "pipe"):
        out[method] = sample(setup, run, method, sample_cfg)
    return setup, run, sample_cfg, out


def sample(setup, run, method, cfg, name=None, train_seed=1):
    """``samples/base/index.parquet``, or ``samples/<method>/seed<k>/index.parquet``."""
    folder = run / "samples" / (name or method)
    index = (folder if method == "base" else folder / f"seed{train_seed}") / "index.parquet"
    args = [
        "sample",
        "--params",
        json.dumps({"sample": cfg}),
        "--method",
        method,
        "--foundation",
        str(setup["foundation"]),
        "--eval-set",
        str(setup["eval_set"]),
        "--out",
        str(index),
    ]
    if method != "base":
        args += [
            "--adapter",
            str(run / "adapters" / method / "seed1" / "final.json"),
            "--train-seed",
            str(train_seed),
        ]
    if method == "pipe":
        args += ["--embeddings", str(setup["embeddings"])]
    assert main(args) == 0
    return pd.read_parquet(index)


def pixels(run, path) -> np.ndarray:
    return np.asarray(Image.open(run / path))


def test_index_contract_and_paired_seeds(samples) -> None:
    setup, run, _, out = samples
    evals = pd.read_parquet(setup["eval_set"])
    for method, index in out.items():
        assert list(index.columns) == list(INDEX_COLUMNS)
        steps = sorted(index["step"].unique())
        assert steps == ([0] if method == "base" else [2, 4])
        assert len(index) == len(evals) * len(steps)
        for step in steps:
            rows = index[index["step"] == step]
            key = ["user_id", "prompt_id", "seed", "caption"]
            pd.testing.assert_frame_equal(
                rows[key].sort_values(key).reset_index(drop=True),
                evals[key].sort_values(key).reset_index(drop=True),
            )
        assert index["train_seed"].tolist() == [-1 if method == "base" else 1] * len(index)
        folder = "samples/base/step-" if method == "base" else f"samples/{method}/seed1/step-"
        for path in index["path"]:
            assert path.startswith(folder) and pixels(run, path).shape == (16, 16, 3)


def test_train_seed_is_required_exactly_for_trained_methods(samples) -> None:
    setup, run, cfg, _ = samples
    base = [
        "sample",
        "--params",
        json.dumps({"sample": cfg}),
        "--foundation",
        str(setup["foundation"]),
        "--eval-set",
        str(setup["eval_set"]),
    ]
    with pytest.raises(ValueError, match="--train-seed is required"):
        main(
            [
                *base,
                "--method",
                "dpo",
                "--adapter",
                str(run / "adapters" / "dpo" / "seed1" / "final.json"),
                "--out",
                str(run / "samples" / "dpo-noseed" / "index.parquet"),
            ]
        )
    with pytest.raises(ValueError, match="--train-seed is required"):
        main(
            [
                *base,
                "--method",
                "base",
                "--train-seed",
                "0",
                "--out",
                str(run / "samples" / "base-seed" / "index.parquet"),
            ]
        )


def test_users_without_embedding_are_flagged(samples) -> None:
    _, _, _, out = samples
    pipe = out["pipe"]
    assert not pipe.loc[pipe["user_id"] == 999, "own_embedding"].any()
    assert pipe.loc[pipe["user_id"] != 999, "own_embedding"].all()
    assert not out["base"]["own_embedding"].any() and not out["dpo"]["own_embedding"].any()


def test_images_do_not_depend_on_batching_and_adapters_change_them(samples) -> None:
    setup, run, cfg, out = samples
    small = sample(setup, run, "base", cfg | {"batch_size": 2}, name="base-small-batches")
    # other batch shapes sum in another order (~1e-7), which can carry a pixel across a
    # rounding boundary when it is saved: at most one 8-bit level apart
    for a, b in zip(out["base"]["path"], small["path"], strict=True):
        np.testing.assert_allclose(
            pixels(run, a).astype(int), pixels(run, b).astype(int), rtol=0, atol=1
        )
    base = out["base"].set_index(["user_id", "prompt_id", "seed"])["path"]
    pipe = out["pipe"][out["pipe"]["step"] == 4].set_index(["user_id", "prompt_id", "seed"])
    diffs = [
        np.abs(pixels(run, base[k]).astype(int) - pixels(run, p).astype(int)).max()
        for k, p in pipe["path"].items()
    ]
    assert max(diffs) > 0


def test_unknown_checkpoint_step_is_an_error(samples) -> None:
    setup, run, cfg, _ = samples
    with pytest.raises(ValueError, match="sample.steps \\[3\\] have no checkpoint"):
        sample(setup, run, "dpo", cfg | {"steps": [3]}, name="dpo-bad")
