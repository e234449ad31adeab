"""The vision-language model PPD reads its user embeddings from: LLaVA-OneVision, one code path.

Paper scale loads ``llava-hf/llava-onevision-qwen2-7b-ov-hf`` (or any LLaVA-OneVision checkpoint)
with ``from_pretrained``. Mini and smoke scale cannot download it, so :func:`build_stand_in`
assembles a *tiny LLaVA-OneVision stand-in* offline from a config: the same transformers classes
(``LlavaOnevisionForConditionalGeneration`` with a SigLIP vision tower and a Qwen2 language
model, ``LlavaOnevisionProcessor`` with its image and video processors), a byte-level BPE
tokenizer built with the ``tokenizers`` library (image/video tokens, ChatML special tokens and a
chat template shaped like the llava-hf one), weights initialised from the seed. Everything
downstream (prompt building, the processor's image-token expansion, hidden-state read-out) is
therefore the code the 7B model runs through.

A randomly initialised stand-in knows nothing about images. To make its embedding carry what the
images show, the vision tower can be initialised from our mini CLIP (``vision_init: clip``): the
open_clip ViT's patch embedding, position embeddings, transformer blocks and final LayerNorm are
copied into the SigLIP layout (the tower's shape is taken from the CLIP checkpoint so every
tensor fits). open_clip's class token and ``ln_pre`` have no SigLIP counterpart and are dropped.
A random language model still cannot tell which image of a shot was preferred, so with
``vlm.pretrain.steps > 0`` the rule ``vlm_pretrain`` instruction-tunes the projector and the
language model on PPD's own prompt over training users' pairs
(:mod:`prefgen.embeddings.vlm_pretrain`) and :func:`build_stand_in` loads those weights
(``weights_dir``). It is a stand-in either way: every output that uses it is labelled so
(:data:`STAND_IN_LABEL`, :data:`PRETRAINED_STAND_IN_LABEL`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefgen.core.config import ConfigError
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed

log = get_logger(__name__)

#: Written into every output's metadata and table caption when the stand-in produced it.
STAND_IN_LABEL = (
    "tiny LLaVA-OneVision stand-in (random-initialised language model, built "
    "offline) - not the paper's VLM"
)
#: The same, when the stand-in was instruction-tuned by ``vlm_pretrain``.
PRETRAINED_STAND_IN_LABEL = (
    "tiny LLaVA-OneVision stand-in (CLIP vision tower, projector and language model "
    "instruction-tuned offline on training users' PPD prompts) - not the paper's VLM"
)
STAND_IN = "stand-in"
#: The pre-trained stand-in's weight file in models/vlm_stand_in/ (written by ``vlm_pretrain``).
STAND_IN_WEIGHTS = "model.safetensors"

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, "<|im_start|>", "<|im_end|>", IMAGE_TOKEN, VIDEO_TOKEN]

#: ChatML template with the llava-hf LLaVA-OneVision layout: images listed as content items are
#: rendered before the text of their message. PPD interleaves images with text, so its prompt
#: puts the image tokens inside the text (the processor expands them in place) and passes no
#: image content items; both templates then render the same interleaved sequence.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'video' %}{{ '<video>' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Text the stand-in's BPE merges are learned from: the words of PPD's prompt and chat roles.
#: Fixed text, not data, so the tokenizer (hence the model) is identical in every rule that
#: builds it; captions outside this vocabulary fall back to byte-level pieces, never to <unk>.
TOKENIZER_CORPUS = (
    "system user assistant You are a helpful assistant. "
    "You will see a few examples of images that one user preferred and dispreferred. "
    "Example 1. 2. 3. 4. 5. 6. 7. 8. Caption: This is the preferred image. "
    "This is the dispreferred image. "
    "Describe the preferred image and the dispreferred image of each example, explain how they "
    "differ in style, visual quality and aesthetics, then summarize the differences into a "
    "profile of this user's taste. a an the on in of with photo painting background "
    "red orange yellow green teal blue purple pink white black grey brown beige dark light "
    "bright vivid pale soft crisp circle square triangle star diamond cross"
)


@dataclass
class VLM:
    """A LLaVA-OneVision model with its processor, plus what outputs must say about it."""

    model: Any
    processor: Any
    name: str
    stand_in: bool
    config_json: str
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            self.label = STAND_IN_LABEL if self.stand_in else self.name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present (the rule requests ``gpu=1``), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigError(f"vlm.dtype: expected one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]


def pretrain_steps(vlm_cfg: dict[str, Any]) -> int:
    """Steps of ``vlm_pretrain`` the configured VLM needs (0: a checkpoint, or no pre-training)."""
    if vlm_cfg["model"] != STAND_IN:
        return 0
    return int(vlm_cfg["pretrain"]["steps"])


def load_vlm(
    vlm_cfg: dict[str, Any],
    seed: int,
    clip_dir: str | Path | None = None,
    stand_in_dir: str | Path | None = None,
) -> VLM:
    """The configured VLM: the offline stand-in, or a LLaVA-OneVision checkpoint by name/path.

    A stand-in with ``vlm.pretrain.steps > 0`` loads the weights ``vlm_pretrain`` wrote in
    ``stand_in_dir`` (models/vlm_stand_in/); without them it is an error, never a silent
    fallback to the random language model.
    """
    device, dtype = resolve_device(vlm_cfg["device"]), resolve_dtype(vlm_cfg["dtype"])
    if vlm_cfg["model"] == STAND_IN:
        if pretrain_steps(vlm_cfg) > 0 and stand_in_dir is None:
            raise ConfigError(
                "vlm.pretrain.steps > 0 but no --vlm-stand-in directory given "
                "(models/vlm_stand_in/, written by the rule vlm_pretrain)"
            )
        if pretrain_steps(vlm_cfg) == 0:
            stand_in_dir = None
        vlm = build_stand_in(vlm_cfg["stand_in"], seed, clip_dir, stand_in_dir)
        vlm.model.to(device=device, dtype=dtype)
    else:
        vlm = load_pretrained(vlm_cfg["model"], dtype, device)
    vlm.model.eval().requires_grad_(False)
    return vlm


def load_pretrained(name: str, dtype: torch.dtype, device: torch.device) -> VLM:
    """Paper scale: the checkpoint's own model and processor classes, via ``from_pretrained``.

    Weights load straight onto ``device``; the tokenizer pads on the left so that batched
    generation (PPD's profile) continues every prompt from its own last token.
    """
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(
        name, dtype=dtype, device_map=str(device)
    )
    processor = AutoProcessor.from_pretrained(name)
    processor.tokenizer.padding_side = "left"
    return VLM(
        model=model,
        processor=processor,
        name=name,
        stand_in=False,
        config_json=model.config.to_json_string(),
    )


def build_tokenizer(vocab_size: int) -> Any:
    """Byte-level BPE tokenizer with the special tokens the LLaVA-OneVision processor needs.

    Built offline with the ``tokenizers`` library and wrapped as a transformers fast tokenizer
    whose ``image_token``/``video_token`` attributes the processor reads. Left padding, so the
    last position of every row in a batch is a real token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([TOKENIZER_CORPUS], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD_TOKEN,
        eos_token="<|im_end|>",
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
    )


def build_processor(
    tokenizer: Any,
    image_size: int,
    patch_size: int,
    image_mean: list[float],
    image_std: list[float],
) -> Any:
    """LlavaOnevisionProcessor for square ``image_size`` inputs and one grid pinpoint.

    With several images per prompt LLaVA-OneVision encodes each image at base resolution:
    ``(image_size / patch_size)**2`` patch features plus one newline feature.
    """
    from transformers import (
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    image_processor = LlavaOnevisionImageProcessor(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=[[image_size, image_size]],
        image_mean=image_mean,
        image_std=image_std,
    )
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(),
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )


def build_stand_in(
    cfg: dict[str, Any],
    seed: int,
    clip_dir: str | Path | None = None,
    weights_dir: str | Path | None = None,
) -> VLM:
    """The tiny LLaVA-OneVision stand-in, deterministic from ``seed`` (and the CLIP weights).

    ``cfg`` is the ``vlm.stand_in`` config section. With ``vision_init: clip`` the SigLIP tower
    takes its shape and weights from the mini CLIP in ``clip_dir``; otherwise from ``cfg.vision``.
    ``weights_dir`` (models/vlm_stand_in/ from ``vlm_pretrain``) replaces every tensor with the
    instruction-tuned ones; the architecture, tokenizer and processor are built the same way.
    """
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = build_tokenizer(cfg["vocab_size"])
    clip_visual, mean, std = (
        None,
        [0.48145466, 0.4578275, 0.40821073],
        [0.26862954, 0.26130258, 0.27577711],
    )
    if cfg["vision_init"] == "clip":
        if clip_dir is None:
            raise ConfigError("vlm.stand_in.vision_init is 'clip' but no --clip directory given")
        clip_visual, mean, std = _load_clip_visual(clip_dir)
        vision = _siglip_shape_from_clip(clip_visual)
    elif cfg["vision_init"] == "random":
        vision = dict(cfg["vision"])
    else:
        raise ConfigError(
            f"vlm.stand_in.vision_init: expected 'clip' or 'random', got {cfg['vision_init']!r}"
        )
    vision_config = SiglipVisionConfig(vision_use_head=False, **vision)
    text = cfg["text"]
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=text["num_attention_heads"],
        num_key_value_heads=text["num_key_value_heads"],
        max_position_embeddings=4096,
        initializer_range=cfg["initializer_range"],
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        image_grid_pinpoints=[[vision["image_size"], vision["image_size"]]],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "vlm", "stand_in"))
        model = LlavaOnevisionForConditionalGeneration(config)
    if clip_visual is not None:
        copy_clip_visual_to_siglip(clip_visual, model.model.vision_tower)
    label = STAND_IN_LABEL
    if weights_dir is not None:
        load_stand_in_weights(model, weights_dir)
        label = PRETRAINED_STAND_IN_LABEL
    processor = build_processor(tokenizer, vision["image_size"], vision["patch_size"], mean, std)
    meta = {
        "model": STAND_IN,
        "label": label,
        "vision_init": cfg["vision_init"],
        "config": json.loads(config.to_json_string()),
    }
    if weights_dir is not None:
        meta["pretrained"] = True
    return VLM(
        model=model,
        processor=processor,
        name=STAND_IN,
        stand_in=True,
        config_json=json.dumps(meta, sort_keys=True),
        label=label,
    )


