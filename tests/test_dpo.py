"""Diffusion-DPO: the pure loss on hand-made tensors, and a short training run that learns.

The run uses the real trainer (``generation.train_adapter.train``) on a tiny untrained pipeline
and the fixture world whose users prefer bright (odd ids) or dark (even ids) images; the check
is on a *fixed* evaluation batch before and after training, so it measures learning, not the
noise of per-step logs.
"""

from __future__ import annotations

import math

import pytest
import torch
from prefgen.generation.denoising import per_sample_mse
from prefgen.generation.dpo import diffusion_dpo_loss


def test_equal_model_and_reference_give_log2_and_half_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(8, 4, 2, 2, generator=g)
    pred = torch.randn(8, 4, 2, 2, generator=g)
    terms = diffusion_dpo_loss(pred, pred.clone(), target, beta=100.0)
    assert terms.loss.item() == pytest.approx(math.log(2.0), abs=1e-7)
    assert terms.implicit_acc.item() == pytest.approx(0.5)


def test_matches_the_sdxl_script_formula() -> None:
    """-logsigmoid(-0.5·β·((l_w − l_l) − (ref_w − ref_l))) with per-sample mean MSE."""
    g = torch.Generator().manual_seed(1)
    target, pred, ref = (torch.randn(6, 4, 3, 3, generator=g) for _ in range(3))
    beta = 37.5
    lw, ll = per_sample_mse(pred, target).chunk(2)
    rw, rl = per_sample_mse(ref, target).chunk(2)
    inside = -0.5 * beta * ((lw - ll) - (rw - rl))
    expected = -torch.nn.functional.logsigmoid(inside).mean()
    terms = diffusion_dpo_loss(pred, ref, target, beta)
    assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms.implicit_acc.item() == pytest.approx((inside > 0).float().mean().item())
    assert terms.model_loss_w.item() == pytest.approx(lw.mean().item(), rel=1e-6)
    assert terms.ref_loss_l.item() == pytest.approx(rl.mean().item(), rel=1e-6)


def test_winner_fit_better_than_reference_lowers_the_loss_and_ref_gets_no_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.randn(4, 4, 2, 2, generator=g)
    ref = (target + 0.5 * torch.randn(4, 4, 2, 2, generator=g)).requires_grad_(True)
    pred = ref.detach().clone()
    pred[:2] = target[:2] + 0.1 * (ref[:2].detach() - target[:2])  # winners denoised better
    pred.requires_grad_(True)
    terms = diffusion_dpo_loss(pred, ref, target, beta=50.0)
    assert terms.loss.item() < math.log(2.0)
    assert terms.implicit_acc.item() == 1.0
    terms.loss.backward()
    assert ref.grad is None
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        diffusion_dpo_loss(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="winners\\+losers"):
        diffusion_dpo_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), 1.0)


@torch.no_grad()
def fixed_batch_terms(model: torch.nn.Module, schedule, beta: float) -> tuple[float, float]:
    """Mean DPO loss and implicit accuracy over 8 fixed micro-batches of the training pairs
    (fixed noise and timesteps; the same for every model evaluated)."""
    from prefgen.generation.dpo import diffusion_dpo_loss

    losses, accs = [], []
    for micro in range(8):
        batch = schedule.batch(10_000 + micro, 0, 1)
        pred, ref, target = model(**batch)
        terms = diffusion_dpo_loss(pred, ref, target, beta)
        losses.append(terms.loss.item())
        accs.append(terms.implicit_acc.item())
    return sum(losses) / len(losses), sum(accs) / len(accs)


def dpo_model(foundation, method_cfg, adapter=None):
    from diffusers import DDPMScheduler
    from prefgen.core.io import load_tensors
    from prefgen.generation.adapters import build_conditioning
    from prefgen.generation.models import load_pipeline
    from prefgen.generation.train_adapter import DPOModel

    pipe = load_pipeline(foundation)
    cond = build_conditioning(pipe.unet, method_cfg, None)
    if adapter is not None:
        cond.load_adapter_state_dict(load_tensors(adapter))
    return DPOModel(pipe.unet, cond, DDPMScheduler.from_config(pipe.scheduler.config))


