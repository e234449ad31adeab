"""IP-Adapter user conditioning: the reference is the frozen base, only the adapter trains, and
the stock SDXL pipeline samples with it."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from prefgen.generation.adapters import UserBatch, UserEmbeddings, build_conditioning
from prefgen.generation.models import add_time_ids, encode_text, load_pipeline

from tests.generation_helpers import smoke_config, tiny_pipeline

METHOD = {"conditioning": "ip_adapter", "embedding": "pipe", "num_tokens": 2, "user_dropout": 0.5}


@pytest.fixture(scope="module")
def foundation(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    return str(tiny_pipeline(tmp_path_factory.mktemp("adapter"), smoke_config()["foundation"]))


def users(n: int = 4, dim: int = 8) -> UserEmbeddings:
    g = torch.Generator().manual_seed(0)
    return UserEmbeddings(torch.arange(1, n + 1), torch.randn(n, dim, generator=g))


def unet_batch(pipe, n: int = 4) -> tuple[torch.Tensor, torch.Tensor, UserBatch]:
    g = torch.Generator().manual_seed(1)
    side = pipe.unet.config.sample_size
    x = torch.randn(n, pipe.unet.config.in_channels, side, side, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    text = encode_text(pipe, ["a red circle on a grey background"] * n)
    return (
        x,
        t,
        UserBatch(
            user_ids=torch.arange(1, n + 1),
            prompt_embeds=text["prompt_embeds"],
            pooled=text["pooled"],
            time_ids=add_time_ids(pipe, n),
            rand=torch.ones(n),
        ),
    )


def randomise(cond) -> None:
    """Give the adapter non-trivial weights (a trained adapter is not zero)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in cond.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


#: The IP-Adapter processor runs its own copy of the text attention, another code path than
#: the base processor's: the same values up to summation order. 1e-5 is 100x below the smallest
#: adapter effect the test requires (1e-3).
SAME_AS_BASE = {"rtol": 0, "atol": 1e-5}


@torch.no_grad()
def test_scale_zero_is_the_frozen_base(foundation) -> None:
    pipe = load_pipeline(foundation)
    x, t, batch = unet_batch(pipe)
    base = pipe.unet(
        x,
        t,
        encoder_hidden_states=batch.prompt_embeds,
        added_cond_kwargs={"text_embeds": batch.pooled, "time_ids": batch.time_ids},
    ).sample
    cond = build_conditioning(pipe.unet, METHOD, users())
    # an untrained adapter (to_v_ip = 0) already is the base model
    fresh = pipe.unet(x, t, **cond.unet_inputs(batch, train=False)).sample
    torch.testing.assert_close(fresh, base, **SAME_AS_BASE)
    randomise(cond)
    on = pipe.unet(x, t, **cond.unet_inputs(batch, train=False)).sample
    with cond.reference():
        off = pipe.unet(x, t, **cond.unet_inputs(batch, train=False)).sample
    torch.testing.assert_close(off, base, **SAME_AS_BASE)
    assert not torch.allclose(on, base, atol=1e-3)
    on_again = pipe.unet(x, t, **cond.unet_inputs(batch, train=False)).sample
    # the very same call again: exact, and it shows the scale is restored after the reference
    assert torch.equal(on_again, on)


def test_adapter_sits_on_cross_attention_and_is_the_only_trainable_part(foundation) -> None:
    pipe = load_pipeline(foundation)
    before = {n: type(p) for n, p in pipe.unet.attn_processors.items()}
    cond = build_conditioning(pipe.unet, METHOD, users())
    after = pipe.unet.attn_processors
    for name, proc in after.items():
        if "attn2" in name:
            assert isinstance(proc, IPAdapterAttnProcessor2_0), name
        else:
            assert type(proc) is before[name] is AttnProcessor2_0, name
    trainable = {id(p) for p in pipe.unet.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in cond.parameters()}
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        assert not any(p.requires_grad for p in module.parameters())
    keys = set(cond.adapter_state_dict())
    assert keys and all(k.startswith(("proj.", "ip_layers.")) for k in keys)


