"""The SDXL-architecture text-to-image model: built offline from a config (mini/smoke) or loaded.

Every component is the diffusers/transformers class SDXL itself uses (``AutoencoderKL``,
``UNet2DConditionModel`` with ``addition_embed_type="text_time"``, ``CLIPTextModel`` +
``CLIPTextModelWithProjection``, two ``CLIPTokenizer``), only smaller, so the tiny stand-in and
``stabilityai/stable-diffusion-xl-base-1.0`` share every later line of code: both are a
``StableDiffusionXLPipeline`` folder read with ``from_pretrained``. The tokenizers use the real
CLIP BPE vocabulary that open_clip ships, so token ids equal those of the paper's encoders.

Also here: the two pieces of SDXL conditioning the trainer and the encoder must compute exactly
as the pipeline does at sampling time (text states via ``encode_prompt`` and ``add_time_ids``).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: SDXL's noise schedule (stabilityai/stable-diffusion-xl-base-1.0 scheduler_config.json).
SDXL_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}


def clip_tokenizer(max_length: int) -> Any:
    """A ``CLIPTokenizer`` with CLIP's BPE vocabulary, built offline from open_clip's copy.

    open_clip ships ``bpe_simple_vocab_16e6.txt.gz`` (the merges OpenAI's CLIP was trained
    with); the vocabulary is the 256 byte symbols, their end-of-word forms, one token per merge
    and the two specials, in that order — the same construction as open_clip's
    ``SimpleTokenizer``, so ids match the released CLIP tokenizers (49408 tokens).
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(vocab)}, merges=merges, model_max_length=max_length
    )


def build_tiny_sdxl(cfg: dict[str, Any], resolution: int, seed: int) -> Any:
    """A randomly initialised SDXL pipeline, sizes from ``cfg`` (the ``foundation`` config).

    Stand-in for SDXL base 1.0 at mini/smoke scale. The UNet keeps SDXL's conditioning: cross
    attention on the concatenated penultimate states of both text encoders and the
    ``text_time`` added embedding (pooled text embedding + six size/crop ids).
    """
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    te = cfg["text_encoder"]
    text_cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=te["hidden_size"],
        intermediate_size=4 * te["hidden_size"],
        num_hidden_layers=te["layers"],
        num_attention_heads=te["heads"],
        max_position_embeddings=te["max_length"],
        projection_dim=te["hidden_size"],
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    text_encoder = CLIPTextModel(text_cfg)
    text_encoder_2 = CLIPTextModelWithProjection(text_cfg)

    v = cfg["vae"]
    n_vae = len(v["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=v["latent_channels"],
        down_block_types=["DownEncoderBlock2D"] * n_vae,
        up_block_types=["UpDecoderBlock2D"] * n_vae,
        block_out_channels=v["block_out_channels"],
        layers_per_block=v["layers_per_block"],
        norm_num_groups=v["norm_num_groups"],
        sample_size=resolution,
    )
    u = cfg["unet"]
    n_unet = len(u["block_out_channels"])
    time_dim = u["addition_time_embed_dim"]
    unet = UNet2DConditionModel(
        sample_size=resolution // 2 ** (n_vae - 1),
        in_channels=v["latent_channels"],
        out_channels=v["latent_channels"],
        down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n_unet - 1),
        up_block_types=["CrossAttnUpBlock2D"] * (n_unet - 1) + ["UpBlock2D"],
        block_out_channels=u["block_out_channels"],
        layers_per_block=u["layers_per_block"],
        attention_head_dim=u["attention_head_dim"],
        norm_num_groups=u["norm_num_groups"],
        cross_attention_dim=2 * te["hidden_size"],
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=te["hidden_size"] + 6 * time_dim,
        transformer_layers_per_block=1,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(te["max_length"]),
        tokenizer_2=clip_tokenizer(te["max_length"]),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )


def load_pipeline(source: str | Path, dtype: torch.dtype = torch.float32) -> Any:
    """``StableDiffusionXLPipeline.from_pretrained``: a local folder (mini) or a hub id (paper).

    Every component comes back frozen (eval mode, no gradients): after ``foundation`` the base
    model is never trained again, only adapters installed on it.
    """
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(source), dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    for name in ("vae", "unet", "text_encoder", "text_encoder_2"):
        getattr(pipe, name).eval().requires_grad_(False)
    return pipe


@dataclass
class Denoiser:
    """What adapter training needs of a pipeline, and no more: the UNet, the noise schedule and
    the VAE's downsampling factor (SDXL's VAE and text encoders would be ~0.9B parameters of
    memory the cached trainer never uses). Quacks like the pipeline for ``image_size`` and
    ``add_time_ids``."""

    unet: Any
    scheduler: Any
    vae_scale_factor: int


def load_denoiser(source: str | Path) -> Denoiser:
    """The frozen UNet, its scheduler and the VAE factor of a pipeline folder or hub id."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(source), subfolder="unet")
    unet.eval().requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(str(source), subfolder="scheduler")
    vae_cfg = AutoencoderKL.load_config(str(source), subfolder="vae")
    return Denoiser(unet, scheduler, 2 ** (len(vae_cfg["block_out_channels"]) - 1))


def image_size(pipe: Any) -> int:
    """Pixel resolution the pipeline generates by default (UNet sample size × VAE factor)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


@torch.no_grad()
def encode_text(pipe: Any, captions: list[str], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Text states exactly as the pipeline conditions on them at sampling time.

    ``prompt_embeds`` [N, L, C]: both encoders' penultimate hidden states, concatenated;
    ``pooled`` [N, P]: the projected pooled state of the second encoder (SDXL's ``text_embeds``).
    """
    embeds, pooled = [], []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        e, _, p, _ = pipe.encode_prompt(
            prompt=chunk,
            device=pipe.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        embeds.append(e.float().cpu())
        pooled.append(p.float().cpu())
    return {"prompt_embeds": torch.cat(embeds), "pooled": torch.cat(pooled)}


def add_time_ids(pipe: Any, batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SDXL's six micro-conditioning ids (original size, crop top-left, target size) for a batch.

    Training uses the values the pipeline uses by default when sampling (no crop, original =
    target = the default resolution), so train and sample see the same conditioning.
    """
    size = image_size(pipe)
    ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=dtype)
    return ids.repeat(batch, 1)
