"""User conditioning of the frozen UNet: the one plug-in point where adapter methods differ.

A *conditioning* is an ``nn.Module`` that owns every trainable tensor of a method and knows
how to (a) turn a batch of users into UNet inputs, (b) switch itself off for the DPO reference
pass, (c) add method-specific loss terms, and (d) give the pipeline its inputs at sampling
time. The trainer (``generation.train_adapter``) and the sampler (``generation.sample``) only
call this interface, so a method with another conditioning (Premier: learnable user embeddings that
modulate the text tokens, plus its dispersion loss) registers its class in ``CONDITIONINGS``
and reuses the loop unchanged.

``IPAdapterConditioning`` is PIPE §2.3 / PPD §4.3 (IP-Adapter, Ye et al. 2023): diffusers'
``IPAdapterAttnProcessor2_0`` on the UNet's *cross*-attention layers only (self-attention keeps
its processor), an ``ImageProjection`` from the user vector to ``num_tokens`` user tokens
(installed as ``unet.encoder_hid_proj`` exactly as ``load_ip_adapter`` does, so the stock
``StableDiffusionXLPipeline`` accepts ``ip_adapter_image_embeds``), trainable
``to_k_ip``/``to_v_ip``. ``to_v_ip`` starts at zero, so an untrained adapter *is* the reference
model and DPO starts from ``inside = 0``. The reference pass sets every processor's scale to 0,
which makes diffusers skip the user branch: the frozen UNet, bit for bit, without a second copy.
The user vector is the method's embedding (``pipe``: E_u = λ_uᵀW; ``ppd``: VLM states) or, for
population ``dpo``, one learned constant vector fed through the same projection. Training drops
the user vector to zeros with probability ``user_dropout`` (PPD §4.3), which is also the "no
user" input.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prefgen.core.io import load_tensors

#: user tokens of the image projection diffusers' ``load_ip_adapter`` builds from a
#: ``proj.weight`` layout (``_convert_ip_adapter_image_proj_to_diffusers``).
DIFFUSERS_IP_TOKENS = 4
#: file name of a checkpoint's adapter in that layout, beside ``adapter.safetensors``.
DIFFUSERS_IP_FILE = "ip_adapter.safetensors"

#: conditioning name (``train.methods.<m>.conditioning``) -> "module:Class".
CONDITIONINGS: dict[str, str] = {
    "ip_adapter": "prefgen.generation.adapters:IPAdapterConditioning",
    "premier": "prefgen.premier.modulation:PremierConditioning",
}


@dataclass
class UserBatch:
    """What a conditioning sees of one (micro-)batch; every tensor has the batch first.

    ``rand`` holds one uniform number per row, drawn by the trainer from the step's seed, so a
    conditioning's randomness (dropout) is the same however the batch is split over processes.
    """

    user_ids: torch.Tensor  # [B] int64
    prompt_embeds: torch.Tensor  # [B, L, C]
    pooled: torch.Tensor  # [B, P]
    time_ids: torch.Tensor  # [B, 6]
    rand: torch.Tensor | None = None  # [B] uniform(0,1), training only

    def repeat(self, n: int) -> UserBatch:
        """The batch stacked ``n`` times (winners and losers share their user and caption)."""
        return UserBatch(
            *(
                t.repeat(n, *([1] * (t.dim() - 1))) if t is not None else None
                for t in (self.user_ids, self.prompt_embeds, self.pooled, self.time_ids, self.rand)
            )
        )


class UserEmbeddings:
    """A table ``user_id -> vector`` read from ``embeddings/<name>.safetensors``.

    The file holds ``user_ids [U] int64`` and ``emb [U, D]`` (docs/interfaces.md).
    """

    def __init__(self, user_ids: torch.Tensor, emb: torch.Tensor, source: str = "<memory>"):
        if user_ids.ndim != 1 or emb.ndim != 2 or len(user_ids) != len(emb):
            raise ValueError(
                f"{source}: expected user_ids [U] and emb [U, D], got "
                f"{tuple(user_ids.shape)} and {tuple(emb.shape)}"
            )
        if len(torch.unique(user_ids)) != len(user_ids):
            raise ValueError(f"{source}: duplicate user_ids")
        if not torch.isfinite(emb).all():
            raise ValueError(f"{source}: non-finite values in emb")
        self.source = source
        self.user_ids = user_ids.long()
        self.emb = emb.float()
        self._row = {int(u): i for i, u in enumerate(self.user_ids.tolist())}

    @classmethod
    def load(cls, path: str) -> UserEmbeddings:
        t = load_tensors(path)
        for key in ("user_ids", "emb"):
            if key not in t:
                raise ValueError(f"{path}: missing tensor '{key}' (expected user_ids, emb)")
        return cls(t["user_ids"], t["emb"], source=str(path))

    @property
    def dim(self) -> int:
        return int(self.emb.shape[1])

    def has(self, user_ids: np.ndarray | list[int]) -> np.ndarray:
        return np.array([int(u) in self._row for u in user_ids], dtype=bool)

    def lookup(self, user_ids: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
        """``[B, D]`` vectors; an unknown user is an error naming it (never a silent zero)."""
        ids = [int(u) for u in (user_ids.tolist() if hasattr(user_ids, "tolist") else user_ids)]
        missing = [u for u in ids if u not in self._row]
        if missing:
            raise KeyError(
                f"{self.source}: no embedding for user_id(s) {sorted(set(missing))[:10]}"
            )
        return self.emb[[self._row[u] for u in ids]]


class Conditioning(nn.Module, metaclass=abc.ABCMeta):
    """Interface every method's conditioning implements (see the module docstring)."""

    #: "embedding" (a per-user vector from a file), "constant" (no user input), or own kinds.
    user_input: str = "embedding"
    #: "dpo": Diffusion-DPO against the reference (``reference()``); "denoise": the plain
    #: denoising loss on the preferred image of each pair (no reference pass; Premier).
    objective: str = "dpo"

    @abc.abstractmethod
    def unet_inputs(self, batch: UserBatch, train: bool) -> dict[str, Any]:
        """Keyword arguments for ``unet(noisy, t, **inputs)`` with this method's user signal."""

    @abc.abstractmethod
    def reference(self) -> contextlib.AbstractContextManager[None]:
        """Within the block the UNet behaves as the frozen base model (the DPO reference).

        Implement as a ``@contextlib.contextmanager`` generator.
        """

    def extra_losses(self, batch: UserBatch) -> dict[str, torch.Tensor]:
        """Method-specific loss terms added to the main loss and logged (Premier's dispersion).

        Return the same keys on every call (a zero tensor when a term does not apply): the
        per-step logs are reduced across processes as one vector.
        """
        return {}

    @abc.abstractmethod
    def pipeline_inputs(
        self, user_id: int, users: UserEmbeddings | None, guidance: bool
    ) -> tuple[dict[str, Any], bool]:
        """Extra ``StableDiffusionXLPipeline.__call__`` kwargs for one user's batch, and whether
        that user's own embedding was used (the sampler calls the pipeline once per user)."""

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights only (what a checkpoint stores)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"adapter checkpoint does not match the method: missing {missing}, "
                f"unexpected {unexpected}"
            )