def load_stand_in_weights(model: Any, folder: str | Path) -> None:
    """Load the pre-trained stand-in's tensors (every one, strictly) into ``model``."""
    from prefgen.core.io import check_state_shapes, load_tensors

    path = Path(folder) / STAND_IN_WEIGHTS
    state = load_tensors(path)
    check_state_shapes(model, state, path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not match the stand-in built from vlm.stand_in "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); "
            "rerun vlm_pretrain"
        )


def _load_clip_visual(clip_dir: str | Path) -> tuple[Any, list[float], list[float]]:
    """The mini CLIP's open_clip vision tower and its normalisation constants."""
    from prefgen.user_model.clip import load_clip

    model, preprocess, _ = load_clip(clip_dir)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    for transform in getattr(preprocess, "transforms", []):
        if hasattr(transform, "mean") and hasattr(transform, "std"):
            mean, std = [float(v) for v in transform.mean], [float(v) for v in transform.std]
    return model.visual, mean, std


def _siglip_shape_from_clip(visual: Any) -> dict[str, Any]:
    """SigLIP vision config fields that make every open_clip ViT tensor fit."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ConfigError(
            f"vlm.stand_in.vision_init 'clip' needs an open_clip ViT vision tower, "
            f"got {type(visual).__name__}"
        )
    block = visual.transformer.resblocks[0]
    for i, blk in enumerate(visual.transformer.resblocks):
        plain = (
            isinstance(blk.attn, torch.nn.MultiheadAttention)
            and isinstance(getattr(blk, "ls_1", torch.nn.Identity()), torch.nn.Identity)
            and isinstance(getattr(blk, "ls_2", torch.nn.Identity()), torch.nn.Identity)
            and isinstance(getattr(blk, "ln_attn", torch.nn.Identity()), torch.nn.Identity)
        )
        if not plain:
            raise ConfigError(
                f"vlm.stand_in.vision_init 'clip': CLIP block {i} has layer scale, "
                "extra norms or a custom attention that SigLIP cannot express; "
                "use vision_init: random"
            )
    width = visual.conv1.out_channels
    act = type(block.mlp.gelu).__name__
    return {
        "hidden_size": width,
        "intermediate_size": block.mlp.c_fc.out_features,
        "num_hidden_layers": len(visual.transformer.resblocks),
        "num_attention_heads": block.attn.num_heads,
        "patch_size": visual.conv1.kernel_size[0],
        "image_size": visual.image_size[0]
        if isinstance(visual.image_size, tuple)
        else int(visual.image_size),
        "hidden_act": "quick_gelu" if act == "QuickGELU" else "gelu",
        "layer_norm_eps": block.ln_1.eps,
    }


@torch.no_grad()
def copy_clip_visual_to_siglip(visual: Any, siglip: Any) -> int:
    """Copy an open_clip ViT's weights into a SigLIP vision transformer of matching shape.

    Returns the number of tensors copied. The class token (and its position) and ``ln_pre`` are
    open_clip-only and are left out; the SigLIP patch-embedding bias is zeroed (open_clip's
    ``conv1`` has none).
    """
    emb = siglip.embeddings
    emb.patch_embedding.weight.copy_(visual.conv1.weight)
    emb.patch_embedding.bias.zero_()
    pos = visual.positional_embedding
    n_patches = emb.position_embedding.weight.shape[0]
    emb.position_embedding.weight.copy_(pos[pos.shape[0] - n_patches :])
    copied = 3
    for src, dst in zip(visual.transformer.resblocks, siglip.encoder.layers, strict=True):
        q, k, v = src.attn.in_proj_weight.chunk(3, dim=0)
        qb, kb, vb = src.attn.in_proj_bias.chunk(3, dim=0)
        pairs = [
            (dst.self_attn.q_proj.weight, q),
            (dst.self_attn.q_proj.bias, qb),
            (dst.self_attn.k_proj.weight, k),
            (dst.self_attn.k_proj.bias, kb),
            (dst.self_attn.v_proj.weight, v),
            (dst.self_attn.v_proj.bias, vb),
            (dst.self_attn.out_proj.weight, src.attn.out_proj.weight),
            (dst.self_attn.out_proj.bias, src.attn.out_proj.bias),
            (dst.layer_norm1.weight, src.ln_1.weight),
            (dst.layer_norm1.bias, src.ln_1.bias),
            (dst.layer_norm2.weight, src.ln_2.weight),
            (dst.layer_norm2.bias, src.ln_2.bias),
            (dst.mlp.fc1.weight, src.mlp.c_fc.weight),
            (dst.mlp.fc1.bias, src.mlp.c_fc.bias),
            (dst.mlp.fc2.weight, src.mlp.c_proj.weight),
            (dst.mlp.fc2.bias, src.mlp.c_proj.bias),
        ]
        for target, source in pairs:
            target.copy_(source)
        copied += len(pairs)
    siglip.post_layernorm.weight.copy_(visual.ln_post.weight)
    siglip.post_layernorm.bias.copy_(visual.ln_post.bias)
    return copied + 2
