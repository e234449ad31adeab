"""Adapters in diffusers' IP-Adapter format and training curves in TensorBoard.

The file every IP-Adapter checkpoint carries beside ``adapter.safetensors`` is read by
diffusers' own ``load_ip_adapter`` into a fresh pipeline, which must then draw the images
prefgen's conditioning draws; the trainer's TensorBoard event files must hold the same curves
as ``train_log.parquet``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from prefgen.cli import main
from prefgen.core.io import load_tensors, save_tensors
from prefgen.generation.adapters import (
    DIFFUSERS_IP_FILE,
    UserEmbeddings,
    build_conditioning,
)
from prefgen.generation.models import load_pipeline

from tests.generation_helpers import shared_setup, smoke_config, tiny_pipeline, train_args

#: tolerance on images in [0, 1]: with 1 or 4 user tokens the loaded adapter is bit-identical;
#: with 2 the duplicated tokens change only the order of float sums inside attention (measured
#: up to 7e-7 on this pipeline), far below one 8-bit level (1/255)
ATOL = 1e-5
CAPTIONS = ["a red circle on a grey background", "a blue square on a grey background"]


@pytest.fixture(scope="module")
def foundation(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    return str(tiny_pipeline(tmp_path_factory.mktemp("diffusers-format")))


def users(dim: int = 8) -> UserEmbeddings:
    g = torch.Generator().manual_seed(0)
    return UserEmbeddings(torch.arange(1, 4), torch.randn(3, dim, generator=g))


def images(pipe, **kwargs) -> np.ndarray:
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    return pipe(
        prompt=CAPTIONS,
        generator=gens,
        num_inference_steps=4,
        guidance_scale=3.0,
        output_type="np",
        **kwargs,
    ).images


def method(num_tokens: int, embedding: str | None = "pipe") -> dict:
    return {
        "conditioning": "ip_adapter",
        "embedding": embedding,
        "num_tokens": num_tokens,
        "user_dropout": 0.0,
        "constant_dim": 8,
    }


@pytest.mark.parametrize("num_tokens", [1, 2, 4])
@torch.no_grad()
def test_load_ip_adapter_reproduces_prefgen_images(foundation, tmp_path, num_tokens) -> None:
    ours = load_pipeline(foundation)
    base = images(ours)
    table = users()
    cond = build_conditioning(ours.unet, method(num_tokens), table)
    g = torch.Generator().manual_seed(3)
    for p in cond.parameters():  # a strong adapter: its effect on the images is large
        p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    cond.eval()
    save_tensors(cond.diffusers_state_dict(), tmp_path / DIFFUSERS_IP_FILE)

    theirs = load_pipeline(foundation)
    theirs.load_ip_adapter(
        str(tmp_path), subfolder="", weight_name=DIFFUSERS_IP_FILE, image_encoder_folder=None
    )
    assert (
        type(theirs.unet.encoder_hid_proj.image_projection_layers[0]).__name__ == "ImageProjection"
    )
    for user in (1, 3):
        kwargs, own = cond.pipeline_inputs(user, table, guidance=True)
        assert own
        expected = images(ours, **kwargs)
        got = images(theirs, ip_adapter_image_embeds=[table.lookup([user])[None].repeat(2, 1, 1)])
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
        assert np.abs(expected - base).max() > 0.05  # the adapter matters


def test_constant_user_is_stored_and_odd_token_counts_are_refused(foundation) -> None:
    pipe = load_pipeline(foundation)
    cond = build_conditioning(pipe.unet, method(2, embedding=None), None)
    state = cond.diffusers_state_dict()
    assert torch.equal(state["user_embeds.constant"], cond.constant.detach())
    assert {k.split(".")[0] for k in state} == {"image_proj", "ip_adapter", "user_embeds"}
    n_cross = sum(1 for name in pipe.unet.attn_processors if name.endswith("attn2.processor"))
    assert sorted(int(k.split(".")[1]) for k in state if k.endswith("to_k_ip.weight")) == list(
        range(1, 2 * n_cross, 2)
    )
    odd = build_conditioning(load_pipeline(foundation).unet, method(3), users())
    assert not odd.diffusers_exportable
    with pytest.raises(ValueError, match="num_tokens=3.*dividing 4"):
        odd.diffusers_state_dict()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """pipe trained for 4 steps with TensorBoard on."""
    setup = shared_setup(tmp_path_factory, "personal")
    run = tmp_path_factory.mktemp("tracked")
    cfg = smoke_config()["train"] | {
        "steps": 4,
        "checkpoint_every": 2,
        "lr": 1e-2,
        "log_with": ["tensorboard"],
    }
    out = run / "adapters" / "pipe" / "seed0" / "final.json"
    assert main([*train_args(setup, "pipe", out, cfg), "--log-dir", str(run / "tb")]) == 0
    return setup, run, out


def test_every_checkpoint_has_its_diffusers_file(trained) -> None:
    setup, _, out = trained
    final = json.loads(out.read_text())
    pipe = load_pipeline(setup["foundation"])
    table = UserEmbeddings.load(str(setup["embeddings"]))
    cond = build_conditioning(pipe.unet, final["method_config"], table)
    for ckpt in final["checkpoints"]:
        folder = out.parent / ckpt["path"]
        cond.load_adapter_state_dict(load_tensors(folder))
        written = load_tensors(folder.parent / DIFFUSERS_IP_FILE)
        expected = cond.diffusers_state_dict()
        assert written.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(written[key], value), key


def test_tensorboard_holds_the_dpo_curves(trained) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, out = trained
    folder = run / "tb" / "pipe" / "seed0"  # one folder per adapter and training seed
    assert list(folder.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folder))
    events.Reload()
    log = pd.read_parquet(out.parent / "checkpoint-4" / "train_log.parquet")
    for name in ("loss", "implicit_acc"):
        scalars = events.Scalars(f"train/{name}")
        assert [s.step for s in scalars] == log["step"].tolist()
        np.testing.assert_allclose([s.value for s in scalars], log[name], rtol=1e-6)


def test_missing_tracker_package_is_a_clear_error(tmp_path) -> None:
    from prefgen.generation.train_adapter import trackers

    assert trackers(["tensorboard"], None) == []
    assert trackers([], tmp_path) == []
    with pytest.raises(ValueError, match="train.log_with lists 'no_such_tracker'"):
        trackers(["no_such_tracker"], tmp_path)
