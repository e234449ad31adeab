"""`prefgen rehearsal-assets` writes each paper model's real format, and the paper's own loaders
read it: StableDiffusionXLPipeline, LLaVA-OneVision, IDEFICS2, open_clip with a weights file,
the aesthetic head and PickScore's CLIP folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from prefgen.core.config import ConfigError, load_config

from tests.workflow_copy import REPO

pytestmark = pytest.mark.slow  # builds and reloads seven tiny models (~30 s on 2 cores)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from prefgen.rehearsal import assets as plan

    root = tmp_path_factory.mktemp("assets")
    config = load_config(REPO / "config" / "rehearsal.yaml")
    for _, (path, write) in plan(config, root).items():
        write()
        assert path.exists()
    return root, config


def test_sdxl_folder_loads_as_a_pipeline(assets, one_torch_thread) -> None:
    from prefgen.generation.models import image_size, load_denoiser, load_pipeline

    root, config = assets
    pipe = load_pipeline(root / config["foundation"]["pretrained"], dtype=torch.bfloat16)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.vae_scale_factor == 8  # SDXL's
    assert image_size(pipe) == config["foundation"]["resolution"]
    assert pipe.tokenizer.model_max_length == 77 and len(pipe.tokenizer_2) == 49408
    out = pipe(
        "a red star", num_inference_steps=2, output_type="np", generator=torch.manual_seed(0)
    )
    assert out.images.shape == (1, 64, 64, 3)
    assert load_denoiser(root / config["foundation"]["pretrained"]).vae_scale_factor == 8


def test_llava_onevision_folder_loads_through_ppd(assets, one_torch_thread) -> None:
    from prefgen.embeddings.vlm import load_vlm

    root, config = assets
    cfg = config["vlm"] | {"model": str(root / config["vlm"]["model"])}
    vlm = load_vlm(cfg, 0)
    assert not vlm.stand_in and type(vlm.model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert vlm.processor.tokenizer.padding_side == "left"
    assert next(vlm.model.parameters()).dtype == torch.bfloat16


def test_idefics2_folder_loads_through_lpp(assets, one_torch_thread) -> None:
    from prefgen.lpp.model import build_vlm

    root, config = assets
    cfg = config["lpp"]["vlm"] | {"model": str(root / config["lpp"]["vlm"]["model"])}
    vlm = build_vlm(cfg, None, 0)
    assert type(vlm.model).__name__ == "Idefics2ForConditionalGeneration"
    assert vlm.processor.image_processor.do_image_splitting is False
    assert vlm.processor.image_processor.size["longest_edge"] == cfg["processor"]["image_size"]


def test_open_clip_weights_file_loads_by_architecture_name(assets, tmp_path) -> None:
    from prefgen.core.io import load_tensors
    from prefgen.user_model.clip import build_clip

    root, config = assets
    params = config["clip"] | {
        "pretrained_model": str(root / config["clip"]["pretrained_model"]),
        "pretrained_tag": str(root / config["clip"]["pretrained_tag"]),
    }
    model, meta = build_clip(params, tmp_path)
    saved = load_tensors(root / config["clip"]["pretrained_tag"])
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert meta["prefgen"]["source"] == "pretrained"
    assert meta["model_cfg"]["embed_dim"] == config["clip"]["model_cfg"]["embed_dim"]


def test_external_judges_load_what_was_written(assets) -> None:
    import numpy as np
    from PIL import Image
    from prefgen.evaluation.external_judges import AestheticJudge, PickScoreJudge

    root, config = assets
    models = config["judge"]["external"]["models"]
    aesthetic = AestheticJudge.load(
        {k: (str(root / v) if isinstance(v, str) else v) for k, v in models["aesthetic"].items()},
        "cpu",
    )
    pick = PickScoreJudge.load({k: str(root / v) for k, v in models["pickscore"].items()}, "cpu")
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    for judge in (aesthetic, pick):
        scores = judge.score(images, ["a red star", "a blue square"], np.array([1, 2]))
        assert scores.shape == (2,) and np.isfinite(scores).all()


def test_only_a_rehearsal_config_gets_stand_ins(tmp_path) -> None:
    from prefgen.cli import main

    config = yaml.safe_load((REPO / "config" / "rehearsal.yaml").read_text())
    config["scale"] = "paper"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["rehearsal-assets", "--config", str(path), "--root", str(tmp_path)]) == 2
    assert not (tmp_path / "results").exists()
    with pytest.raises(ConfigError, match="vision_init"):
        from prefgen.rehearsal import write_llava_onevision

        config["vlm"]["stand_in"]["vision_init"] = "clip"
        write_llava_onevision(config, tmp_path / "llava")
    shutil.rmtree(tmp_path, ignore_errors=True)
