"""LPP's preference predictor: a VLM reads a user's liked/disliked references and scores a target.

LPP (§3.1-3.3) writes every image of a user's history as one entry of the template
``"<image>The prompt is <prompt>. Score for this image?"`` followed by its label token (``+``
like, ``-`` dislike), stacks the N_ref liked and N_ref disliked entries into the user sequence
x_u, appends the target entry without its label, and reads the label the model predicts next.
``L_p`` learnable prototype embeddings P_v are prepended to the embedded input, x'_p = [P_v; x_u]
(Eq. 1), so every token can attend to them (Eqs. 2-3). M+ and M- (the "like" and "dislike"
logits of Eqs. 4-7) come from a two-row score head on the last hidden state, initialised from
the language model's output rows of the two label tokens (next-token prediction of the label,
restricted to the two labels, as LPP reads it). ``readout: target_mean`` reads the mean over the
target entry's tokens instead: they attend to the same prototypes and references, but a stand-in
whose language model starts random need not first learn to route the target's image to the last
token (an option for the stand-in; LPP and paper.yaml use ``last``).

How it is computed (the part LPP leaves open):
- **Prototypes are prepended inside the VLM's own forward.** A forward pre-hook on the language
  model (``decoder``) receives the merged text+image embeddings the VLM built and prepends P_v,
  extending the attention mask and recomputing position ids from it. The VLM's image merging
  (LLaVA-OneVision at mini scale, IDEFICS2 at paper scale) is therefore untouched, and one code
  path serves both.
- **The references are encoded once per user.** All of a user's targets share the prefix
  [P_v; references]; the prefix goes through the language model once (its key/value cache is
  kept) and every target continues from it in a batch, each seeing only the prefix and itself.
  This is exactly the single-sequence computation (causal attention: the prefix never sees the
  target) at a fraction of the cost. Position ids follow the attention mask, so left padding
  never changes a score.
- At mini/smoke scale the VLM is the tiny LLaVA-OneVision stand-in of
  :mod:`prefgen.embeddings.vlm` (labelled a stand-in everywhere); with several images in one
  prompt LLaVA-OneVision encodes each at base resolution, while a one-image target continuation
  takes its single-image (base + grid) encoding. Training sees the same encodings as evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prefgen.core.config import ConfigError
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed
from prefgen.embeddings.vlm import STAND_IN, STAND_IN_LABEL, VLM, build_stand_in, resolve_device
from prefgen.embeddings.vlm import resolve_dtype as _resolve_dtype

log = get_logger(__name__)

#: LPP §4.1: "The input tokens template for the VLM is <image>The prompt is <prompt>. Score for
#: this image?"; the label token follows a reference entry (§3.1: "+" like, "-" dislike).
TEMPLATE = "{image}The prompt is {prompt}. Score for this image?"
LIKE, DISLIKE = "+", "-"
ENTRY_SEPARATOR = "\n"
#: Where M+ and M- are read: the last target token (LPP: next-token prediction of the label) or
#: the mean over the target entry's tokens (a stand-in accommodation, see ``LPPModel``).
READOUTS = ("last", "target_mean")

#: Variants the rules train (wildcard ``variant``): which LPP parts they keep (LPP Tab. 2-4).
VARIANTS: dict[str, dict[str, bool]] = {
    "lpp": {"prototypes": True, "aux": True},
    "lpp_no_prototypes": {"prototypes": False, "aux": True},  # LPP "w/o P_v"
    "lpp_no_aux": {"prototypes": True, "aux": False},  # L_base only
}


def variant_spec(name: str) -> dict[str, bool]:
    if name not in VARIANTS:
        raise ConfigError(f"lpp variant {name!r}: expected one of {sorted(VARIANTS)}")
    return VARIANTS[name]


# --- text ----------------------------------------------------------------------------------------


def clean_prompt(caption: str, tokenizer: Any, max_tokens: int) -> str:
    """The caption as it goes into the template: stripped, without a final full stop (the
    template adds one) and cut to ``max_tokens`` tokens (LPP §4.1 truncates prompts to 100)."""
    text = str(caption).strip().rstrip(".").strip()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > max_tokens:
        text = tokenizer.decode(ids[:max_tokens]).strip()
    return text


def entry_text(image_token: str, prompt: str, liked: bool | None) -> str:
    """One history entry (with its label) or the target entry (``liked=None``, no label)."""
    text = TEMPLATE.format(image=image_token, prompt=prompt)
    if liked is None:
        return text
    return f"{text} {LIKE if liked else DISLIKE}{ENTRY_SEPARATOR}"


# --- the model -----------------------------------------------------------------------------------


@dataclass
class Prefix:
    """A batch of encoded user histories: the decoder's key/value cache and its attention mask
    (``[B, L_p + T]``, prototypes first)."""

    cache: Any
    mask: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])


@dataclass
class TargetOutput:
    """Scores of a batch of targets: ``logits [N,2]`` (M+, M-), and, when asked, the decoder's
    attention maps (per layer ``[N, heads, q, L_p + T + q]``) and the target's image-token mask
    ``[N, q]``."""

    logits: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None = None
    image_mask: torch.Tensor | None = None


class _PrependPrototypes:
    """Forward pre-hook on the language model: x'_p = [P_v; x_u] (LPP Eq. 1).

    The VLM calls its language model with keyword arguments only (``inputs_embeds``,
    ``attention_mask``, ``position_ids``, ...). The hook prepends the prototypes to the
    embeddings, ones to the mask, and recomputes position ids from the extended mask (prototypes
    take positions 0..L_p-1, left padding takes none). The extended mask is kept for the caller.
    With no prototypes it still sets the position ids, so both variants share one code path.
    """

    def __init__(self, decoder: nn.Module, prototypes: torch.Tensor | None) -> None:
        self.decoder, self.prototypes = decoder, prototypes
        self.mask: torch.Tensor | None = None

    def __enter__(self) -> _PrependPrototypes:
        self.handle = self.decoder.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        emb = kwargs.get("inputs_embeds")
        if args or emb is None:
            raise RuntimeError(
                "LPP prototypes: the VLM called its language model without "
                "keyword inputs_embeds; this VLM class is not supported"
            )
        batch = emb.shape[0]
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)
        if self.prototypes is not None:
            proto = self.prototypes.to(emb.dtype)[None].expand(batch, -1, -1)
            emb = torch.cat([proto, emb], dim=1)
            ones = torch.ones(batch, proto.shape[1], dtype=mask.dtype, device=mask.device)
            mask = torch.cat([ones, mask], dim=1)
        kwargs["inputs_embeds"] = emb
        kwargs["attention_mask"] = mask
        kwargs["position_ids"] = (mask.long().cumsum(1) - 1).clamp_min(0)
        self.mask = mask
        return args, kwargs


class LPPModel(nn.Module):
    """The VLM, the prototypes P_v ``[L_p, D]`` and the like/dislike score head."""

    def __init__(
        self, vlm: VLM, n_prototypes: int, max_prompt_tokens: int, seed: int, readout: str = "last"
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ConfigError(f"lpp.readout: expected one of {READOUTS}, got {readout!r}")
        self.readout = readout
        self.vlm = vlm.model
        self.processor = vlm.processor
        self.stand_in = vlm.stand_in
        self.vlm_name = vlm.name
        self.vlm_config_json = vlm.config_json
        self.max_prompt_tokens = int(max_prompt_tokens)
        decoder = self.decoder
        dim = int(decoder.config.hidden_size)
        embed = decoder.get_input_embeddings().weight
        if n_prototypes > 0:
            gen = torch.Generator().manual_seed(derive_seed(seed, "lpp", "prototypes"))
            # initialised like the token embeddings, so a prototype starts as a plausible input
            scale = float(embed.detach().float().std())
            init = torch.randn(n_prototypes, dim, generator=gen) * scale
            self.prototypes = nn.Parameter(init.to(device=embed.device, dtype=embed.dtype))
        else:
            self.register_parameter("prototypes", None)
        self.head = nn.Linear(dim, 2).to(device=embed.device, dtype=embed.dtype)
        self.label_ids = [self._label_id(LIKE), self._label_id(DISLIKE)]
        lm_head = self.vlm.get_output_embeddings()
        with torch.no_grad():
            self.head.weight.copy_(lm_head.weight[self.label_ids].to(self.head.weight.dtype))
            self.head.bias.zero_()

    # -- plumbing
    @property
    def decoder(self) -> nn.Module:
        """The VLM's language model (the module the prototypes are prepended to)."""
        return self.vlm.get_decoder()

    @property
    def n_prototypes(self) -> int:
        return 0 if self.prototypes is None else int(self.prototypes.shape[0])

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def image_token(self) -> str:
        return str(self.processor.image_token)

    @property
    def image_token_id(self) -> int:
        return int(self.vlm.config.image_token_id)

    def _label_id(self, label: str) -> int:
        """The token the label ends with (the one next-token prediction would emit)."""
        ids = self.processor.tokenizer(f" {label}", add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"LPP: the tokenizer maps label {label!r} to no token")
        return int(ids[-1])

    def prompt(self, caption: str) -> str:
        return clean_prompt(caption, self.processor.tokenizer, self.max_prompt_tokens)

    def reference_text(self, captions: Sequence[str], liked: Sequence[bool]) -> str:
        """A user's history x_u in the given order (entries with their labels)."""
        return "".join(
            entry_text(self.image_token, self.prompt(c), bool(lk))
            for c, lk in zip(captions, liked, strict=True)
        )

    def target_text(self, caption: str) -> str:
        return entry_text(self.image_token, self.prompt(caption), None)

    def _inputs(self, texts: list[str], images: list[list[Any]]) -> dict[str, torch.Tensor]:
        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        dtype = self.head.weight.dtype
        out = {}
        for key, value in inputs.items():
            value = value.to(self.device)
            out[key] = value.to(dtype) if key == "pixel_values" else value
        return out

    # -- forward
    def encode_references(self, texts: list[str], images: list[list[Any]]) -> Prefix:
        """Run [P_v; x_u] for a batch of users through the VLM, keeping the decoder cache."""
        inputs = self._inputs(texts, images)
        with _PrependPrototypes(self.decoder, self.prototypes) as hook:
            out = self.vlm.model(**inputs, use_cache=True)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        if cache is None:
            raise RuntimeError(
                "LPP: the VLM returned no key/value cache for the references "
                "(gradient checkpointing turns it off); disable it"
            )
        return Prefix(cache=cache, mask=hook.mask)

    def select(self, prefix: Prefix, owner: torch.Tensor) -> Prefix:
        """The prefix rows ``owner`` (one per target): a new cache, gradients kept."""
        from transformers import DynamicCache

        owner = owner.to(self.device)
        cache = DynamicCache(config=self.decoder.config)
        for idx, layer in enumerate(prefix.cache.layers):
            cache.update(
                layer.keys.index_select(0, owner), layer.values.index_select(0, owner), idx
            )
        return Prefix(cache=cache, mask=prefix.mask.index_select(0, owner))

    def score_targets(
        self,
        prefix: Prefix,
        owner: torch.Tensor,
        captions: Sequence[str],
        images: Sequence[Any],
        output_attentions: bool = False,
    ) -> TargetOutput:
        """(M+, M-) for each target, continuing its owner's prefix (``owner[i]`` = prefix row)."""
        if not (len(owner) == len(captions) == len(images)):
            raise ValueError(
                f"score_targets: {len(owner)} owners, {len(captions)} captions, "
                f"{len(images)} images"
            )
        rows = self.select(prefix, torch.as_tensor(owner, dtype=torch.long))
        inputs = self._inputs([self.target_text(c) for c in captions], [[im] for im in images])
        mask = torch.cat([rows.mask, inputs["attention_mask"].to(rows.mask.dtype)], dim=1)
        position_ids = (mask.long().cumsum(1) - 1).clamp_min(0)[:, rows.length :]
        inputs["attention_mask"] = mask
        out = self.vlm.model(
            **inputs,
            position_ids=position_ids,
            cache=rows.cache,
            use_cache=True,
            output_attentions=output_attentions,
        )
        hidden = out.last_hidden_state
        if self.readout == "last":
            state = hidden[:, -1]
        else:
            own = inputs["attention_mask"][:, rows.length :].to(hidden.dtype)[..., None]
            state = (hidden * own).sum(1) / own.sum(1).clamp_min(1.0)
        logits = self.head(state)
        if not output_attentions:
            return TargetOutput(logits)
        return TargetOutput(
            logits, tuple(out.attentions), inputs["input_ids"] == self.image_token_id
        )

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]


