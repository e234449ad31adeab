"""One seed from the config drives every random choice, so the same config gives the same tables."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def derive_seed(seed: int, *names: str | int) -> int:
    """A stable 63-bit seed for a named sub-stream (e.g. ``derive_seed(seed, "split", "pipe")``).

    Hashing the names keeps streams independent: adding a new consumer never shifts the random
    numbers another stage draws.
    """
    key = ":".join([str(seed), *map(str, names)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def rng(seed: int, *names: str | int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *names))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (torch only if already importable) for one process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def training_seed(params: dict) -> int:
    """The seed of one training replicate: ``derive_seed(seed, "train_seed", train_seed)`` when
    the params carry a ``train_seed`` (an entry of ``train.seeds``), else the run seed.

    Everything upstream of training (splits, user models, embeddings, foundation) reads the run
    seed; a trained generation method's initialisation and data order read this one, so the
    replicates of ``train.seeds`` are independent draws of the same training procedure.
    """
    seed = int(params["seed"])
    if params.get("train_seed") is None:
        return seed
    return derive_seed(seed, "train_seed", int(params["train_seed"]))
