"""The user-model ceiling diagnostic's pieces: supervised φ, R², the gap table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from prefgen.user_model.accuracy import accuracy_table
from prefgen.user_model.ceiling import ceiling_table, fit_supervised_phi, r_squared
from prefgen.user_model.pairs import PairSet


def test_supervised_phi_recovers_a_nonlinear_target_in_reward_units() -> None:
    """The regression must reach targets that need the image⊙text inputs (like caption fidelity)
    and come back in the targets' own scale, not the standardised one it trains on."""
    gen = torch.Generator().manual_seed(0)
    img, txt = torch.randn(3000, 6, generator=gen), torch.randn(3000, 6, generator=gen)
    target = torch.stack([3.0 * img[:, 0] + 1.0, (img * txt)[:, :3].sum(1) * 0.5], 1).numpy()
    params = {
        "width": 64,
        "depth": 2,
        "epochs": 40,
        "batch_size": 128,
        "lr": 0.003,
        "weight_decay": 0.0,
    }
    model = fit_supervised_phi(img, txt, target, params, interaction=True, seed=0)
    with torch.no_grad():
        pred = model.phi(img, txt).numpy()
    assert (r_squared(pred, target) > 0.9).all(), r_squared(pred, target)
    slope = np.polyfit(target[:, 0], pred[:, 0], 1)[0]
    assert slope == pytest.approx(1.0, abs=0.15)


def test_r_squared_ignores_offset_and_scale() -> None:
    gen = np.random.default_rng(0)
    y = gen.normal(size=(500, 2))
    assert r_squared(5 * y - 3, y) == pytest.approx([1.0, 1.0])
    assert r_squared(gen.normal(size=(500, 2)), y).max() < 0.05


def _pairs(n_users: int, per_user: int) -> PairSet:
    n = n_users * per_user
    return PairSet(
        item_img=np.arange(2 * n),
        item_cap=np.zeros(2 * n, int),
        item_uid=np.arange(2 * n).astype(str),
        item_caption=np.full(2 * n, "c"),
        win=np.arange(n),
        lose=np.arange(n, 2 * n),
        user=np.repeat(np.arange(n_users), per_user),
        user_ids=np.arange(n_users),
        is_tie=np.zeros(n, bool),
    )


def test_ceiling_table_gap_and_copied_rows() -> None:
    test = _pairs(20, 10)
    gen = np.random.default_rng(1)
    correct = {
        "pipe_supervised_phi": (gen.random(200) < 0.7).astype(float),
        "pipe_true_phi": (gen.random(200) < 0.75).astype(float),
    }
    base = accuracy_table(
        {"population": np.full(200, 0.6), "pipe": np.full(200, 0.65), "oracle": np.full(200, 0.8)},
        test.user,
        20,
        "seen",
        50,
        0,
        0.95,
    )[0]
    table = ceiling_table(base, correct, test, 50, 0, 0.95).set_index("method")
    assert list(table.index) == [
        "population",
        "pipe",
        "pipe_supervised_phi",
        "pipe_true_phi",
        "oracle",
    ]
    assert table.loc["pipe", "gap_closed"] == pytest.approx(0.25)
    sup = correct["pipe_supervised_phi"].mean()
    assert table.loc["pipe_supervised_phi", "gap_closed"] == pytest.approx((sup - 0.6) / 0.2)


def test_ceiling_table_needs_the_oracle_row() -> None:
    test = _pairs(5, 4)
    base = pd.DataFrame(
        {
            "method": ["population", "pipe"],
            "accuracy": [0.6, 0.7],
            "ci_low": [0.5, 0.6],
            "ci_high": [0.7, 0.8],
        }
    )
    correct = {"pipe_supervised_phi": np.ones(20), "pipe_true_phi": np.ones(20)}
    with pytest.raises(ValueError, match=r"lacks row\(s\) \['oracle'\]"):
        ceiling_table(base, correct, test, 20, 0, 0.95)
