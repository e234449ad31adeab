"""``prefgen user-model-ceiling``: where PIPE's preference accuracy is lost (synthetic world only).

PIPE's accuracy r_u = λ_uᵀφ can fall short of the oracle for two reasons: φ (learned by EM from
preference pairs on frozen CLIP features) is not the planted type rewards, or λ_u (fitted from a
handful of pairs) is not λ*_u. This stage swaps in better φ, keeps everything else as the
``fit_lambda`` and ``preference_accuracy`` stages do (same λ config, same training and test
pairs, same user-bootstrap draws), and reports each row's share of the population→oracle gap:

- ``pipe_supervised_phi``: φ regressed on the *planted* type rewards of the training items, from
  the same CLIP features the PASTA heads see (an MLP with PASTA's input construction, trained
  by MSE). The best a φ built on these features can be: the features' ceiling.
- ``pipe_true_phi``: φ = the planted type rewards themselves; only λ_u is estimated, so this is
  the ceiling that finite per-user histories leave.

``population``, ``pipe`` and ``oracle`` are copied from ``tables/preference_accuracy.csv``. The
supervised fit's held-out R² per planted type (on the test items) goes into the caption: it says
which planted attribute combinations the stand-in CLIP does not carry.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prefgen.core.io import write_table
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed
from prefgen.user_model.accuracy import accuracy_table, correct_from_margin, read_test_pairs
from prefgen.user_model.features import FeatureStore
from prefgen.user_model.imageio import load_images
from prefgen.user_model.lambda_fit import fit_users_dphi
from prefgen.user_model.pairs import PairSet, build_pairs, read_split
from prefgen.user_model.pasta import RewardModel
from prefgen.user_model.recovery import corr_matrix

log = get_logger(__name__)

COLUMNS = ["method", "phi", "accuracy", "ci_low", "ci_high", "gap_closed"]
COPIED = {
    "population": "K=1 reward model from preference pairs",
    "pipe": "PASTA EM from preference pairs (shipped)",
    "oracle": "true user reward (λ* and planted types)",
}


def planted_rewards(
    pairs: PairSet, truth: Any, images: str | Path, chunk: int = 8192
) -> np.ndarray:
    """``[I,K*]`` the planted type rewards of ``pairs``' items, measured on their pixels.

    Decoded in chunks: the training split's items as one pixel array would cost gigabytes.
    """
    from prefgen.data.truth import type_rewards

    out = [
        np.asarray(
            type_rewards(
                load_images(images, pairs.item_uid[i : i + chunk]),
                pairs.item_caption[i : i + chunk],
                truth,
            ),
            dtype=np.float64,
        )
        for i in range(0, len(pairs.item_uid), chunk)
    ]
    return np.concatenate(out) if out else np.zeros((0, truth.n_types))


def fit_supervised_phi(
    img: torch.Tensor,
    txt: torch.Tensor,
    target: np.ndarray,
    params: dict[str, Any],
    interaction: bool,
    seed: int,
) -> RewardModel:
    """A :class:`RewardModel` trained by MSE to output the planted type rewards.

    It builds PASTA's inputs from the items' image and caption embeddings, so the comparison
    with the EM heads is on the same features.
    """
    torch.manual_seed(derive_seed(seed, "ceiling", "model"))
    width = int(params["width"])
    model = RewardModel(
        dim=img.shape[1],
        hidden=width,
        n_types=target.shape[1],
        width=width,
        depth=int(params["depth"]),
        interaction=interaction,
    )
    inputs = model.inputs(img, txt)
    model.set_standardisation(inputs)
    y = torch.as_tensor(target, dtype=torch.float32)
    y_mean, y_std = y.mean(0), y.std(0).clamp_min(1e-6)
    yz = (y - y_mean) / y_std  # every type weighs the same in the loss
    opt = torch.optim.Adam(
        model.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"])
    )
    gen = torch.Generator().manual_seed(derive_seed(seed, "ceiling", "batches"))
    batch = int(params["batch_size"])
    for _ in tqdm(range(int(params["epochs"])), desc="ceiling: supervised φ", mininterval=5):
        for idx in torch.randperm(len(yz), generator=gen).split(batch):
            loss = F.mse_loss(model.phi_from_inputs(inputs[idx]), yz[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():  # fold the target scaling into the heads: φ is in reward units
        model.W.mul_(y_std[:, None])
    return model.eval().requires_grad_(False)


def r_squared(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per column R² of ``pred`` against ``target``, after the best affine map of each column
    (a type reward's offset and scale do not matter to Bradley-Terry)."""
    return np.diag(corr_matrix(pred, target)) ** 2


