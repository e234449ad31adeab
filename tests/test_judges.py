"""Judges: the registry, the oracle on a hand-written truth, the `judge` stage end to end, and the
paper-scale judges' scoring glue against each package's documented interface (with fakes: their
weights cannot be downloaded here, and their packages live in envs/judges.yaml)."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from prefgen.cli import main as prefgen_main
from prefgen.data.truth import load_truth, oracle_reward
from prefgen.evaluation import external_judges as ext
from prefgen.evaluation.judge_registry import CORE_JUDGES, build_judges, registry
from prefgen.evaluation.judge_types import JudgeContext, checked_scores, group_by_caption

from tests.eval_fixtures import FakeUserModelScorer, write_samples, write_truth

USERS = [10, 11, 12, 13, 14, 15]
PROMPTS = [1, 2, 3]


def grey(level: int, size: int = 8) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), level, dtype=np.uint8))


@pytest.fixture()
def fake_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Install the fake UserModelScorer where judge_registry.py imports it from."""
    module = types.ModuleType("prefgen.user_model.scorer")
    module.UserModelScorer = FakeUserModelScorer
    monkeypatch.setitem(sys.modules, "prefgen.user_model.scorer", module)


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "results" / "t"
    write_truth(run / "data" / "truth", USERS)
    write_samples(run, {"pipe": [100, 200]}, USERS, PROMPTS)
    return run


# --- registry --------------------------------------------------------------------------------
def test_registry_names_and_environments() -> None:
    reg = registry()
    assert set(reg) == {
        "oracle",
        "pipe",
        "population",
        "clip_score",
        "imagereward",
        "hpsv2",
        "aesthetic",
        "pickscore",
    }
    assert {n for n, s in reg.items() if s.environment == "core"} == set(CORE_JUDGES)
    assert reg["oracle"].synthetic_only and reg["oracle"].personal and reg["pipe"].personal
    assert not reg["population"].personal


def test_build_refuses_wrong_environment_and_unknown(tmp_path: Path) -> None:
    ctx = JudgeContext(run_dir=tmp_path)
    with pytest.raises(ValueError, match="'hpsv2' runs in the 'judges' environment"):
        build_judges(["hpsv2"], "core", ctx)
    with pytest.raises(ValueError, match="'pipe' runs in the 'core' environment"):
        build_judges(["pipe"], "judges", ctx)
    with pytest.raises(KeyError, match="unknown judge 'gpt4o'"):
        build_judges(["gpt4o"], "core", ctx)