def test_short_run_lowers_loss_and_raises_implicit_accuracy(tmp_path_factory) -> None:
    """Population DPO (``dpo``) on pairs where everyone prefers the brighter image: after 40
    steps the loss on training pairs is below log 2 and the implicit accuracy above 0.5."""
    from prefgen.generation.models import add_time_ids, load_pipeline
    from prefgen.generation.train_adapter import BatchSchedule, TrainData, train

    from tests.generation_helpers import shared_setup, smoke_config

    setup = shared_setup(tmp_path_factory, "population")
    data = TrainData.load(
        str(setup["encoded"]),
        str(setup["image_index"]),
        str(setup["caption_index"]),
        str(setup["pipe_train"]),
        str(setup["holdout"]),
    )
    cfg = smoke_config()["train"] | {
        "steps": 40,
        "batch_size": 16,
        "lr": 1e-3,
        "checkpoint_every": 40,
        "beta": 500.0,
    }
    method_cfg = cfg["methods"]["dpo"]
    pipe = load_pipeline(setup["foundation"])
    out = setup["root"] / "adapters" / "dpo-learns"
    result = train(pipe, data, None, "dpo", method_cfg, cfg, seed=0, out_dir=out, fp="test")
    schedule = BatchSchedule(
        data, 0, 16, add_time_ids(pipe, 1), pipe.scheduler.config.num_train_timesteps
    )
    loss0, acc0 = fixed_batch_terms(
        dpo_model(setup["foundation"], method_cfg), schedule, cfg["beta"]
    )
    loss1, acc1 = fixed_batch_terms(
        dpo_model(setup["foundation"], method_cfg, out / "checkpoint-40" / "adapter.safetensors"),
        schedule,
        cfg["beta"],
    )
    assert loss0 == pytest.approx(math.log(2.0), abs=1e-6)  # untrained adapter = reference
    assert acc0 == pytest.approx(0.5)
    assert loss1 < loss0 - 0.03, (loss0, loss1)
    assert acc1 > 0.6, (acc0, acc1)
    assert result["complete"] and result["checkpoints"][-1]["step"] == 40


def test_gradient_checkpointing_recomputes_blocks_and_keeps_the_weights(tmp_path_factory) -> None:
    """``train.gradient_checkpointing`` (paper: on, for SDXL's activations) must change memory,
    not results: the UNet's blocks run again in the backward pass (counted with a forward hook:
    reference + policy + recompute = 3 calls per micro-batch, 2 without), and three steps end at
    the same adapter weights as without it (tolerance 1e-6: recomputation repeats the same ops)."""
    from prefgen.core.io import load_tensors
    from prefgen.generation.models import load_pipeline
    from prefgen.generation.train_adapter import TrainData, train

    from tests.generation_helpers import shared_setup, smoke_config

    setup = shared_setup(tmp_path_factory, "population")
    data = TrainData.load(
        str(setup["encoded"]),
        str(setup["image_index"]),
        str(setup["caption_index"]),
        str(setup["pipe_train"]),
        str(setup["holdout"]),
    )
    weights, calls = {}, {}
    for on in (False, True):
        cfg = smoke_config()["train"] | {
            "steps": 3,
            "batch_size": 8,
            "lr": 1e-3,
            "checkpoint_every": 3,
            "gradient_checkpointing": on,
        }
        pipe = load_pipeline(setup["foundation"])
        # count calls of a block downstream of the adapter (only what needs grad is recomputed);
        # a wrapped forward, since torch's recomputation does not fire forward hooks
        block, count = pipe.unet.up_blocks[-1].resnets[0], [0]

        def counted(*args, inner=block.forward, count=count, **kwargs):
            count[0] += 1
            return inner(*args, **kwargs)

        block.forward = counted
        out = setup["root"] / "adapters" / f"checkpointing-{on}"
        train(pipe, data, None, "dpo", cfg["methods"]["dpo"], cfg, seed=0, out_dir=out, fp="t")
        weights[on] = load_tensors(out / "checkpoint-3" / "adapter.safetensors")
        calls[on] = count[0]
    assert calls == {False: 2 * 3, True: 3 * 3}
    assert weights[False].keys() == weights[True].keys()
    for name, value in weights[False].items():  # tolerance: see the docstring
        torch.testing.assert_close(value, weights[True][name], rtol=0, atol=1e-6, msg=name)
    assert any(v.abs().sum() > 0 for k, v in weights[True].items() if "to_v_ip" in k)
