"""The one denoising objective (``prefgen.generation.denoising``), for both prediction types."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from prefgen.generation.denoising import (
    batch_mse,
    denoising_target,
    noisy_and_target,
    per_sample_mse,
)


def _draws(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(6, 4, 8, 8, generator=gen)
    noise = torch.randn(6, 4, 8, 8, generator=gen)
    t = torch.randint(0, 1000, (6,), generator=gen)
    return latents, noise, t


def _scheduler(kind: str) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)


def test_epsilon_target_is_the_noise() -> None:
    sched = _scheduler("epsilon")
    latents, noise, t = _draws()
    noisy, target = noisy_and_target(sched, latents, noise, t)
    assert torch.equal(target, noise)
    assert torch.equal(noisy, sched.add_noise(latents, noise, t))
    assert not torch.equal(noisy, latents)


def test_v_prediction_target_is_the_schedulers_velocity() -> None:
    sched = _scheduler("v_prediction")
    latents, noise, t = _draws()
    noisy, target = noisy_and_target(sched, latents, noise, t)
    assert torch.equal(target, sched.get_velocity(latents, noise, t))
    assert torch.equal(noisy, sched.add_noise(latents, noise, t))
    # v = alpha_t * noise - sigma_t * x0: not the noise, and it differs row by row with t
    assert not torch.allclose(target, noise)
    a = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(target, a * noise - s * latents)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_a_perfect_predictor_has_zero_loss_and_the_other_type_does_not(kind: str) -> None:
    sched = _scheduler(kind)
    other = _scheduler("v_prediction" if kind == "epsilon" else "epsilon")
    latents, noise, t = _draws(1)
    _, target = noisy_and_target(sched, latents, noise, t)
    perfect = target.clone()  # a model that predicts exactly what this objective asks for
    assert torch.equal(per_sample_mse(perfect, target), torch.zeros(6))
    assert float(batch_mse(perfect, target)) == 0.0
    wrong = denoising_target(other, latents, noise, t)
    assert bool((per_sample_mse(wrong, target) > 0).all())


def test_per_sample_and_batch_means_agree() -> None:
    latents, noise, _ = _draws(2)
    per = per_sample_mse(latents, noise)
    assert per.shape == (6,)
    torch.testing.assert_close(per, ((latents - noise) ** 2).mean((1, 2, 3)))
    torch.testing.assert_close(batch_mse(latents, noise), per.mean())


def test_an_unsupported_prediction_type_is_named() -> None:
    sched = _scheduler("sample")
    latents, noise, t = _draws()
    with pytest.raises(ValueError, match="'sample'"):
        noisy_and_target(sched, latents, noise, t)


@pytest.mark.parametrize(("warmup", "start"), [(7, 0), (7, 4), (7, 9), (0, 0), (1, 3)])
def test_trainer_lr_warms_up_linearly_then_stays_and_resumes_mid_schedule(
    warmup: int, start: int
) -> None:
    from prefgen.generation.train_adapter import warmup_schedule

    lr, steps = 3e-4, 12
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([param], lr=lr)
    opt.param_groups[0]["lr"] = 123.0  # a resumed optimizer carries some mid-run lr
    sched = warmup_schedule(opt, lr, warmup, start)
    seen = []
    for _ in range(start + 1, steps + 1):
        seen.append(opt.param_groups[0]["lr"])
        param.grad = torch.ones(3)
        opt.step()
        sched.step()
    expected = [lr * min(1.0, s / max(1, warmup)) for s in range(start + 1, steps + 1)]
    assert seen == expected
