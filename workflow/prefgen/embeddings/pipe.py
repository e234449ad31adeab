"""``user_embeddings``: the PIPE user representation E_u = λ_uᵀW (PIPE §2.3, Eq. 3).

λ_u (``user_model/lambda.parquet``, PIPE Eq. 2) weighs the K PASTA user types; W ``[K, H]`` is the
final layer of the PASTA reward model φ(c, x) = W h(c, x). So E_u ``[H]`` is the one vector whose
inner product with the trunk features h(c, x) is the user's own reward: r_u = λ_uᵀW h = E_uᵀh.
Every user in ``lambda.parquet`` gets one, held-out ("unseen") users included: their λ is fitted
from their own pairs, which is how PIPE onboards a new user without retraining the adapter.

Writes ``embeddings/pipe.safetensors``: ``user_ids [U] int64``, ``emb [U, H] float32``.
"""

from __future__ import annotations

import argparse
import re

import numpy as np
import pandas as pd
import torch

from prefgen.core.io import save_tensors
from prefgen.core.logging import get_logger

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pasta", required=True, help="user_model/pasta.safetensors")
    parser.add_argument("--lambdas", required=True, help="user_model/lambda.parquet")
    parser.add_argument("--out", required=True, help="embeddings/pipe.safetensors")


def read_lambdas(path: str, n_types: int) -> tuple[np.ndarray, np.ndarray]:
    """``(user_ids [U], λ [U, K])`` from ``lambda.parquet``, checking K against W."""
    df = pd.read_parquet(path)
    cols = sorted(
        (c for c in df.columns if re.fullmatch(r"lambda_\d+", c)),
        key=lambda c: int(c.split("_")[1]),
    )
    expected = [f"lambda_{k}" for k in range(n_types)]
    if "user_id" not in df.columns or cols != expected:
        raise ValueError(
            f"{path}: expected columns user_id, {', '.join(expected)} (K={n_types} "
            f"from the PASTA model's W), found {list(df.columns)}"
        )
    lam = df[expected].to_numpy(np.float64)
    if not np.isfinite(lam).all():
        bad = df.loc[~np.isfinite(lam).all(1), "user_id"].iloc[0]
        raise ValueError(f"{path}: non-finite λ for user_id {bad}")
    if df["user_id"].duplicated().any():
        dup = df.loc[df["user_id"].duplicated(), "user_id"].iloc[0]
        raise ValueError(f"{path}: duplicate user_id {dup}")
    return df["user_id"].to_numpy(np.int64), lam


def pipe_embeddings(lam: np.ndarray, W: torch.Tensor) -> torch.Tensor:
    """E = Λ W: row u is E_u = λ_uᵀW (``[U, K] @ [K, H] -> [U, H]``)."""
    return torch.tensor(lam, dtype=torch.float64) @ W.detach().to(torch.float64)


def run(args: argparse.Namespace) -> None:
    from prefgen.user_model.pasta import load_reward_model

    W = load_reward_model(args.pasta).W
    user_ids, lam = read_lambdas(args.lambdas, int(W.shape[0]))
    emb = pipe_embeddings(lam, W).float()
    save_tensors(
        {"user_ids": torch.from_numpy(user_ids), "emb": emb},
        args.out,
        metadata={
            "definition": "E_u = lambda_u^T W (PIPE Eq. 3)",
            "n_types": str(W.shape[0]),
            "dim": str(W.shape[1]),
        },
    )
    log.info(
        "PIPE embeddings: %d users x %d dims (W %s), |E| mean %.3f",
        len(user_ids),
        emb.shape[1],
        tuple(W.shape),
        float(emb.norm(dim=1).mean()),
    )