def preference(logits: torch.Tensor) -> torch.Tensor:
    """Q(S, z) = exp(M+) / (exp(M+) + exp(M-)) (LPP Eq. 5): the probability of "like"."""
    return torch.softmax(logits.float(), dim=-1)[:, 0]


# --- building, LoRA, stages ----------------------------------------------------------------------


def build_vlm(
    lpp_vlm: dict[str, Any],
    stand_in_cfg: dict[str, Any] | None,
    seed: int,
    clip_dir: str | None = None,
) -> VLM:
    """LPP's VLM: the shared tiny LLaVA-OneVision stand-in, or a checkpoint (IDEFICS2 in LPP).

    ``lpp_vlm`` is the ``lpp.vlm`` config section; the stand-in's shape is ``vlm.stand_in`` (the
    one PPD uses, built from the same seed, so both baselines start from the same weights).
    """
    device, dtype = resolve_device(lpp_vlm["device"]), _resolve_dtype(lpp_vlm["dtype"])
    if lpp_vlm["model"] == STAND_IN:
        if stand_in_cfg is None:
            raise ConfigError("lpp.vlm.model is 'stand-in' but the config has no vlm.stand_in")
        vlm = build_stand_in(stand_in_cfg, seed, clip_dir)
    else:
        vlm = load_pretrained(
            lpp_vlm["model"],
            dtype,
            lpp_vlm["quantization"],
            list(lpp_vlm["skip_quantization"]),
            processor_kwargs(lpp_vlm["processor"]),
        )
    if lpp_vlm["quantization"] == "none":
        vlm.model.to(device=device, dtype=dtype)
    return vlm


