"""The one denoising objective: what the UNet is trained to predict, and how far off it is.

Used by every trainer of the study: the stand-in foundation (``generation/foundation.py``), the
Diffusion-DPO adapter trainer (``generation/train_adapter.py``, through ``generation/dpo.py``)
and Premier (``premier/modulation.py``: its denoising loss on liked images, stage 2 and the
held-out loss of its analyses). The target follows the scheduler's ``prediction_type``, as
diffusers' training scripts do:

- ``epsilon``: the noise itself;
- ``v_prediction``: ``scheduler.get_velocity(latents, noise, timesteps)``
  (``alpha_t * noise - sigma_t * latents``).

The noisy input is always ``scheduler.add_noise(latents, noise, timesteps)`` (a
``DDPMScheduler``, or any scheduler with the same two methods). The loss is the mean squared
error per example (``[N]``, the form Diffusion-DPO and Premier need) or over the whole batch
(one number: the foundation's loss).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

#: the scheduler ``prediction_type`` values this objective supports
PREDICTION_TYPES = ("epsilon", "v_prediction")


def denoising_target(
    scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should output for ``add_noise(latents, noise, timesteps)``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(
        f"unsupported scheduler prediction_type {kind!r}; the denoising objective "
        f"supports {list(PREDICTION_TYPES)}"
    )


def noisy_and_target(
    scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noisy latents, target)``: the UNet's input and what it should predict from it."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return noisy, denoising_target(scheduler, latents, noise, timesteps)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every dimension but the batch: ``[N, ...] -> [N]`` (float32)."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def batch_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element of the batch (a scalar).

    Equal to ``per_sample_mse(pred, target).mean()`` up to float rounding (every example has
    the same size); a separate reduction because the foundation has always trained with it.
    """
    return F.mse_loss(pred.float(), target.float())
