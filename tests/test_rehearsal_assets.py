"""`prefgen rehearsal-assets` writes each paper model's real format, and the paper's own loaders
read it: StableDiffusionXLPipeline, LLaVA-OneVision, IDEFICS2, open_clip with a weights file,
the aesthetic head, PickScore's CLIP folder, and ImageReward's checkpoint with BLIP's tokenizer
(``ImageReward.load``, in the judges environment)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from prefgen.core.config import ConfigError, load_config

from tests.conftest import NO_JUDGES_ENV, judges_python
from tests.eval_fixtures import write_samples
from tests.workflow_copy import REPO

pytestmark = pytest.mark.slow  # builds and reloads eight tiny models and BLIP's ViT-L (~1 min)

#: written by the judges environment's python (the ImageReward package is only there)
JUDGES_ENV_ASSETS = {"imagereward"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from prefgen.rehearsal import assets as plan

    root = tmp_path_factory.mktemp("assets")
    config = load_config(REPO / "config" / "rehearsal.yaml")
    python = judges_python()
    with pytest.MonkeyPatch.context() as mp:
        if python is not None:
            mp.setenv("PREFGEN_JUDGES_PYTHON", python)
        for name, (path, write) in plan(config, root).items():
            if name in JUDGES_ENV_ASSETS and python is None:
                continue  # test_external_judges_run_on_what_was_written skips, saying why
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


def test_external_judges_run_on_what_was_written(assets) -> None:
    """``judge-external`` as the ``judge_external`` rule runs it (the judges environment's python,
    workflow/ on PYTHONPATH, from the workflow root) on the rehearsal's files: ImageReward
    through ``ImageReward.load`` (BLIP's ViT-L/16, the one-layer BERT, the tokenizer from the
    hub cache, nothing downloaded), the aesthetic head and PickScore."""
    python = judges_python()
    if python is None:
        pytest.skip(NO_JUDGES_ENV)
    root, config = assets
    external = config["judge"]["external"]
    assert "imagereward" in external["judges"]
    run = root / "results" / "judged"
    write_samples(run, {"base": [0]}, [1, 2, 3], [1, 2])  # 6 images of distinct greys, 2 captions
    out, env_out = run / "scores.parquet", run / "scores.json"
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO / "workflow"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["OMP_NUM_THREADS"] = "1"  # two threads only spin on a shared 2-core machine
    cmd = [python, "-m", "prefgen.cli", "judge-external"]
    cmd += ["--params", json.dumps({"judge": external | {"device": "cpu"}})]
    cmd += ["--index", str(run / "samples" / "base" / "index.parquet"), "--run-dir", str(run)]
    cmd += ["--out", str(out), "--env-out", str(env_out)]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    scores = pd.read_parquet(out)
    assert len(scores) == 6
    assert np.isfinite(scores[external["judges"]].to_numpy()).all()
    # the reward reads the image: the three images of each caption score differently
    assert (scores.groupby("caption")["imagereward"].nunique() == 3).all()
    recorded = json.loads(env_out.read_text())
    assert recorded["packages"]["image-reward"] == "1.5"


def test_imagereward_checkpoint_is_the_packages_state_dict(assets) -> None:
    """Every parameter of the package's ImageReward has a tensor of its shape in the file; the
    text encoder is the one-layer BERT of med_config.json over the cached tokenizer's vocabulary."""
    from prefgen.rehearsal import BERT_REPO, hub_snapshot

    if judges_python() is None:
        pytest.skip(NO_JUDGES_ENV)
    root, config = assets
    options = config["judge"]["external"]["models"]["imagereward"]
    state = torch.load(root / options["model"], map_location="cpu", weights_only=True, mmap=True)
    med = json.loads((root / options["med_config"]).read_text())
    vocab = hub_snapshot(root / config["judge"]["external"]["hub_cache"], BERT_REPO) / "vocab.txt"
    n_vocab = len(vocab.read_text().splitlines())
    assert med["vocab_size"] == n_vocab + 2 and med["num_hidden_layers"] == 1
    word = state["blip.text_encoder.embeddings.word_embeddings.weight"]
    assert tuple(word.shape) == (n_vocab + 2, 768)
    assert "blip.text_encoder.encoder.layer.1.attention.self.query.weight" not in state
    # BLIP's image encoder stays ViT-L/16 at 224 px (24 blocks, width 1024): not shrinkable
    assert tuple(state["blip.visual_encoder.pos_embed"].shape) == (1, 197, 1024)
    assert "blip.visual_encoder.blocks.23.attn.qkv.weight" in state
    assert tuple(state["mlp.layers.0.weight"].shape) == (1024, 768)


def test_imagereward_stand_in_needs_local_config_and_hub_cache(tmp_path, monkeypatch) -> None:
    from prefgen.rehearsal import assets as plan
    from prefgen.rehearsal import judges_python as writer_python

    # the core venv cannot write ImageReward.pt itself: it says where the package lives
    monkeypatch.delenv("PREFGEN_JUDGES_PYTHON", raising=False)
    with pytest.raises(ConfigError, match="make judges-env"):
        writer_python()

    config = load_config(REPO / "config" / "rehearsal.yaml")
    external = config["judge"]["external"]
    for key, where in (("hub_cache", external), ("med_config", external["models"]["imagereward"])):
        saved, where[key] = where[key], None
        with pytest.raises(ConfigError, match="med_config and hub_cache"):
            plan(config, tmp_path)
        where[key] = saved
    external["models"]["imagereward"]["med_config"] = "elsewhere/med_config.json"
    with pytest.raises(ConfigError, match="into one folder"):
        plan(config, tmp_path)


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