def test_oracle_needs_truth(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the synthetic world's truth"):
        build_judges(["oracle"], "core", JudgeContext(run_dir=tmp_path))


def test_checked_scores_names_the_judge() -> None:
    with pytest.raises(ValueError, match="judge 'x' returned 2 scores for 3 images"):
        checked_scores("x", [1.0, 2.0], 3)
    with pytest.raises(ValueError, match="judge 'x' returned 1 non-finite"):
        checked_scores("x", [1.0, np.nan, 2.0], 3)


def test_group_by_caption_keeps_first_seen_order() -> None:
    groups = list(group_by_caption(["b", "a", "b", "c", "a"]))
    assert [c for c, _ in groups] == ["b", "a", "c"]
    assert [i.tolist() for _, i in groups] == [[0, 2], [1, 4], [3]]


# --- oracle ----------------------------------------------------------------------------------
def test_oracle_is_the_users_true_reward(run_dir: Path) -> None:
    truth_dir = run_dir / "data" / "truth"
    judge = build_judges(["oracle"], "core", JudgeContext(run_dir=run_dir, truth_dir=truth_dir))[
        "oracle"
    ]
    images = [grey(60), grey(200), grey(60), grey(200)]
    captions = ["a red star on a grey background"] * 4
    users = np.array([10, 10, 11, 11])
    got = judge.score(images, captions, users)
    np.testing.assert_allclose(got, oracle_reward(images, captions, users, load_truth(truth_dir)))
    # user 10 (bright_lover) prefers the bright image, user 11 (dark_lover) the dark one
    assert got[1] > got[0] and got[2] > got[3]


# --- the judge stage -------------------------------------------------------------------------
def judge_cli(run: Path, index: Path, out: Path, judges: list[str], truth: bool = True) -> int:
    argv = [
        "judge",
        "--params",
        json.dumps({"judge": {"judges": judges, "batch_size": 7}}),
        "--index",
        str(index),
        "--run-dir",
        str(run),
        "--out",
        str(out),
    ]
    if truth:
        argv += ["--truth", str(run / "data" / "truth")]
    return prefgen_main(argv)


def test_judge_stage_scores_every_sample(run_dir: Path, fake_scorer: None) -> None:
    index = run_dir / "samples" / "pipe" / "index.parquet"
    out = run_dir / "scores" / "pipe.parquet"
    assert judge_cli(run_dir, index, out, ["oracle", "pipe", "population", "clip_score"]) == 0
    scores = pd.read_parquet(out)
    idx = pd.read_parquet(index)
    assert list(scores.columns) == list(idx.columns) + [
        "oracle",
        "pipe",
        "population",
        "clip_score",
    ]
    pd.testing.assert_frame_equal(scores[idx.columns], idx)
    images = [Image.open(run_dir / p).convert("RGB") for p in idx["path"]]
    fake = FakeUserModelScorer(run_dir)
    # the stage scored batches of 7 rows, the references score all 36 at once: the same
    # numbers up to the summation order of the batched pixel statistics
    np.testing.assert_allclose(
        scores["pipe"], fake.pipe(images, idx["caption"], idx["user_id"]), rtol=1e-6, atol=1e-9
    )
    np.testing.assert_allclose(
        scores["oracle"],
        oracle_reward(
            images, idx["caption"].tolist(), idx["user_id"], load_truth(run_dir / "data" / "truth")
        ),
        rtol=1e-6,
        atol=1e-9,
    )
    assert len(scores) == 2 * len(USERS) * len(PROMPTS)


def test_judge_stage_rejects_bad_index(run_dir: Path, fake_scorer: None) -> None:
    index = run_dir / "samples" / "pipe" / "index.parquet"
    df = pd.read_parquet(index)
    bad = run_dir / "bad.parquet"
    df.drop(columns="seed").to_parquet(bad)
    with pytest.raises(ValueError, match=r"bad.parquet: missing column\(s\) \['seed'\]"):
        judge_cli(run_dir, bad, run_dir / "o.parquet", ["pipe"])
    df2 = df.copy()
    df2.loc[5, "path"] = "samples/pipe/nope.png"
    df2.to_parquet(bad)
    with pytest.raises(FileNotFoundError, match=r"bad.parquet: row 5: sample image"):
        judge_cli(run_dir, bad, run_dir / "o.parquet", ["pipe"])
    pd.concat([df, df.iloc[[3]]]).to_parquet(bad)
    with pytest.raises(ValueError, match=r"row 36: duplicate \(step, user_id, prompt_id, seed\)"):
        judge_cli(run_dir, bad, run_dir / "o.parquet", ["pipe"])
    df3 = df.copy()
    df3.loc[2, "user_group"] = "train"
    df3.to_parquet(bad)
    with pytest.raises(ValueError, match="row 2: user_group 'train'"):
        judge_cli(run_dir, bad, run_dir / "o.parquet", ["pipe"])
    assert not (run_dir / "o.parquet").exists()


def test_judge_stage_without_judges_is_a_config_error(run_dir: Path) -> None:
    argv = [
        "judge",
        "--params",
        json.dumps({"judge": {"judges": []}}),
        "--index",
        "x",
        "--run-dir",
        str(run_dir),
        "--out",
        "y",
    ]
    assert prefgen_main(argv) == 2


# --- paper-scale judges: scoring glue against each package's documented interface -------------
class FakeImageRewardModel:
    """Mimics ``ImageReward.ImageReward.score(prompt, image)``: a list of images gives a list of
    rewards, except that a one-image list comes back as a bare float (torch.squeeze in the
    package's ``inference_rank``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def score(self, prompt: str, image):
        assert isinstance(image, list) and all(isinstance(i, Image.Image) for i in image)
        self.calls.append((prompt, len(image)))
        rewards = [np.asarray(i).mean() / 255.0 + len(prompt) for i in image]
        return rewards[0] if len(rewards) == 1 else rewards


def test_imagereward_glue(monkeypatch: pytest.MonkeyPatch) -> None:
    model = FakeImageRewardModel()
    loaded = {}

    def fake_load(name, device="cpu", download_root=None, med_config=None):
        loaded.update(name=name, device=device, download_root=download_root, med_config=med_config)
        return model

    monkeypatch.setitem(sys.modules, "ImageReward", types.SimpleNamespace(load=fake_load))
    ctx = JudgeContext(
        run_dir=Path("."),
        device="cpu",
        options={"imagereward": {"model": "ImageReward-v1.0", "download_root": "/w"}},
    )
    judge = build_judges(["imagereward"], "judges", ctx)["imagereward"]
    assert loaded == {
        "name": "ImageReward-v1.0",
        "device": "cpu",
        "download_root": "/w",
        "med_config": None,
    }
    images = [grey(10), grey(100), grey(200), grey(50)]
    captions = ["cat", "a dog", "cat", "bird!"]
    got = judge.score(images, captions, np.zeros(4, dtype=np.int64))
    want = [10 / 255 + 3, 100 / 255 + 5, 200 / 255 + 3, 50 / 255 + 5]
    np.testing.assert_allclose(got, want)
    assert model.calls == [("cat", 2), ("a dog", 1), ("bird!", 1)]


def test_imagereward_checkpoint_must_cover_every_parameter(tmp_path: Path) -> None:
    """ImageReward.load's strict=False would leave a parameter absent from the file random."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    full = tmp_path / "full.pt"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, full)
    ext.check_covers_parameters(model, full)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in model.state_dict().items() if k != "1.bias"}, partial)
    with pytest.raises(ValueError, match=r"partial\.pt: 1 of the model's parameters .*1\.bias"):
        ext.check_covers_parameters(model, partial)


