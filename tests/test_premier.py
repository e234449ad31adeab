"""Premier: token-wise modulation, dispersion loss, new users as combinations.

Unit tests run against a tiny SDXL-architecture UNet built from a config here (seconds on CPU);
the last test runs the shared trainer itself on a tiny pipeline.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from prefgen.core.io import save_tensors
from prefgen.generation.adapters import UserBatch, UserEmbeddings, build_conditioning
from prefgen.premier.modulation import (
    MASK_KEY,
    OPTIONS_KEY,
    USERS_KEY,
    LikedImages,
    PremierConditioning,
    PremierController,
    PremierModulator,
    PremierSpec,
    cross_attention_names,
    denoising_loss,
    dispersion_loss,
    fit_new_users,
)
from prefgen.premier.premier_ablation import cross_user_distances
from prefgen.premier.premier_new_users import liked_history
from prefgen.premier.user_tokens import (
    CombinationEmbedding,
    UserEmbeddingTable,
    load_user_embeddings,
    save_user_embeddings,
)

TEXT_DIM, SEQ, POOLED = 16, 5, 16
TIME_IDS = torch.tensor([[8.0, 8, 0, 0, 8, 8]])
OPTIONS = {
    "user_tokens": 2,
    "user_dim": 8,
    "adapter_dim": 16,
    "adapter_layers": 2,
    "adapter_heads": 2,
    "out_init_std": 0.05,
    "dispersion": {"weight_shared": 0.1, "weight_distinct": 0.1, "temperature": 1.0},
}


def tiny_unet() -> UNet2DConditionModel:
    """SDXL's UNet layout (text_time added embedding, cross-attention on text states), tiny."""
    torch.manual_seed(0)
    return (
        UNet2DConditionModel(
            block_out_channels=(8, 16),
            layers_per_block=1,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=POOLED + 6 * 4,
            cross_attention_dim=TEXT_DIM,
            norm_num_groups=4,
        )
        .eval()
        .requires_grad_(False)
    )


def tiny_modulator(unet: UNet2DConditionModel) -> PremierModulator:
    return PremierModulator(
        PremierSpec(
            text_dim=TEXT_DIM,
            num_blocks=len(cross_attention_names(unet)),
            user_tokens=2,
            user_dim=8,
            adapter_dim=16,
            adapter_layers=2,
            adapter_heads=2,
            out_init_std=0.05,
        )
    )


def unet_inputs(batch: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, 8, 8, generator=g),
        "timestep": torch.randint(0, 1000, (batch,), generator=g),
        "encoder_hidden_states": torch.randn(batch, SEQ, TEXT_DIM, generator=g),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, POOLED, generator=g),
            "time_ids": TIME_IDS.repeat(batch, 1),
        },
    }


@torch.no_grad()
def test_zero_modulation_equals_base_model_exactly() -> None:
    unet = tiny_unet()
    inputs = unet_inputs(3)
    base = unet(**inputs).sample
    base_state = {k: v.clone() for k, v in unet.state_dict().items()}
    modulator = tiny_modulator(unet)
    controller = PremierController(unet, modulator)
    users = {USERS_KEY: torch.randn(3, 2, 8)}

    # the UNet's weights are untouched and a call without users is the base model. Exact, here
    # and below: Premier's processor calls the base processor itself, on the same text states or
    # on text + 0.0 (an exact zero), so the very same kernels run on the very same numbers
    assert unet.state_dict().keys() == base_state.keys()
    assert torch.equal(unet(**inputs).sample, base)
    # a non-zero modulation changes the output (so the equality below is not vacuous) ...
    modulated = unet(**inputs, cross_attention_kwargs=dict(users)).sample
    assert (modulated - base).abs().max() > 1e-4
    # ... and a zero modulation (zeroed output layers) gives the base output bit for bit
    for adapter in (modulator.shared, modulator.distinct):
        adapter.proj_out.weight.zero_()
        adapter.proj_out.bias.zero_()
    assert torch.equal(unet(**inputs, cross_attention_kwargs=dict(users)).sample, base)
    controller.remove()
    assert torch.equal(unet(**inputs).sample, base)