def test_user_dropout_zeroes_the_vector_only_in_training(foundation) -> None:
    pipe = load_pipeline(foundation)
    cond = build_conditioning(pipe.unet, METHOD, users())
    _, _, batch = unet_batch(pipe)
    batch.rand = torch.tensor([0.1, 0.9, 0.49, 0.5])
    vec = cond.unet_inputs(batch, train=True)["added_cond_kwargs"]["image_embeds"][0][:, 0]
    assert (vec[[0, 2]] == 0).all() and (vec[[1, 3]] != 0).any(dim=1).all()
    kept = cond.unet_inputs(batch, train=False)["added_cond_kwargs"]["image_embeds"][0][:, 0]
    assert (kept != 0).any(dim=1).all()


def test_unknown_user_is_an_error_in_training_and_flagged_in_sampling(foundation) -> None:
    table = users()
    with pytest.raises(KeyError, match="user_id"):
        table.lookup([1, 77])
    pipe = load_pipeline(foundation)
    cond = build_conditioning(pipe.unet, METHOD, table)
    kwargs, own = cond.pipeline_inputs(1, table, guidance=True)
    embeds = kwargs["ip_adapter_image_embeds"][0]
    assert own and embeds.shape == (2, 1, 8)  # negative + positive under CFG, same user
    assert torch.equal(embeds[0], embeds[1]) and torch.equal(embeds[1, 0], table.lookup([1])[0])
    kwargs, own = cond.pipeline_inputs(77, table, guidance=False)
    assert not own and (kwargs["ip_adapter_image_embeds"][0] == 0).all()


@torch.no_grad()
def test_stock_pipeline_samples_with_user_tokens(foundation) -> None:
    pipe = load_pipeline(foundation)
    prompts = ["a red circle on a grey background"] * 2
    gens = [torch.Generator().manual_seed(5) for _ in prompts]
    base = pipe(prompt=prompts, generator=gens, num_inference_steps=3, output_type="np").images
    table = users()
    cond = build_conditioning(pipe.unet, METHOD, table)
    randomise(cond)
    personal = []
    for user in (1, 2):
        kwargs, _ = cond.pipeline_inputs(user, table, guidance=True)
        gens = [torch.Generator().manual_seed(5) for _ in prompts]
        personal.append(
            pipe(
                prompt=prompts, generator=gens, num_inference_steps=3, output_type="np", **kwargs
            ).images
        )
    assert personal[0].shape == base.shape
    assert abs(personal[0] - base).max() > 1e-3  # the adapter changes the images ...
    assert abs(personal[0] - personal[1]).max() > 1e-3  # ... differently per user


def test_pipe_embedding_is_lambda_times_w_and_bad_tables_are_named(tmp_path) -> None:
    """E_u = λ_uᵀW row by row; a lambda table whose K differs from W's is an error."""
    import numpy as np
    import pandas as pd
    from prefgen.embeddings.pipe import pipe_embeddings, read_lambdas

    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 5, generator=g)
    lam = np.array([[1.0, 0.0, 0.0], [0.5, -0.5, 2.0]])
    E = pipe_embeddings(lam, W)
    # E is computed in float64, the hand-written side in float32 (relative error ~1e-7)
    torch.testing.assert_close(E[0], W[0].double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        E[1], (0.5 * W[0] - 0.5 * W[1] + 2.0 * W[2]).double(), rtol=1e-6, atol=1e-6
    )
    path = tmp_path / "lambda.parquet"
    table = {"user_id": [1, 2], "lambda_0": [1.0, 0.5], "lambda_1": [0.0, -0.5]}
    pd.DataFrame(table).to_parquet(path)
    with pytest.raises(ValueError, match="K=3"):
        read_lambdas(str(path), 3)
    ids, got = read_lambdas(str(path), 2)
    assert ids.tolist() == [1, 2] and got.shape == (2, 2)
