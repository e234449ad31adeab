"""Premier user embeddings (Premier §4, §4.3): a learnable ``[T, D]`` tensor per training user,
and new users represented as linear combinations of those tensors.

Why two modules: in stage 1 every training user owns a free tensor that is trained jointly
with the preference adapter. In stage 2 a user outside training has only a few liked images;
Premier fits only the coefficients ``w`` of ``e_new = Σ_k w_k e_k`` over the (frozen)
training-user tensors, which is far fewer numbers than a free tensor and therefore stabler on
a short history. :class:`UserEmbeddingTable` serves both stage 1 and the "free embedding"
arm of the stage-2 comparison; :class:`CombinationEmbedding` is the stage-2 arm Premier uses.

This module holds only the tensors and their file format; the losses that train them live in
``prefgen.premier.modulation``, so this module stays free of diffusion code.

File format (``embeddings/premier*.safetensors``): ``user_ids [U] int64`` and ``emb [U, T, D]``
float32, plus metadata ``{"method": "premier", "num_tokens": T, "dim": D}``. Unlike PIPE/PPD
(``emb [U, D]``) a Premier user is several tokens, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from prefgen.core.io import load_tensors, save_tensors


class UserEmbeddingTable(nn.Module):
    """One learnable ``[T, D]`` embedding per user, looked up by Pick-a-Pic ``user_id``.

    Initialised from a seeded normal with standard deviation ``init_std`` (Premier initialises
    each embedding as a random tensor; the preference adapter normalises its keys/values, so the
    scale only sets the starting step size).
    """

    def __init__(
        self,
        user_ids: Sequence[int],
        num_tokens: int,
        dim: int,
        init_std: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        ids = torch.as_tensor(list(user_ids), dtype=torch.int64)
        if ids.numel() == 0:
            raise ValueError("UserEmbeddingTable needs at least one user_id")
        if torch.unique(ids).numel() != ids.numel():
            raise ValueError("UserEmbeddingTable: user_ids contain duplicates")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("user_ids", ids, persistent=False)
        self.weight = nn.Parameter(torch.randn(len(ids), num_tokens, dim, generator=gen) * init_std)
        self._row = {int(u): i for i, u in enumerate(ids.tolist())}

    @classmethod
    def from_tensors(cls, user_ids: torch.Tensor, emb: torch.Tensor) -> UserEmbeddingTable:
        """A table holding given embeddings (e.g. loaded from a checkpoint)."""
        if emb.ndim != 3 or emb.shape[0] != user_ids.numel():
            raise ValueError(
                f"expected emb [U, T, D] with U={user_ids.numel()}, got {tuple(emb.shape)}"
            )
        table = cls(user_ids.tolist(), emb.shape[1], emb.shape[2])
        with torch.no_grad():
            table.weight.copy_(emb)
        return table

    @property
    def num_tokens(self) -> int:
        return int(self.weight.shape[1])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[2])

    def index_of(self, user_id: int) -> int | None:
        """Row of ``user_id``, or None if the table has no such user."""
        return self._row.get(int(user_id))

    def rows(self, user_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Row indices of ``user_ids``; an unknown id is an error naming it."""
        ids = user_ids.tolist() if isinstance(user_ids, torch.Tensor) else list(user_ids)
        missing = [u for u in ids if int(u) not in self._row]
        if missing:
            raise KeyError(
                f"user_id(s) {missing[:5]} have no Premier embedding "
                f"({len(self._row)} users in the table)"
            )
        return torch.as_tensor(
            [self._row[int(u)] for u in ids], dtype=torch.int64, device=self.weight.device
        )

    def forward(self, user_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` embeddings of ``user_ids``."""
        return self.weight[self.rows(user_ids)]


class CombinationEmbedding(nn.Module):
    """New users as ``e_new = Σ_k w_k e_k`` over frozen training-user embeddings (Premier §4.3).

    Only ``weights [N_new, K]`` is a parameter; the basis ``[K, T, D]`` is a buffer, so an
    optimiser over ``parameters()`` can never move a training user's embedding. The weights
    start at ``1/K`` (the mean training user), unconstrained as in the paper ("linear
    combination").
    """

    def __init__(self, user_ids: Sequence[int], basis: torch.Tensor) -> None:
        super().__init__()
        if basis.ndim != 3:
            raise ValueError(f"basis must be [K, T, D], got {tuple(basis.shape)}")
        k = basis.shape[0]
        self.register_buffer("basis", basis.detach().clone(), persistent=False)
        self.register_buffer(
            "user_ids", torch.as_tensor(list(user_ids), dtype=torch.int64), persistent=False
        )
        self.weights = nn.Parameter(torch.full((len(self.user_ids), k), 1.0 / k))
        self._row = {int(u): i for i, u in enumerate(self.user_ids.tolist())}

    def rows(self, user_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        ids = user_ids.tolist() if isinstance(user_ids, torch.Tensor) else list(user_ids)
        missing = [u for u in ids if int(u) not in self._row]
        if missing:
            raise KeyError(f"user_id(s) {missing[:5]} are not among the new users being fitted")
        return torch.as_tensor(
            [self._row[int(u)] for u in ids], dtype=torch.int64, device=self.weights.device
        )

    def embeddings(self) -> torch.Tensor:
        """``[N_new, T, D]`` embeddings of all new users."""
        return torch.einsum("nk,ktd->ntd", self.weights, self.basis)

    def forward(self, user_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        w = self.weights[self.rows(user_ids)]
        return torch.einsum("bk,ktd->btd", w, self.basis)


def save_user_embeddings(
    path: str | Path,
    user_ids: torch.Tensor,
    emb: torch.Tensor,
    extra_metadata: dict[str, str] | None = None,
) -> None:
    """Write ``user_ids [U] int64`` and ``emb [U, T, D]`` float32 as safetensors (atomic)."""
    if emb.ndim != 3 or emb.shape[0] != user_ids.numel():
        raise ValueError(
            f"expected emb [U, T, D] with U={user_ids.numel()}, got {tuple(emb.shape)}"
        )
    meta = {"method": "premier", "num_tokens": str(emb.shape[1]), "dim": str(emb.shape[2])}
    meta.update(extra_metadata or {})
    save_tensors({"user_ids": user_ids.to(torch.int64), "emb": emb.float()}, path, metadata=meta)


def load_user_embeddings(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(user_ids [U] int64, emb [U, T, D])`` from a Premier embedding file."""
    tensors = load_tensors(path)
    for key in ("user_ids", "emb"):
        if key not in tensors:
            raise KeyError(f"{path}: missing tensor '{key}' (expected user_ids [U], emb [U,T,D])")
    ids, emb = tensors["user_ids"], tensors["emb"]
    if emb.ndim != 3 or emb.shape[0] != ids.numel():
        raise ValueError(
            f"{path}: emb has shape {tuple(emb.shape)}, expected [{ids.numel()}, T, D]"
        )
    return ids.to(torch.int64), emb


def bytes_per_user(num_tokens: int, dim: int, dtype: torch.dtype = torch.float32) -> int:
    """Storage of one user's embedding (Premier reports 61 KB per user for FLUX)."""
    return num_tokens * dim * torch.empty((), dtype=dtype).element_size()
