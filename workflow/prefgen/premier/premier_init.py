"""``premier-init``: the initial learnable user embeddings of Premier's training users.

Premier learns one ``[T, D]`` embedding per training user jointly with its preference adapters.
The shared trainer (``train_adapter``) builds a method's conditioning from the method's
embedding file, so Premier's starting point is written here, as an ordinary embedding file:
``user_ids [U]`` (exactly the users the trainer trains on: ``adapter_pairs.training_pairs``,
i.e. PIPE train pairs without ties, minus the held-out users of ``splits/ppd/test_unseen``) and
``emb [U, T·D]`` (seeded normal × ``init_std``, flattened to the ``[U, D]`` layout of
docs/interfaces.md). Its safetensors metadata (``premier_options``) carries the adapter sizes
and dispersion weights, so the conditioning can be rebuilt from the file alone and a change of
any ``premier`` key reruns training (the file changes).

The embeddings depend only on the training seed (``train.seeds``) and the users, not on the
dispersion weights: the ablation without the dispersion loss starts from the same embeddings.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pandas as pd
import torch

from prefgen.core.io import save_tensors
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed, training_seed
from prefgen.generation.adapter_pairs import training_pairs
from prefgen.premier.modulation import OPTIONS_KEY
from prefgen.premier.user_tokens import bytes_per_user

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, help="splits/pipe/train.parquet")
    parser.add_argument("--holdout", required=True, help="splits/ppd/test_unseen.parquet")
    parser.add_argument("--out", required=True, help="embeddings/premier_init*.safetensors")


def premier_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``premier`` config keys the conditioning needs, in the form it reads them."""
    return {
        "user_tokens": int(cfg["user_tokens"]),
        "user_dim": int(cfg["user_dim"]),
        "adapter_dim": int(cfg["adapter"]["dim"]),
        "adapter_layers": int(cfg["adapter"]["layers"]),
        "adapter_heads": int(cfg["adapter"]["heads"]),
        "out_init_std": float(cfg["adapter"]["out_init_std"]),
        "dispersion": {k: float(v) for k, v in cfg["dispersion"].items()},
    }


def initial_embeddings(
    user_ids: list[int], tokens: int, dim: int, init_std: float, seed: int
) -> torch.Tensor:
    """``[U, T, D]`` seeded normal × ``init_std`` (one stream for the whole table)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "premier", "init"))
    return torch.randn(len(user_ids), tokens, dim, generator=gen) * init_std


def run(args: argparse.Namespace) -> None:
    p = args.params
    cfg, seed = p["premier"], training_seed(p)  # part of the replicate's initialisation
    pairs = training_pairs(
        pd.read_parquet(args.pairs), pd.read_parquet(args.holdout), args.pairs, args.holdout
    )
    users = sorted(int(u) for u in pairs["user_id"].unique())
    options = premier_options(cfg)
    emb = initial_embeddings(
        users, options["user_tokens"], options["user_dim"], float(cfg["init_std"]), seed
    )
    save_tensors(
        {"user_ids": torch.tensor(users, dtype=torch.int64), "emb": emb.reshape(len(users), -1)},
        args.out,
        metadata={
            OPTIONS_KEY: json.dumps(options, sort_keys=True),
            "method": "premier",
            "num_tokens": str(options["user_tokens"]),
            "dim": str(options["user_dim"]),
        },
    )
    log.info(
        "premier-init: %d training users x [%d, %d] (%d bytes per user), dispersion %s",
        len(users),
        options["user_tokens"],
        options["user_dim"],
        bytes_per_user(options["user_tokens"], options["user_dim"]),
        options["dispersion"],
    )