@torch.no_grad()
def test_directions_reach_only_cross_attention_and_differ_per_block() -> None:
    unet = tiny_unet()
    modulator = tiny_modulator(unet)
    PremierController(unet, modulator)
    for name, proc in unet.attn_processors.items():
        is_premier = type(proc).__name__ == "PremierAttnProcessor"
        assert is_premier == name.endswith("attn2.processor")  # self-attention untouched
    seen: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k"):
            module.register_forward_hook(
                lambda m, a, o, name=name: seen.__setitem__(name, a[0].clone())
            )
    inputs = unet_inputs(2)
    users = torch.randn(2, 2, 8)
    unet(**inputs, cross_attention_kwargs={USERS_KEY: users})
    text = inputs["encoder_hidden_states"]
    shared, distinct = modulator(text, users)
    names = [n for n in cross_attention_names(unet)]
    assert len(seen) == len(names) == modulator.spec.num_blocks
    for k, name in enumerate(names):  # layer k sees text + shared + distinct[k]
        got = seen[name.removesuffix(".processor") + ".to_k"] - text
        # (text + d) - text recovers d up to the rounding of the sum: |text| ~ 1, so ~1e-7
        torch.testing.assert_close(got, shared + distinct[:, k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(distinct[:, 0], distinct[:, 1])


@torch.no_grad()
def test_masked_rows_are_the_base_model() -> None:
    unet = tiny_unet()
    PremierController(unet, tiny_modulator(unet))
    inputs = unet_inputs(4)
    base = unet(**inputs).sample
    mask = torch.tensor([False, True, False, True])
    out = unet(
        **inputs, cross_attention_kwargs={USERS_KEY: torch.randn(4, 2, 8), MASK_KEY: mask}
    ).sample
    assert torch.equal(out[~mask], base[~mask])  # exact: their text states get + 0.0
    assert not torch.allclose(out[mask], base[mask])
    with pytest.raises(ValueError, match="UNet batch of 4"):
        unet(**inputs, cross_attention_kwargs={USERS_KEY: torch.randn(2, 2, 8)})


def test_dispersion_loss_prefers_separated_directions() -> None:
    identical = torch.ones(4, 3, 5)
    separated = torch.stack([torch.full((3, 5), float(v)) for v in (-3, -1, 1, 3)])
    slightly = identical + 0.01 * torch.arange(4.0)[:, None, None]
    l_id, l_sep = dispersion_loss(identical), dispersion_loss(separated)
    assert l_id.item() == pytest.approx(0.0, abs=1e-5)  # log mean exp(0)
    assert l_sep < dispersion_loss(slightly) < l_id
    # hand-computed: root-mean-square differences 2, 4, 6, 2, 4, 2 for the six pairs
    d = torch.tensor([2.0, 4, 6, 2, 4, 2])
    expected = torch.logsumexp(-d, 0) - torch.log(torch.tensor(6.0))
    assert l_sep.item() == pytest.approx(expected.item(), rel=1e-6)
    # a gradient step on it moves the directions apart
    z = slightly.clone().requires_grad_(True)
    dispersion_loss(z).backward()
    z2 = (slightly - 0.5 * z.grad).detach()
    assert torch.pdist(z2.flatten(1)).sum() > torch.pdist(slightly.flatten(1)).sum()
    with pytest.raises(ValueError, match="two users"):
        dispersion_loss(torch.ones(1, 3))


def user_batch(user_ids: list[int], seed: int = 3) -> UserBatch:
    g = torch.Generator().manual_seed(seed)
    n = len(user_ids)
    return UserBatch(
        torch.tensor(user_ids),
        torch.randn(n, SEQ, TEXT_DIM, generator=g),
        torch.randn(n, POOLED, generator=g),
        TIME_IDS.repeat(n, 1),
    )


def test_conditioning_trains_adapters_and_embeddings_not_the_unet() -> None:
    unet = tiny_unet()
    cond = PremierConditioning(unet, OPTIONS, torch.tensor([11, 12, 13, 14]), torch.randn(4, 2, 8))
    sched = DDPMScheduler(num_train_timesteps=1000)
    unet_before = {k: v.clone() for k, v in unet.state_dict().items()}
    emb_before = cond.table.weight.detach().clone()
    opt = torch.optim.Adam(cond.parameters(), lr=1e-2)
    batch = user_batch([11, 12, 13, 11])
    x, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.tensor([10, 200, 500, 900])
    for _ in range(2):
        pred = unet(sched.add_noise(x, noise, t), t, **cond.unet_inputs(batch, train=True)).sample
        extra = cond.extra_losses(batch)
        assert set(extra) == {"disp_shared", "disp_distinct"}
        loss = (pred - noise).pow(2).mean() + sum(extra.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(cond.table.weight, emb_before)
    assert torch.equal(cond.table.weight[3], emb_before[3])  # user 14 was never in a batch
    assert all(torch.equal(v, unet_before[k]) for k, v in unet.state_dict().items())
    assert all(k.startswith(("modulator.", "table.")) for k in cond.adapter_state_dict())
    # Premier has no reference model: a trainer running Diffusion-DPO on it fails loudly
    with pytest.raises(RuntimeError, match="denoising objective"), cond.reference():
        pass
    assert cond.objective == "denoise"


def test_new_user_fits_combination_weights_only() -> None:
    unet = tiny_unet()
    modulator = tiny_modulator(unet)
    PremierController(unet, modulator)
    table = UserEmbeddingTable([1, 2, 3, 4, 5], num_tokens=2, dim=8, seed=3)
    combo = CombinationEmbedding([100, 101], table.weight)
    assert [n for n, _ in combo.named_parameters()] == ["weights"]
    table_before = table.weight.detach().clone()
    adapter_before = {k: v.clone() for k, v in modulator.state_dict().items()}
    w_before = combo.weights.detach().clone()
    g = torch.Generator().manual_seed(4)
    liked = LikedImages(
        torch.tensor([100, 100, 101, 101]),
        torch.randn(4, 4, 8, 8, generator=g),
        torch.randn(4, SEQ, TEXT_DIM, generator=g),
        torch.randn(4, POOLED, generator=g),
    )
    losses = fit_new_users(
        unet,
        DDPMScheduler(num_train_timesteps=1000),
        modulator,
        combo,
        liked,
        TIME_IDS,
        steps=5,
        lr=0.1,
        batch_size=2,
        seed=0,
    )
    assert len(losses) == 5
    assert not torch.equal(combo.weights, w_before)  # the weights were fitted ...
    assert torch.equal(table.weight, table_before)  # ... the training users were not
    assert all(torch.equal(v, adapter_before[k]) for k, v in modulator.state_dict().items())
    assert all(p.requires_grad for p in modulator.parameters())  # freezing was temporary
    expected = torch.einsum("nk,ktd->ntd", combo.weights.detach(), table_before)
    # the module's weighted sum vs einsum: float32 summation order only
    torch.testing.assert_close(combo.embeddings().detach(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match="not among the new users"):
        combo([7])


@torch.no_grad()
def test_stage2_checkpoint_carries_new_users_to_the_sampler() -> None:
    unet = tiny_unet()
    cond = PremierConditioning(unet, OPTIONS, torch.tensor([1, 2, 3]), torch.randn(3, 2, 8))
    cond.set_new_users(torch.tensor([50]), torch.tensor([[0.5, 0.25, 0.25]]))
    state = cond.adapter_state_dict()
    assert state["new_users.user_ids"].tolist() == [50]
    fresh = PremierConditioning(tiny_unet(), OPTIONS, torch.tensor([1, 2, 3]), torch.zeros(3, 2, 8))
    fresh.load_adapter_state_dict(state)
    tokens, own = fresh.user_tokens([2, 50, 99])
    assert own.tolist() == [True, True, False]
    w = cond.table.weight
    torch.testing.assert_close(tokens[0], w[1], rtol=0, atol=0)  # a stored row, copied
    # the combination's matrix product vs this hand-written sum: float32 summation order
    torch.testing.assert_close(
        tokens[1], 0.5 * w[0] + 0.25 * w[1] + 0.25 * w[2], rtol=1e-5, atol=1e-6
    )
    for user, expected in ((50, True), (99, False)):
        kwargs, own = fresh.pipeline_inputs(user, None, guidance=True)
        extra = kwargs["cross_attention_kwargs"]
        assert own is expected
        assert extra[USERS_KEY].shape == (1, 2, 8)  # one user for the whole pipeline call
        assert extra[MASK_KEY].tolist() == [expected]
    with pytest.raises(ValueError, match="training users"):
        cond.set_new_users(torch.tensor([2]), torch.ones(1, 3))


def test_denoising_loss_without_users_is_the_base_loss() -> None:
    unet = tiny_unet()
    sched = DDPMScheduler(num_train_timesteps=1000)
    x, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([5, 700])
    inp = unet_inputs(2)
    args = (unet, sched, x, inp["encoder_hidden_states"], inp["added_cond_kwargs"], noise, t)
    with torch.no_grad():
        base = denoising_loss(*args, None)
        PremierController(unet, tiny_modulator(unet))
        assert torch.equal(denoising_loss(*args, None), base)  # base processors, called as is
        assert not torch.equal(denoising_loss(*args, torch.randn(2, 2, 8)), base)


def test_liked_history_excludes_ties_dedupes_and_is_seeded() -> None:
    pairs = pd.DataFrame(
        {
            "ranking_id": range(6),
            "user_id": [1, 1, 1, 1, 2, 2],
            "caption": ["a", "b", "c", "d", "e", "f"],
            "image_w_uid": ["x", "y", "x", "t", "u", "v"],
            "is_tie": [False] * 3 + [True] + [False] * 2,
        }
    )
    h = liked_history(pairs, seed=0)
    assert sorted(h.loc[h.user_id == 1, "image_uid"]) == ["x", "y"]  # tie dropped, x once
    assert sorted(h.loc[h.user_id == 1, "order"]) == [0, 1]
    pd.testing.assert_frame_equal(h, liked_history(pairs, seed=0))


def test_cross_user_diversity_on_hand_made_embeddings() -> None:
    emb = torch.tensor([[1.0, 0], [1, 0], [0, 1], [1, 0], [-1, 0]])
    users = np.array([1, 2, 3, 1, 2])
    prompts = np.array([7, 7, 7, 8, 8])
    d = cross_user_distances(emb, users, prompts)
    # prompt 7: users 1 and 2 identical, user 3 orthogonal; prompt 8: opposite images
    np.testing.assert_allclose(d, [0.5, 0.5, 1.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="only one user"):
        cross_user_distances(emb[:4], users[:4], np.array([7, 7, 7, 8]))


def test_embedding_file_round_trip(tmp_path) -> None:
    table = UserEmbeddingTable([5, 9], num_tokens=3, dim=4, seed=1)
    path = tmp_path / "premier.safetensors"
    save_user_embeddings(path, table.user_ids, table.weight)
    ids, emb = load_user_embeddings(path)
    assert ids.tolist() == [5, 9] and torch.equal(emb, table.weight.detach())
    with pytest.raises(KeyError, match=r"\[7\]"):
        table([5, 7])


def write_init(path, user_ids: list[int], options: dict) -> None:
    t, d = options["user_tokens"], options["user_dim"]
    save_tensors(
        {
            "user_ids": torch.tensor(user_ids),
            "emb": torch.randn(len(user_ids), t * d, generator=torch.Generator().manual_seed(0)),
        },
        path,
        metadata={OPTIONS_KEY: json.dumps(options)},
    )


def test_conditioning_is_built_from_its_init_file(tmp_path) -> None:
    path = tmp_path / "premier_init.safetensors"
    write_init(path, [3, 4], OPTIONS)
    users = UserEmbeddings.load(str(path))
    cond = build_conditioning(
        tiny_unet(),
        {
            "conditioning": "premier",
            "embedding": "premier_init",
            "num_tokens": 2,
            "user_dropout": 0.0,
        },
        users,
    )
    assert isinstance(cond, PremierConditioning)
    torch.testing.assert_close(cond.table.weight.detach(), users.emb.view(2, 2, 8))
    with pytest.raises(ValueError, match="num_tokens 3"):
        build_conditioning(
            tiny_unet(),
            {
                "conditioning": "premier",
                "num_tokens": 3,
                "embedding": "premier_init",
                "user_dropout": 0.0,
            },
            users,
        )


def test_shared_trainer_trains_premier_with_the_denoising_objective(tmp_path) -> None:
    """The real trainer loop (prefgen.generation.train_adapter) on a tiny pipeline."""
    from prefgen.generation import train_adapter as train
    from prefgen.generation.models import build_tiny_sdxl

    cfg = {
        "text_encoder": {"hidden_size": 8, "layers": 1, "heads": 2, "max_length": 8},
        "vae": {
            "block_out_channels": [4, 4],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 2,
        },
        "unet": {
            "block_out_channels": [8, 16],
            "layers_per_block": 1,
            "attention_head_dim": [2, 2],
            "norm_num_groups": 4,
            "addition_time_embed_dim": 4,
        },
    }
    pipe = build_tiny_sdxl(cfg, resolution=8, seed=0)
    n_img, n_pairs = 12, 24
    g = torch.Generator().manual_seed(1)
    rows = np.random.default_rng(0)
    pairs = pd.DataFrame(
        {
            "ranking_id": range(n_pairs),
            "user_id": rows.integers(1, 5, n_pairs),
            "w_row": rows.integers(0, n_img, n_pairs),
            "l_row": rows.integers(0, n_img, n_pairs),
            "c_row": rows.integers(0, 3, n_pairs),
        }
    )
    data = train.TrainData(
        torch.randn(n_img, 4, 4, 4, generator=g),
        torch.full((n_img, 4, 4, 4), 0.1),
        torch.randn(3, 8, 16, generator=g),
        torch.randn(3, 8, generator=g),
        pairs,
    )
    init = tmp_path / "premier_init.safetensors"
    opts = {**OPTIONS, "out_init_std": 1e-3}
    write_init(init, [1, 2, 3, 4], opts)
    method_cfg = {
        "conditioning": "premier",
        "embedding": "premier_init",
        "num_tokens": 2,
        "user_dropout": 0.0,
    }
    tcfg = {
        "steps": 4,
        "batch_size": 8,
        "gradient_accumulation_steps": 1,
        "lr": 1e-2,
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "beta": 500.0,
        "mixed_precision": "no",
        "gradient_checkpointing": False,
        "checkpoint_every": 2,
    }
    result = train.train(
        pipe,
        data,
        UserEmbeddings.load(str(init)),
        "premier",
        method_cfg,
        tcfg,
        0,
        tmp_path / "out",
        "fp",
    )
    assert result["complete"] and [c["step"] for c in result["checkpoints"]] == [2, 4]
    assert "implicit_acc" not in result["last_tenth"]  # no DPO terms: the denoising objective
    assert {"disp_shared", "disp_distinct"} <= set(result["last_tenth"])
    from prefgen.core.io import load_tensors

    state = load_tensors(tmp_path / "out" / "checkpoint-4" / "adapter.safetensors")
    start = UserEmbeddings.load(str(init)).emb.view(4, 2, 8)
    assert not torch.equal(state["table.weight"], start)
