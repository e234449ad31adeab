"""The fitted user models as judges: score raw RGB images for users (used by ``judge``).

``UserModelScorer.from_run(results/<run>)`` loads what the user-model stages wrote (the frozen
CLIP, the PASTA type heads φ, the population reward model and every user's λ) and scores any
images, generated ones included, with the same preprocessing the features stage used:

- ``pipe(images, captions, user_ids)``: the PIPE user model r_u = λ_uᵀ φ(c, x) (PIPE Eq. 1),
  the paper's primary automated judge;
- ``population(images, captions)``: the K = 1 reward model (our PickScore analogue);
- ``clip_score(images, captions)``: CLIPScore, 100 · max(cos(img, txt), 0);
- ``types(images, captions)``: the K type rewards φ themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from prefgen.user_model.clip import ImageBatch
from prefgen.user_model.features import ClipEmbedder
from prefgen.user_model.lambda_fit import lambda_matrix, read_lambdas
from prefgen.user_model.pasta import RewardModel, load_reward_model


class UserModelScorer:
    """Scores images for users with the fitted user models (all frozen, CPU by default)."""

    def __init__(
        self,
        embedder: ClipEmbedder,
        pasta: RewardModel,
        population: RewardModel,
        lambdas_path: str | Path,
    ) -> None:
        self.embedder = embedder
        self.pasta = pasta
        self.population_model = population
        self.lambdas_path = Path(lambdas_path)
        self.lambdas = read_lambdas(lambdas_path)

    @classmethod
    def from_run(cls, run_dir: str | Path, batch_size: int = 256) -> UserModelScorer:
        """Load ``models/clip``, ``user_model/{pasta,population}.safetensors``, ``lambda``."""
        run = Path(run_dir)
        return cls(
            ClipEmbedder(run / "models" / "clip", batch_size),
            load_reward_model(run / "user_model" / "pasta.safetensors"),
            load_reward_model(run / "user_model" / "population.safetensors"),
            run / "user_model" / "lambda.parquet",
        )

    def embed(
        self, images: ImageBatch, captions: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen CLIP embeddings of the images and their captions (one caption per image)."""
        if len(images) != len(captions):
            raise ValueError(f"scorer: {len(images)} images but {len(captions)} captions")
        img = self.embedder.images(images)
        # embed each distinct caption once (a judge scores many images per prompt)
        uniq, inv = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
        txt = self.embedder.captions(list(uniq))[torch.from_numpy(inv.astype(np.int64))]
        return img, txt

    @torch.no_grad()
    def types(self, images: ImageBatch, captions: Sequence[str]) -> np.ndarray:
        """``[N,K]`` type rewards φ(c, x)."""
        img, txt = self.embed(images, captions)
        return self.pasta.phi(img, txt).double().numpy()

    @torch.no_grad()
    def pipe(
        self, images: ImageBatch, captions: Sequence[str], user_ids: Sequence[int] | np.ndarray
    ) -> np.ndarray:
        """``[N]`` PIPE rewards λ_{u_i}ᵀ φ(c_i, x_i) (error naming a user without a fitted λ)."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if len(user_ids) != len(images):
            raise ValueError(f"scorer: {len(images)} images but {len(user_ids)} user ids")
        lam = lambda_matrix(self.lambdas, user_ids, where=str(self.lambdas_path))
        return np.einsum("nk,nk->n", self.types(images, captions), lam)

    @torch.no_grad()
    def population(self, images: ImageBatch, captions: Sequence[str]) -> np.ndarray:
        """``[N]`` population reward (the same for every user)."""
        img, txt = self.embed(images, captions)
        return self.population_model.phi(img, txt)[:, 0].double().numpy()

    @torch.no_grad()
    def clip_score(self, images: ImageBatch, captions: Sequence[str]) -> np.ndarray:
        """``[N]`` CLIPScore = 100 · max(cos(image, caption), 0) with the run's CLIP."""
        img, txt = self.embed(images, captions)
        return (100.0 * (img * txt).sum(1).clamp_min(0.0)).double().numpy()
