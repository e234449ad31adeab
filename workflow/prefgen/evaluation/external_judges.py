"""The paper-scale judges (ImageReward, HPSv2, LAION aesthetic, PickScore), run in envs/judges.yaml.

PIPE Fig. 2 scores every checkpoint with general-purpose image-quality models beside the PIPE
user model. Their packages cannot share the core environment (image-reward pins
``timm==0.6.13``, hpsv2 pins ``protobuf<4``; see envs/judges.yaml), so this module imports each
package only when its judge is built, and the ``judge_external`` rule runs it with the judges
environment's interpreter. Every judge is loaded through the package's own entry point
(``ImageReward.load``, ``hpsv2.score``, ``open_clip.create_model_and_transforms``,
``transformers.CLIPModel.from_pretrained``); their weights come from the hubs at paper scale.
tests/test_judges.py checks the scoring glue against each documented interface with fakes;
tests/test_rehearsal_assets.py runs ImageReward, the aesthetic head and PickScore for real, in
the judges environment, on the random-weight files ``prefgen rehearsal-assets`` writes.

``python -m prefgen.evaluation.external_judges requirements envs/judges.yaml`` prints the pip list
the Makefile installs into ``.venv-judges``; ``... check`` imports every package (no weights);
``... imagereward-checkpoint`` writes the state dict of the package's own ``ImageReward`` class with
random weights (the rehearsal's stand-in for ``ImageReward.pt``, see ``prefgen.rehearsal``).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from prefgen.evaluation.judge_types import JudgeContext, JudgeSpec, group_by_caption


def resolve_device(device: str) -> str:
    """``auto`` means CUDA when this process sees a GPU (the judges are GPU jobs on the cluster)."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _import(module: str, judge: str) -> Any:
    """Import an external package, or say which environment provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"judge '{judge}' needs the Python package providing '{module}', which lives in the "
            "judges environment (envs/judges.yaml): run `make judges-env` and Snakemake with "
            "PREFGEN_JUDGES_PYTHON=.venv-judges/bin/python, or use `--sdm conda`"
        ) from exc


# --- ImageReward (THUDM, BLIP-based reward trained on human rankings) -----------------------
class ImageRewardJudge:
    """``ImageReward.load(name).score(prompt, [images])``: one call per caption (BLIP encodes the
    prompt once and each image against it; a one-image list comes back as a bare float)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @classmethod
    def load(cls, options: dict[str, Any], device: str) -> ImageRewardJudge:
        RM = _import("ImageReward", "imagereward")
        # med_config None: the package fetches THUDM/ImageReward's med_config.json (BLIP's BERT)
        model = RM.load(
            options["model"],
            device=device,
            download_root=options.get("download_root"),
            med_config=options.get("med_config"),
        )
        if Path(options["model"]).is_file():
            check_covers_parameters(model, options["model"])
        return cls(model)

    def score(
        self, images: Sequence[Image.Image], captions: Sequence[str], user_ids: np.ndarray
    ) -> np.ndarray:
        out = np.empty(len(images), dtype=np.float64)
        for caption, idx in group_by_caption(captions):
            with torch.no_grad():
                rewards = self.model.score(caption, [images[i] for i in idx])
            out[idx] = np.atleast_1d(np.asarray(rewards, dtype=np.float64))
        return out


def check_covers_parameters(model: nn.Module, checkpoint: str | Path) -> None:
    """``ImageReward.load`` loads with ``load_state_dict(strict=False)``: a parameter missing from
    a local checkpoint (another model's file, a truncated one) would silently keep its random
    initial value. Raise naming the file and the first missing parameters instead."""
    keys = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).keys()
    missing = [name for name, _ in model.named_parameters() if name not in keys]
    if missing:
        raise ValueError(
            f"{checkpoint}: {len(missing)} of the model's parameters are not in the checkpoint "
            f"(e.g. {missing[:3]}); ImageReward.load would leave them at random values"
        )


# --- HPSv2 (human preference score: fine-tuned open_clip ViT-H-14) ---------------------------
class HPSv2Judge:
    """``hpsv2.score(images, prompt, hps_version=...)``, the package's documented entry point.

    It takes one prompt per call and reloads its checkpoint on every call, so rows are grouped by
    caption: one call per distinct prompt in a batch (PIPE's protocol has 500 prompts).
    """

    def __init__(self, hpsv2: Any, version: str) -> None:
        self.hpsv2 = hpsv2
        self.version = version

    @classmethod
    def load(cls, options: dict[str, Any], device: str) -> HPSv2Judge:
        # hpsv2 picks its device itself (cuda when available), so `device` is not passed on.
        return cls(_import("hpsv2", "hpsv2"), str(options["version"]))

    def score(
        self, images: Sequence[Image.Image], captions: Sequence[str], user_ids: np.ndarray
    ) -> np.ndarray:
        out = np.empty(len(images), dtype=np.float64)
        for caption, idx in group_by_caption(captions):
            scores = self.hpsv2.score([images[i] for i in idx], caption, hps_version=self.version)
            out[idx] = np.asarray([float(s) for s in scores], dtype=np.float64)
        return out