def processor_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """``lpp.vlm.processor`` as ``AutoProcessor.from_pretrained`` keywords (None = default)."""
    kwargs: dict[str, Any] = {}
    if cfg["image_size"] is not None:
        side = int(cfg["image_size"])
        kwargs["size"] = {"longest_edge": side, "shortest_edge": side}
    if cfg["do_image_splitting"] is not None:
        kwargs["do_image_splitting"] = bool(cfg["do_image_splitting"])
    return kwargs


def load_pretrained(
    name: str,
    dtype: torch.dtype,
    quantization: str,
    skip: list[str],
    processor_kwargs: dict[str, Any],
) -> VLM:
    """Paper scale: the checkpoint's own classes via ``from_pretrained`` (IDEFICS2-8B resolves to
    ``Idefics2ForConditionalGeneration``); ``quantization: nf4`` loads the language model in 4 bit
    for QLoRA (LPP §4.1), leaving ``skip`` modules (vision encoder, connector) trainable."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=skip,
        )
    model = AutoModelForImageTextToText.from_pretrained(name, **kwargs)
    if quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        # no gradient checkpointing: transformers turns the key/value cache off under it, and
        # the shared-prefix scoring needs the cache (activation memory of one history fits)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    processor = AutoProcessor.from_pretrained(name, **processor_kwargs)
    return VLM(
        model=model,
        processor=processor,
        name=name,
        stand_in=False,
        config_json=model.config.to_json_string(),
    )


def add_lora(model: LPPModel, lora: dict[str, Any], seed: int) -> None:
    """LoRA adapters (peft) on the language model's projections (LPP: QLoRA on the LM)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=int(lora["r"]),
        lora_alpha=float(lora["alpha"]),
        lora_dropout=float(lora["dropout"]),
        target_modules=list(lora["target_modules"]),
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "lpp", "lora"))
        inject_adapter_in_model(config, model.decoder)
    n = sum(p.numel() for name, p in model.decoder.named_parameters() if "lora_" in name)
    if n == 0:
        raise ConfigError(
            f"lpp.lora.target_modules {lora['target_modules']} matched no module "
            "of the language model"
        )