class IPAdapterConditioning(Conditioning):
    """Decoupled cross-attention on user tokens (IP-Adapter), for ``pipe``, ``ppd`` and ``dpo``."""

    def __init__(
        self,
        unet: Any,
        user_dim: int,
        num_tokens: int,
        user_dropout: float = 0.0,
        constant: bool = False,
        scale: float = 1.0,
    ):
        from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
        from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

        super().__init__()
        self.user_input = "constant" if constant else "embedding"
        self.user_dim = int(user_dim)
        self.num_tokens = int(num_tokens)
        self.user_dropout = float(user_dropout)
        self.scale = float(scale)
        cross_dim = int(unet.config.cross_attention_dim)
        self.proj = ImageProjection(
            image_embed_dim=self.user_dim,
            cross_attention_dim=cross_dim,
            num_image_text_embeds=self.num_tokens,
        )
        if constant:
            self.constant = nn.Parameter(torch.randn(1, self.user_dim) / self.user_dim**0.5)
        processors: dict[str, Any] = {}
        ip_layers = []
        for name, proc in sorted(unet.attn_processors.items()):
            attn = unet.get_submodule(name.removesuffix(".processor"))
            if not attn.is_cross_attention:
                processors[name] = proc
                continue
            ip = IPAdapterAttnProcessor2_0(
                hidden_size=attn.to_k.out_features,
                cross_attention_dim=attn.to_k.in_features,
                num_tokens=self.num_tokens,
                scale=self.scale,
            )
            with torch.no_grad():
                ip.to_k_ip[0].weight.copy_(attn.to_k.weight)
                ip.to_v_ip[0].weight.zero_()
            ip.to(device=attn.to_k.weight.device, dtype=attn.to_k.weight.dtype)
            processors[name] = ip
            ip_layers.append(ip)
        if not ip_layers:
            raise ValueError("UNet has no cross-attention layers to attach the user adapter to")
        self.ip_layers = nn.ModuleList(ip_layers)
        # ip_layers follow the sorted processor names; diffusers' loader numbers the
        # cross-attention processors in the UNet's own order (diffusers_state_dict)
        sorted_cross = [
            n
            for n, _ in sorted(unet.attn_processors.items())
            if isinstance(processors[n], IPAdapterAttnProcessor2_0)
        ]
        self._diffusers_order = [
            sorted_cross.index(n) for n in unet.attn_processors if n in sorted_cross
        ]
        unet.set_attn_processor(processors)
        unet.encoder_hid_proj = MultiIPAdapterImageProjection([self.proj])
        unet.config.encoder_hid_dim_type = "ip_image_proj"  # as diffusers' load_ip_adapter does
        self.proj.to(device=unet.device)

    @classmethod
    def from_config(
        cls, unet: Any, method_cfg: dict[str, Any], users: UserEmbeddings | None
    ) -> IPAdapterConditioning:
        constant = method_cfg.get("embedding") is None
        if not constant and users is None:
            raise ValueError("method needs a user embedding file but none was given")
        dim = int(method_cfg.get("constant_dim", 32)) if constant else users.dim
        return cls(
            unet,
            user_dim=dim,
            num_tokens=int(method_cfg["num_tokens"]),
            user_dropout=float(method_cfg.get("user_dropout", 0.0)),
            constant=constant,
        )

    def set_scale(self, scale: float) -> None:
        for ip in self.ip_layers:
            ip.scale = [float(scale)] * len(ip.num_tokens)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        self.set_scale(0.0)
        try:
            yield
        finally:
            self.set_scale(self.scale)

    def user_vectors(self, user_ids: torch.Tensor, users: UserEmbeddings | None) -> torch.Tensor:
        if self.user_input == "constant":
            return self.constant.expand(len(user_ids), -1)
        if users is None:
            raise ValueError("IPAdapterConditioning: user embeddings not attached")
        return users.lookup(user_ids).to(self.proj.image_embeds.weight.device)

    def attach_users(self, users: UserEmbeddings | None) -> None:
        """The embedding table used by ``unet_inputs`` (kept outside the state dict)."""
        self._users = users

    def unet_inputs(self, batch: UserBatch, train: bool) -> dict[str, Any]:
        vec = self.user_vectors(batch.user_ids, getattr(self, "_users", None))
        if train and self.user_dropout > 0 and self.user_input == "embedding":
            if batch.rand is None:
                raise ValueError("training batch without `rand` (needed for user dropout)")
            keep = (batch.rand.to(vec.device) >= self.user_dropout).to(vec.dtype)
            vec = vec * keep[:, None]
        return {
            "encoder_hidden_states": batch.prompt_embeds,
            "added_cond_kwargs": {
                "text_embeds": batch.pooled,
                "time_ids": batch.time_ids,
                "image_embeds": [vec[:, None, :]],
            },
        }

    def pipeline_inputs(
        self, user_id: int, users: UserEmbeddings | None, guidance: bool
    ) -> tuple[dict[str, Any], bool]:
        """``ip_adapter_image_embeds`` for one user (``[2, 1, D]`` under CFG: negative, positive).

        The SDXL pipeline repeats one IP embedding over its whole batch, so the sampler calls
        it once per user. The negative (unconditional) branch gets the same user vector as the
        positive one, so classifier-free guidance acts on the text only and the adapter's effect
        enters both branches alike — the same treatment for every method, constant or per-user.
        A user without an embedding gets the zero ("dropped") vector, and ``False``.
        """
        with torch.no_grad():
            own = False
            if self.user_input == "constant":
                vec = self.constant.detach()
            else:
                if users is None:
                    raise ValueError("IPAdapterConditioning: user embeddings not given")
                own = bool(users.has([user_id])[0])
                vec = users.lookup([user_id]) if own else torch.zeros(1, self.user_dim)
            vec = vec.to(self.proj.image_embeds.weight)[:, None, :]
        return {"ip_adapter_image_embeds": [torch.cat([vec, vec]) if guidance else vec]}, own

    @property
    def diffusers_exportable(self) -> bool:
        """Whether ``diffusers_state_dict`` can write this adapter exactly (token count)."""
        return DIFFUSERS_IP_TOKENS % self.num_tokens == 0

    def diffusers_state_dict(self) -> dict[str, torch.Tensor]:
        """This adapter in the layout ``StableDiffusionXLPipeline.load_ip_adapter`` reads.

        One flat dict for one safetensors file: ``image_proj.*`` (the user projection) and
        ``ip_adapter.{1,3,5,...}.to_{k,v}_ip.weight`` (diffusers numbers the cross-attention
        processors 1, 3, 5, ... in ``unet.attn_processors`` order, the odd ids of the original
        IP-Adapter's attn1/attn2 numbering). Our projection *is* diffusers' ``ImageProjection``
        (``proj`` = its ``image_embeds`` Linear, then a LayerNorm per token), but the loader
        builds that class with 4 tokens whenever it sees ``proj.weight``. With ``num_tokens``
        dividing 4 each user token is written ``4 / num_tokens`` times: attention over a token
        set in which every key/value pair appears equally often gives the same softmax weights
        and output as over the set itself, so the loaded adapter computes the same function
        (equal up to float rounding). Other token counts have no exact ``ImageProjection``
        form and are refused. ``dpo``'s learned constant user vector is stored as
        ``user_embeds.constant`` [1, D] (the loader ignores keys without its two prefixes); it
        is that method's ``ip_adapter_image_embeds``.
        """
        if not self.diffusers_exportable:
            raise ValueError(
                f"num_tokens={self.num_tokens}: diffusers' load_ip_adapter reads a "
                f"'proj.weight' image projection as {DIFFUSERS_IP_TOKENS} tokens; "
                f"only token counts dividing {DIFFUSERS_IP_TOKENS} can be written "
                "exactly in its format"
            )
        repeat = DIFFUSERS_IP_TOKENS // self.num_tokens
        weight = self.proj.image_embeds.weight.detach()
        bias = self.proj.image_embeds.bias.detach()
        cross = weight.shape[0] // self.num_tokens
        out = {
            "image_proj.proj.weight": weight.reshape(self.num_tokens, cross, -1)
            .repeat_interleave(repeat, dim=0)
            .reshape(DIFFUSERS_IP_TOKENS * cross, -1),
            "image_proj.proj.bias": bias.reshape(self.num_tokens, cross)
            .repeat_interleave(repeat, dim=0)
            .reshape(-1),
            "image_proj.norm.weight": self.proj.norm.weight.detach(),
            "image_proj.norm.bias": self.proj.norm.bias.detach(),
        }
        for j, i in enumerate(self._diffusers_order):
            ip = self.ip_layers[i]
            out[f"ip_adapter.{2 * j + 1}.to_k_ip.weight"] = ip.to_k_ip[0].weight.detach()
            out[f"ip_adapter.{2 * j + 1}.to_v_ip.weight"] = ip.to_v_ip[0].weight.detach()
        if self.user_input == "constant":
            out["user_embeds.constant"] = self.constant.detach()
        return {k: v.float().cpu().clone() for k, v in out.items()}


def conditioning_class(name: str) -> type[Conditioning]:
    if name not in CONDITIONINGS:
        raise ValueError(f"unknown conditioning '{name}'; known: {sorted(CONDITIONINGS)}")
    module, cls = CONDITIONINGS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_conditioning(
    unet: Any, method_cfg: dict[str, Any], users: UserEmbeddings | None
) -> Conditioning:
    """Install the method's conditioning on ``unet`` (frozen) and return it (trainable)."""
    unet.requires_grad_(False)
    cond = conditioning_class(method_cfg["conditioning"]).from_config(unet, method_cfg, users)
    if hasattr(cond, "attach_users"):
        cond.attach_users(users)
    cond.requires_grad_(True)
    return cond