def pipe_correct(
    phi_train: np.ndarray,
    phi_test: np.ndarray,
    train: PairSet,
    test: PairSet,
    lambda_params: dict[str, Any],
) -> np.ndarray:
    """Test-pair correctness of λ_uᵀφ, λ_u fitted on the training pairs as ``fit_lambda`` does."""
    fit, _ = fit_users_dphi(phi_train[train.win] - phi_train[train.lose], train, lambda_params)
    margin = ((phi_test[test.win] - phi_test[test.lose]) * fit.lam[test.user]).sum(1)
    return correct_from_margin(margin)


def ceiling_table(
    accuracy: pd.DataFrame,
    correct: dict[str, np.ndarray],
    test: PairSet,
    draws: int,
    seed: int,
    level: float,
) -> pd.DataFrame:
    """The copied rows of ``accuracy`` and the new rows, each with its share of the gap."""
    new, _ = accuracy_table(correct, test.user, test.n_users, "seen", draws, seed, level)
    acc = accuracy.set_index("method")
    missing = [m for m in COPIED if m not in acc.index]
    if missing:
        raise ValueError(
            f"user-model-ceiling: preference_accuracy table lacks row(s) {missing} "
            "(the oracle needs the synthetic world)"
        )
    rows = [
        {"method": m, "phi": COPIED[m], **acc.loc[m, ["accuracy", "ci_low", "ci_high"]]}
        for m in ("population", "pipe")
    ]
    phis = {
        "pipe_supervised_phi": "regressed on planted type rewards from the same CLIP features",
        "pipe_true_phi": "planted type rewards (only λ estimated)",
    }
    rows += [
        {
            "method": r["method"],
            "phi": phis[r["method"]],
            "accuracy": r["accuracy"],
            "ci_low": r["ci_low"],
            "ci_high": r["ci_high"],
        }
        for _, r in new.iterrows()
    ]
    rows.append(
        {
            "method": "oracle",
            "phi": COPIED["oracle"],
            **acc.loc["oracle", ["accuracy", "ci_low", "ci_high"]],
        }
    )
    table = pd.DataFrame(rows)
    pop, oracle = float(acc.loc["population", "accuracy"]), float(acc.loc["oracle", "accuracy"])
    gap = oracle - pop
    table["gap_closed"] = (table["accuracy"] - pop) / gap if gap > 0 else np.nan
    return table[COLUMNS]


def compute(
    features: str | Path,
    train_path: str | Path,
    test_path: str | Path,
    truth_dir: str | Path,
    images: str | Path,
    accuracy_path: str | Path,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    from prefgen.data.truth import load_truth

    seed = int(params["seed"])
    acc_params = params["preference_accuracy"]
    store = FeatureStore.load(features)
    truth = load_truth(truth_dir)
    train = build_pairs(read_split(train_path), store, source=str(train_path))
    test = read_test_pairs(test_path, store, train.user_ids)  # the accuracy table's pairs
    true_train = planted_rewards(train, truth, images)
    true_test = planted_rewards(test, truth, images)
    img_train, txt_train = train.item_features(store)
    model = fit_supervised_phi(
        img_train,
        txt_train,
        true_train,
        acc_params["ceiling"],
        bool(params["pasta"]["interaction"]),
        seed,
    )
    with torch.no_grad():
        sup_train = model.phi(img_train, txt_train).double().numpy()
        sup_test = model.phi(*test.item_features(store)).double().numpy()
    r2 = r_squared(sup_test, true_test)
    correct = {
        "pipe_supervised_phi": pipe_correct(sup_train, sup_test, train, test, params["lambda"]),
        "pipe_true_phi": pipe_correct(true_train, true_test, train, test, params["lambda"]),
    }
    table = ceiling_table(
        pd.read_csv(accuracy_path),
        correct,
        test,
        int(acc_params["bootstrap"]),
        seed,
        float(acc_params["ci_level"]),
    )
    return table, r2, list(truth.type_names)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--truth", required=True, help="data/truth/")
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument("--accuracy", required=True, help="tables/preference_accuracy.csv")
    parser.add_argument("--table", required=True, help="tables/user_model_ceiling.csv")
    parser.add_argument("--threads", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    table, r2, names = compute(
        args.features, args.train, args.test, args.truth, args.images, args.accuracy, args.params
    )
    level = float(args.params["preference_accuracy"]["ci_level"])
    r2_text = ", ".join(f"{n} {v:.2f}" for n, v in zip(names, r2, strict=True))
    caption = (
        f"Where PIPE's preference accuracy is lost (synthetic world): λ_u fitted as in "
        f"fit_lambda on better φ; {level:.0%} user-bootstrap CIs; gap_closed = share of "
        f"the population→oracle gap. Supervised φ held-out R² per planted type: "
        f"{r2_text}. Stand-in CLIP features."
    )
    write_table(table, Path(args.table).with_suffix(""), caption=caption)
    log.info("user-model ceiling:\n%s\nR² %s", table.to_string(index=False), r2_text)