def set_stage(model: LPPModel, stage: int, lm_tuning: str, train_vision: bool) -> list[str]:
    """Mark what trains in each stage (LPP §4.1) and return the trainable parameter names.

    Stage 1: the score head, the prototypes, the language model (its LoRA adapters, or all of
    it with ``lm_tuning: full``) and the vision encoder with its connector. Stage 2: the
    prototypes only ("the model weights are fixed, and only the learnable prototypes are
    further tuned").
    """
    decoder = model.decoder
    decoder_params = {id(p) for p in decoder.parameters()}
    out_params = {id(p) for p in model.vlm.get_output_embeddings().parameters()}
    for name, param in model.named_parameters():
        if stage == 2:
            train = name == "prototypes"
        elif name == "prototypes" or name.startswith("head."):
            train = True
        elif id(param) in out_params:
            train = False  # the LM head is unused: the score head replaces it
        elif id(param) in decoder_params:
            train = ("lora_" in name) if lm_tuning == "lora" else lm_tuning == "full"
        else:
            train = train_vision  # vision encoder + connector
        param.requires_grad_(train)
    if stage not in (1, 2):
        raise ValueError(f"set_stage: stage must be 1 or 2, got {stage}")
    return model.trainable_names()


def build_model(params: dict[str, Any], variant: str, clip_dir: str | None) -> LPPModel:
    """The untrained LPP model for ``variant`` from the rule's params (``seed, lpp, vlm``)."""
    cfg = params["lpp"]
    spec = variant_spec(variant)
    seed = int(params["seed"])
    vlm = build_vlm(cfg["vlm"], (params.get("vlm") or {}).get("stand_in"), seed, clip_dir)
    model = LPPModel(
        vlm,
        cfg["n_prototypes"] if spec["prototypes"] else 0,
        cfg["max_prompt_tokens"],
        seed,
        cfg["readout"],
    )
    if cfg["lm_tuning"] == "lora":
        add_lora(model, cfg["lora"], seed)
    elif cfg["lm_tuning"] != "full":
        raise ConfigError(f"lpp.lm_tuning: expected 'lora' or 'full', got {cfg['lm_tuning']!r}")
    return model


def model_metadata(model: LPPModel, variant: str) -> dict[str, str]:
    """safetensors metadata: what made these weights (stand-in label included)."""
    return {
        "variant": variant,
        "n_prototypes": str(model.n_prototypes),
        "vlm": model.vlm_name,
        "vlm_stand_in": str(model.stand_in).lower(),
        "vlm_label": STAND_IN_LABEL if model.stand_in else model.vlm_name,
        "vlm_config": model.vlm_config_json
        if model.stand_in
        else json.dumps({"model": model.vlm_name}),
    }