def test_hub_cache_is_set_before_the_hub_library_reads_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", "unchanged")
    ext.use_hub_cache(None)
    assert os.environ["HF_HUB_CACHE"] == "unchanged"
    # huggingface_hub is imported in this process and read its cache folder then
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    ext.use_hub_cache(tmp_path)
    assert os.environ["HF_HUB_CACHE"] == str(tmp_path.resolve())
    with pytest.raises(RuntimeError, match="imported before it was set"):
        ext.use_hub_cache(tmp_path / "other")
    monkeypatch.delitem(sys.modules, "huggingface_hub.constants")  # a fresh judges process
    (tmp_path / "fresh").mkdir()
    ext.use_hub_cache(tmp_path / "fresh")
    assert os.environ["HF_HUB_CACHE"] == str((tmp_path / "fresh").resolve())
    with pytest.raises(FileNotFoundError, match="hub_cache=.*missing.*no such folder"):
        ext.use_hub_cache(tmp_path / "missing")


def test_hpsv2_glue(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_score(imgs_path, prompt, hps_version="v2.0"):
        """``hpsv2.score``: a list of images and one prompt -> list of numpy float32 scores."""
        calls.append((prompt, len(imgs_path), hps_version))
        return [np.float32(np.asarray(i).mean() / 255.0) for i in imgs_path]

    monkeypatch.setitem(sys.modules, "hpsv2", types.SimpleNamespace(score=fake_score))
    ctx = JudgeContext(run_dir=Path("."), options={"hpsv2": {"version": "v2.1"}})
    judge = build_judges(["hpsv2"], "judges", ctx)["hpsv2"]
    got = judge.score([grey(51), grey(102), grey(204)], ["x", "y", "x"], np.zeros(3, np.int64))
    np.testing.assert_allclose(got, [0.2, 0.4, 0.8], rtol=1e-6)
    assert calls == [("x", 2, "v2.1"), ("y", 1, "v2.1")]


class FakeOpenClipModel(torch.nn.Module):
    """``encode_image`` of an open_clip model: a fixed linear map of the pixels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, dim, bias=False)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


def fake_preprocess(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.float32) / 255.0).permute(
        2, 0, 1
    )


@pytest.mark.parametrize("fmt", [".pth", ".safetensors"])
def test_aesthetic_glue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(0)
    clip = FakeOpenClipModel(dim=12)
    created = {}

    def create_model_and_transforms(name, pretrained=None, device=None):
        created.update(name=name, pretrained=pretrained)
        return clip, None, fake_preprocess

    monkeypatch.setitem(
        sys.modules,
        "open_clip",
        types.SimpleNamespace(create_model_and_transforms=create_model_and_transforms),
    )
    mlp = ext.AestheticMLP(12)
    weights = tmp_path / f"mlp{fmt}"
    if fmt == ".pth":
        torch.save(mlp.state_dict(), weights)
    else:
        from safetensors.torch import save_file

        save_file(mlp.state_dict(), str(weights))
    options = {
        "clip_model": "ViT-L-14",
        "clip_pretrained": "openai",
        "mlp_repo": None,
        "mlp_weights": str(weights),
    }
    judge = build_judges(
        ["aesthetic"], "judges", JudgeContext(run_dir=tmp_path, options={"aesthetic": options})
    )
    assert created == {"name": "ViT-L-14", "pretrained": "openai"}
    images = [grey(30), grey(90), grey(250)]
    got = judge["aesthetic"].score(images, ["a", "b", "c"], np.zeros(3, np.int64))
    with torch.no_grad():
        emb = clip.encode_image(torch.stack([fake_preprocess(i) for i in images]))
        want = mlp.eval()(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1).numpy()
    # the judge's batched forward vs this one: float32, summation order only
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the published state dict's key layout is what AestheticMLP loads
    assert sorted(mlp.state_dict()) == sorted(
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")
    )


def tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=64,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=8,
            patch_size=4,
        ),
        projection_dim=8,
    )
    return CLIPModel(cfg).eval()


class FakePickScoreProcessor:
    """``AutoProcessor`` call conventions: ``images=`` -> pixel_values, ``text=`` -> ids+mask."""

    def __call__(
        self,
        images=None,
        text=None,
        padding=None,
        truncation=None,
        max_length=None,
        return_tensors=None,
    ):
        assert return_tensors == "pt"
        if images is not None:
            return {"pixel_values": torch.stack([fake_preprocess(i) for i in images])}
        ids = torch.tensor([[2 + (ord(c) % 60) for c in t[:6].ljust(6)] for t in text])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_pickscore_glue(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_clip()
    processor = FakePickScoreProcessor()
    fake_tf = types.SimpleNamespace(
        AutoProcessor=types.SimpleNamespace(from_pretrained=lambda name: processor),
        CLIPModel=types.SimpleNamespace(from_pretrained=lambda name: model),
    )
    monkeypatch.setitem(sys.modules, "transformers", fake_tf)
    options = {
        "pickscore": {
            "processor": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
            "model": "yuvalkirstain/PickScore_v1",
        }
    }
    judge = build_judges(["pickscore"], "judges", JudgeContext(run_dir=Path("."), options=options))[
        "pickscore"
    ]
    monkeypatch.delitem(sys.modules, "transformers")  # the real one for the reference below
    images, captions = [grey(20), grey(140), grey(220)], ["a cat", "a dog", "a bird"]
    got = judge.score(images, captions, np.zeros(3, np.int64))
    from prefgen.evaluation.external_judges import _features

    with torch.no_grad():
        img = _features(model.get_image_features(**processor(images=images, return_tensors="pt")))
        txt = _features(model.get_text_features(**processor(text=captions, return_tensors="pt")))
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        want = (model.logit_scale.exp() * (img * txt).sum(-1)).numpy()
    # the judge's batched forward vs this one: float32, summation order only
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert len(set(np.round(got, 6))) == 3


def test_external_judge_without_package_names_the_environment(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # import fails
    ctx = JudgeContext(run_dir=Path("."), options={"imagereward": {"model": "ImageReward-v1.0"}})
    with pytest.raises(ImportError, match="make judges-env"):
        build_judges(["imagereward"], "judges", ctx)


def test_external_judge_needs_its_options() -> None:
    with pytest.raises(KeyError, match="judge.external.models.hpsv2"):
        build_judges(["hpsv2"], "judges", JudgeContext(run_dir=Path(".")))


def test_judges_env_requirements_come_from_the_conda_file(repo: Path) -> None:
    reqs = ext.pip_requirements(repo / "envs" / "judges.yaml")
    assert "image-reward==1.5" in reqs and "hpsv2==1.2.0" in reqs and "timm==0.6.13" in reqs
    assert not any(r.startswith("-e") for r in reqs)  # prefgen's own pins would conflict
