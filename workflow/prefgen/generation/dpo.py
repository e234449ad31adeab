"""The Diffusion-DPO loss (Wallace et al. 2024; PPD Eq. 6 with a user), as a pure function.

Convention: diffusers' SDXL Diffusion-DPO script,

    inside = -0.5 * beta * ((l_w - l_l) - (ref_w - ref_l)),   loss = -log sigmoid(inside),

where ``l_w``/``l_l`` are the per-sample mean squared errors (``generation/denoising.py``: to
ε or v, per the scheduler) of the trained model's prediction on the preferred/dispreferred
latents and ``ref_*`` those of the reference model, all at the *same* noise and timestep for
the two images of a pair. ``beta`` is a plain float
(the paper's ``beta * T * omega(lambda_t)`` folded into one constant). The factor 0.5 and the
per-pixel *mean* (not sum) make the useful ``beta`` scale with neither the latent size nor the
SD1.5-script's convention (``-logsigmoid(beta * (ref_diff - model_diff))``, i.e. that script's
beta equals 0.5 × ours).

Layout: ``model_pred``, ``ref_pred`` and ``target`` stack the winners first, then the losers
(``[2B, ...]``, row ``i`` and ``B + i`` are one pair), as the diffusers scripts do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefgen.generation.denoising import per_sample_mse


@dataclass
class DPOTerms:
    """The loss and what to log about it (all scalars are batch means)."""

    loss: torch.Tensor  # scalar, differentiable w.r.t. model_pred
    inside: torch.Tensor  # [B] the logit; > 0 means the implicit reward ranks the pair right
    implicit_acc: torch.Tensor  # share of pairs with inside > 0 (a tie counts one half)
    model_loss_w: torch.Tensor  # mean denoising MSE of the model, preferred images
    model_loss_l: torch.Tensor  # ... dispreferred images
    ref_loss_w: torch.Tensor  # the reference model's, preferred
    ref_loss_l: torch.Tensor  # the reference model's, dispreferred

    def log_dict(self) -> dict[str, float]:
        """Plain floats for the training log."""
        return {
            "loss": float(self.loss.detach()),
            "implicit_acc": float(self.implicit_acc),
            "model_loss_w": float(self.model_loss_w),
            "model_loss_l": float(self.model_loss_l),
            "ref_loss_w": float(self.ref_loss_w),
            "ref_loss_l": float(self.ref_loss_l),
            "model_loss": float((self.model_loss_w + self.model_loss_l) / 2),
            "ref_loss": float((self.ref_loss_w + self.ref_loss_l) / 2),
        }


def diffusion_dpo_loss(
    model_pred: torch.Tensor, ref_pred: torch.Tensor, target: torch.Tensor, beta: float
) -> DPOTerms:
    """Diffusion-DPO on a batch of pairs (see the module docstring for the convention).

    ``ref_pred`` is treated as a constant (detached): the reference never receives gradients.
    """
    if model_pred.shape != target.shape or ref_pred.shape != target.shape:
        raise ValueError(
            f"diffusion_dpo_loss: shapes differ: model {tuple(model_pred.shape)}, "
            f"ref {tuple(ref_pred.shape)}, target {tuple(target.shape)}"
        )
    if target.shape[0] % 2:
        raise ValueError(f"diffusion_dpo_loss: batch {target.shape[0]} is not winners+losers")
    model_losses = per_sample_mse(model_pred, target)
    ref_losses = per_sample_mse(ref_pred.detach(), target)
    model_w, model_l = model_losses.chunk(2)
    ref_w, ref_l = ref_losses.chunk(2)
    inside = -0.5 * float(beta) * ((model_w - model_l) - (ref_w - ref_l))
    loss = -F.logsigmoid(inside).mean()
    acc = ((inside > 0).float() + 0.5 * (inside == 0).float()).mean().detach()
    return DPOTerms(
        loss=loss,
        inside=inside.detach(),
        implicit_acc=acc,
        model_loss_w=model_w.mean().detach(),
        model_loss_l=model_l.mean().detach(),
        ref_loss_w=ref_w.mean().detach(),
        ref_loss_l=ref_l.mean().detach(),
    )