# --- LAION aesthetic predictor (MLP on CLIP ViT-L/14 image embeddings) ----------------------
class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor head: five linear layers, dropout between, no activation.

    The layer layout (``layers.{0,2,4,6,7}``) must match the published state dict exactly.
    """

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """A tensor state dict from ``.safetensors`` or ``.pth`` (tensors only: weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


class AestheticJudge:
    """LAION aesthetic score: the MLP applied to the L2-normalised open_clip image embedding."""

    def __init__(
        self, clip_model: Any, preprocess: Any, mlp: Any, device: str, batch_size: int = 32
    ) -> None:
        self.clip_model = clip_model.eval()
        self.preprocess = preprocess
        self.mlp = mlp.eval()
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def load(cls, options: dict[str, Any], device: str) -> AestheticJudge:
        open_clip = _import("open_clip", "aesthetic")
        name = str(options["clip_model"])
        if name.endswith(".json"):  # an architecture file (the rehearsal's tiny CLIP)
            from prefgen.user_model.clip import open_clip_name

            name = open_clip_name(name)
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=options["clip_pretrained"], device=device
        )
        weights = options["mlp_weights"]
        if options.get("mlp_repo"):
            hub = _import("huggingface_hub", "aesthetic")
            weights = hub.hf_hub_download(options["mlp_repo"], weights)
        state = load_state_dict(weights)
        mlp = AestheticMLP(int(state["layers.0.weight"].shape[1]))
        mlp.load_state_dict(state)
        return cls(model, preprocess, mlp.to(device), device)

    def score(
        self, images: Sequence[Image.Image], captions: Sequence[str], user_ids: np.ndarray
    ) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = torch.stack(
                    [self.preprocess(im) for im in images[start : start + self.batch_size]]
                ).to(self.device)
                emb = self.clip_model.encode_image(batch).float()
                emb = emb / emb.norm(dim=-1, keepdim=True)
                out.append(self.mlp(emb).squeeze(-1).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.empty(0)


# --- PickScore (CLIP ViT-H-14 fine-tuned on Pick-a-Pic; transformers) ------------------------
class PickScoreJudge:
    """``logit_scale.exp() * cos(image, caption)`` with the model's own processor, as in the
    PickScore model card (each image against its own caption)."""

    def __init__(self, model: Any, processor: Any, device: str, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.processor = processor
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def load(cls, options: dict[str, Any], device: str) -> PickScoreJudge:
        transformers = _import("transformers", "pickscore")
        processor = transformers.AutoProcessor.from_pretrained(options["processor"])
        # PickScore_v1 is a CLIPModel (config.json: model_type clip), so its own class loads it.
        # Not AutoModel, as the model card has it: in the judges environment, transformers
        # 4.49's AutoModel.from_pretrained lists every model config, TimmWrapperConfig's module
        # imports timm.data.ImageNetInfo, and image-reward's timm==0.6.13 has none, so it raises
        # for any model there.
        model = transformers.CLIPModel.from_pretrained(options["model"]).to(device)
        return cls(model, processor, device)

    def score(
        self, images: Sequence[Image.Image], captions: Sequence[str], user_ids: np.ndarray
    ) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                stop = start + self.batch_size
                img_in = self.processor(images=list(images[start:stop]), return_tensors="pt")
                txt_in = self.processor(
                    text=list(captions[start:stop]),
                    padding=True,
                    truncation=True,
                    max_length=77,
                    return_tensors="pt",
                )
                img = _features(
                    self.model.get_image_features(
                        pixel_values=img_in["pixel_values"].to(self.device)
                    )
                )
                txt = _features(
                    self.model.get_text_features(
                        **{k: v.to(self.device) for k, v in txt_in.items()}
                    )
                )
                img = img / img.norm(dim=-1, keepdim=True)
                txt = txt / txt.norm(dim=-1, keepdim=True)
                out.append((self.model.logit_scale.exp() * (img * txt).sum(-1)).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.empty(0)


def _features(output: Any) -> Any:
    """transformers 4 returns the projected embeddings as a tensor; 5 may wrap them in an output."""
    if isinstance(output, torch.Tensor):
        return output.float()
    return output.pooler_output.float()


def _builder(cls: Any, name: str) -> Any:
    def build(ctx: JudgeContext) -> Any:
        options = ctx.options.get(name)
        if options is None:
            raise KeyError(f"judge '{name}': no options under judge.external.models.{name}")
        return cls.load(options, resolve_device(ctx.device))

    return build


EXTERNAL_JUDGES: dict[str, JudgeSpec] = {
    spec.name: spec
    for spec in [
        JudgeSpec(
            "imagereward",
            "ImageReward (BLIP reward model trained on human rankings)",
            environment="judges",
            personal=False,
            build=_builder(ImageRewardJudge, "imagereward"),
        ),
        JudgeSpec(
            "hpsv2",
            "HPSv2 human preference score (open_clip ViT-H-14)",
            environment="judges",
            personal=False,
            build=_builder(HPSv2Judge, "hpsv2"),
        ),
        JudgeSpec(
            "aesthetic",
            "LAION aesthetic predictor (MLP on CLIP ViT-L/14)",
            environment="judges",
            personal=False,
            build=_builder(AestheticJudge, "aesthetic"),
        ),
        JudgeSpec(
            "pickscore",
            "PickScore (CLIP ViT-H-14 fine-tuned on Pick-a-Pic)",
            environment="judges",
            personal=False,
            build=_builder(PickScoreJudge, "pickscore"),
        ),
    ]
}

#: packages recorded beside the external scores (the judges environment's versions)
EXTERNAL_PACKAGES = [
    "image-reward",
    "hpsv2",
    "open_clip_torch",
    "transformers",
    "timm",
    "torch",
    "torchvision",
    "huggingface_hub",
    "openai-clip",
]


def use_hub_cache(path: str | Path | None) -> None:
    """Point this process's Hugging Face hub cache at ``path`` (``judge.external.hub_cache``).

    The judges' packages resolve hub names themselves (ImageReward's BLIP calls
    ``BertTokenizer.from_pretrained('bert-base-uncased')``), and huggingface_hub reads
    ``HF_HUB_CACHE`` once, when it is first imported: so this runs before any judge is built.
    ``None`` keeps the environment's cache.
    """
    if path is None:
        return
    path = Path(path).resolve()
    constants = sys.modules.get("huggingface_hub.constants")  # where the variable is read
    if constants is not None and Path(constants.HF_HUB_CACHE).resolve() != path:
        raise RuntimeError(
            f"judge.external.hub_cache={str(path)!r}: huggingface_hub was imported before it was "
            f"set and reads {constants.HF_HUB_CACHE!r}; set HF_HUB_CACHE before starting "
            "the process instead"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"judge.external.hub_cache={str(path)!r}: no such folder")
    os.environ["HF_HUB_CACHE"] = str(path)


def write_imagereward_checkpoint(med_config: str | Path, out: str | Path, seed: int) -> None:
    """``torch.save`` of the state dict of the package's own ``ImageReward`` model (BLIP ViT-L
    at 224 px, the BERT of ``med_config``, the 768-wide reward head), random weights drawn under
    ``seed``: the key set and shapes ``ImageReward.load`` expects of ``ImageReward.pt``. The
    reward head is redrawn with torch's default ``Linear`` init: the package's own, N(0, 1/769)
    through five layers, gives an untrained head whose output is constant to float32 precision,
    so no score would depend on the image. Floating tensors are stored in float16 (half the file;
    ``load_state_dict`` copies them into the model's float32 parameters), the rest as they are.
    Building the model calls ``BertTokenizer.from_pretrained('bert-base-uncased')``, so the hub
    cache must hold it."""
    from prefgen.core.io import atomic_path

    RM = _import("ImageReward", "imagereward")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RM.ImageReward(med_config=str(med_config), device="cpu")
        for layer in model.mlp.modules():
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
    state = {
        k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }
    # through a file object: the archive's inner folder is then "archive", not the (random)
    # temporary file's name, so the same seed gives the same bytes
    with atomic_path(out) as tmp, tmp.open("wb") as fh:
        torch.save(state, fh)


def pip_requirements(env_file: str | Path) -> list[str]:
    """The pip section of a conda env file: the one package list for conda and the venv."""
    import yaml

    env = yaml.safe_load(Path(env_file).read_text())
    pips = [d["pip"] for d in env.get("dependencies", []) if isinstance(d, dict) and "pip" in d]
    if not pips:
        raise ValueError(f"{env_file}: no pip section under dependencies")
    return [str(p) for p in pips[0]]


def check_imports() -> dict[str, str]:
    """Import every external judge package and run what each does before loading weights: the
    judges env is usable. HPSv2's tokenizer is built, because `hpsv2.score` builds it on every
    call and the package as published lacks its vocabulary file (envs/judges.post-deploy.sh)."""
    from importlib.metadata import version

    for module in ["ImageReward", "hpsv2", "open_clip", "transformers"]:
        importlib.import_module(module)
    hps_open_clip = importlib.import_module("hpsv2.src.open_clip")
    tokens = hps_open_clip.get_tokenizer("ViT-H-14")(["a photo of a cat"])
    if tuple(tokens.shape) != (1, 77):
        raise RuntimeError(f"HPSv2's ViT-H-14 tokenizer gave shape {tuple(tokens.shape)}")
    return {p: version(p) for p in EXTERNAL_PACKAGES}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "requirements":
        print("\n".join(pip_requirements(argv[1])))
    elif argv == ["check"]:
        for name, ver in check_imports().items():
            print(f"{name}=={ver}")
    elif len(argv) == 4 and argv[0] == "imagereward-checkpoint":
        write_imagereward_checkpoint(argv[1], argv[2], int(argv[3]))
    else:
        raise SystemExit(
            "usage: python -m prefgen.evaluation.external_judges {requirements ENV_YAML | check"
            " | imagereward-checkpoint MED_CONFIG OUT_PT SEED}"
        )


if __name__ == "__main__":
    main()
