"""Premier's preference modulation (Premier §4.1–4.2) on an SDXL-architecture UNet.

Premier (on FLUX's MM-DiT) turns a learnable user embedding and the prompt's text tokens into
a *modulation direction per text token*, in two parts: one shared by every DiT block and one
distinct per block, added to each token's modulation vector. Our base model is an
SDXL-architecture UNet, whose text tokens enter only through the cross-attention layers, so we
add the directions to the text states each cross-attention layer sees (before its ``to_k`` /
``to_v``): ``c_k = c + Δ_shared + Δ_k`` for cross-attention layer ``k``. That is the same
token-wise, per-block steering of the conditioning, on our architecture
(docs/decisions/25-premier-unet-host.md).

Pieces, each testable alone:
- :class:`PreferenceAdapter`: text tokens are the queries, the user's tokens the keys/values
  (a stack of cross-attention blocks, Premier Fig. 2); its last layer outputs ``n_out``
  directions per text token (1 for the block-shared adapter, one per cross-attention layer for
  the block-distinct one: "expands the output dimension in the final layer").
- :class:`PremierModulator`: the two adapters.
- :class:`PremierAttnProcessor` + :class:`PremierController`: diffusers attention processors on
  the cross-attention layers only (self-attention keeps its processor) and a forward pre-hook on
  the UNet that computes the directions from the ``encoder_hidden_states`` of each call and the
  user tokens passed in ``cross_attention_kwargs``. The UNet's weights and modules are
  untouched; a call without user tokens is the base model, bit for bit.
- :func:`dispersion_loss`: Premier Eq. 6, InfoNCE form with an L2 distance between the
  directions of different users in the batch, on an empty prompt.
- :func:`denoising_loss`: the base model's own training loss on a user's liked images.
- :class:`PremierConditioning`: the plug-in of the shared trainer and sampler
  (``prefgen.generation.adapters.CONDITIONINGS["premier"]``).
- :func:`fit_new_users`: stage 2, only a new user's embedding parameters move.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prefgen.generation.adapters import Conditioning, UserBatch, UserEmbeddings
from prefgen.generation.denoising import noisy_and_target, per_sample_mse
from prefgen.premier.user_tokens import UserEmbeddingTable


@dataclass(frozen=True)
class PremierSpec:
    """Shapes of the Premier modules (everything needed to rebuild them from a checkpoint)."""

    text_dim: int  #: width of the UNet's text states (cross_attention_dim; 2048 for SDXL)
    num_blocks: int  #: cross-attention layers in the UNet (one block-distinct direction each)
    user_tokens: int  #: T, tokens per user embedding
    user_dim: int  #: D, width of a user token
    adapter_dim: int  #: width inside the preference adapters
    adapter_layers: int  #: cross-attention blocks per adapter (Premier: 3)
    adapter_heads: int
    out_init_std: float = 1e-3  #: init std of the output layer (small: starts near the base)


class _CrossBlock(nn.Module):
    """Pre-norm cross-attention (text queries → user keys/values) plus an MLP, both residual."""

    def __init__(self, dim: int, user_dim: int, heads: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(user_dim)
        self.attn = nn.MultiheadAttention(
            dim, heads, kdim=user_dim, vdim=user_dim, batch_first=True
        )
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(user)
        x = x + self.attn(self.norm_q(x), kv, kv, need_weights=False)[0]
        return x + self.ff(self.norm_ff(x))


class PreferenceAdapter(nn.Module):
    """Text tokens ``[B, L, C]`` × user tokens ``[B, T, D]`` → directions ``[B, n_out, L, C]``."""

    def __init__(self, spec: PremierSpec, n_out: int) -> None:
        super().__init__()
        self.n_out = n_out
        self.text_dim = spec.text_dim
        self.proj_in = nn.Linear(spec.text_dim, spec.adapter_dim)
        self.blocks = nn.ModuleList(
            _CrossBlock(spec.adapter_dim, spec.user_dim, spec.adapter_heads)
            for _ in range(spec.adapter_layers)
        )
        self.norm_out = nn.LayerNorm(spec.adapter_dim)
        self.proj_out = nn.Linear(spec.adapter_dim, n_out * spec.text_dim)
        nn.init.normal_(self.proj_out.weight, std=spec.out_init_std)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, text: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(text)
        for block in self.blocks:
            x = block(x, user)
        out = self.proj_out(self.norm_out(x))  # [B, L, n_out * C]
        b, length, _ = out.shape
        return out.view(b, length, self.n_out, self.text_dim).permute(0, 2, 1, 3)


class PremierModulator(nn.Module):
    """The block-shared and block-distinct preference adapters (Premier Eq. 5)."""

    def __init__(self, spec: PremierSpec) -> None:
        super().__init__()
        self.spec = spec
        self.shared = PreferenceAdapter(spec, n_out=1)
        self.distinct = PreferenceAdapter(spec, n_out=spec.num_blocks)

    def forward(self, text: torch.Tensor, user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Δ_shared [B, L, C], Δ_distinct [B, num_blocks, L, C])`` for text and user tokens."""
        if text.shape[0] != user.shape[0]:
            raise ValueError(f"text batch {text.shape[0]} != user batch {user.shape[0]}")
        text = text.to(self.shared.proj_in.weight.dtype)
        user = user.to(self.shared.proj_in.weight.dtype)
        return self.shared(text, user)[:, 0], self.distinct(text, user)


#: ``cross_attention_kwargs`` keys the UNet pre-hook consumes (and removes before the blocks run).
USERS_KEY, MASK_KEY = "premier_users", "premier_mask"


class PremierState:
    """What the processors read during one UNet forward: the current directions, or nothing."""

    def __init__(self) -> None:
        self.shared: torch.Tensor | None = None  #: [B, L, C]
        self.distinct: torch.Tensor | None = None  #: [B, num_blocks, L, C]

    def delta(self, block: int) -> torch.Tensor | None:
        if self.shared is None or self.distinct is None:
            return None
        return self.shared + self.distinct[:, block]


class PremierAttnProcessor:
    """Adds cross-attention layer ``block``'s direction to the text states, then runs ``base``.

    Plain object, not an ``nn.Module``: the adapter's weights stay outside the UNet, so the
    UNet's parameters and ``state_dict`` are exactly the base model's.
    """

    def __init__(self, base: Any, state: PremierState, block: int) -> None:
        self.base = base
        self.state = state
        self.block = block

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        delta = self.state.delta(self.block)
        if delta is not None and encoder_hidden_states is not None:
            if delta.shape != encoder_hidden_states.shape:
                raise ValueError(
                    f"Premier direction {tuple(delta.shape)} does not match the "
                    f"text states {tuple(encoder_hidden_states.shape)} "
                    f"(cross-attention layer {self.block})"
                )
            encoder_hidden_states = encoder_hidden_states + delta.to(encoder_hidden_states.dtype)
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


def cross_attention_names(unet: nn.Module) -> list[str]:
    """Processor names of the UNet's cross-attention layers, in the UNet's module order."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


class PremierController:
    """Installs Premier on a UNet: processors on the cross-attention layers plus a pre-hook.

    A UNet call conditions on users through ``cross_attention_kwargs={"premier_users": [B, T,
    D], "premier_mask": [B] bool (optional)}``: the forward pre-hook removes both keys, computes
    the two directions from that call's ``encoder_hidden_states`` (the text tokens are the
    adapters' queries) and leaves them for the processors; rows whose mask is False get no
    modulation. Without the keys the UNet is the base model. Because the user input is an
    ordinary UNet keyword, the stock ``StableDiffusionXLPipeline`` passes it through unchanged
    (its ``cross_attention_kwargs`` argument).
    """

    def __init__(self, unet: nn.Module, modulator: PremierModulator) -> None:
        names = cross_attention_names(unet)
        if len(names) != modulator.spec.num_blocks:
            raise ValueError(
                f"modulator has {modulator.spec.num_blocks} block-distinct outputs "
                f"but the UNet has {len(names)} cross-attention layers"
            )
        self.unet = unet
        self.modulator = modulator
        self.state = PremierState()
        self._original = dict(unet.attn_processors)
        procs = dict(self._original)
        for i, name in enumerate(names):
            procs[name] = PremierAttnProcessor(self._original[name], self.state, i)
        unet.set_attn_processor(procs)
        self._hook = unet.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def remove(self) -> None:
        """Restore the original processors and remove the hook."""
        self._hook.remove()
        self.unet.set_attn_processor(self._original)

    def _pre_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        st = self.state
        st.shared = st.distinct = None
        extra = kwargs.get("cross_attention_kwargs")
        if not extra or USERS_KEY not in extra:
            return args, kwargs
        extra = dict(extra)
        users, mask = extra.pop(USERS_KEY), extra.pop(MASK_KEY, None)
        kwargs = {**kwargs, "cross_attention_kwargs": extra or None}
        text = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        if text is None:
            raise ValueError("Premier needs the UNet called with encoder_hidden_states")
        if users.shape[0] == 1 and text.shape[0] > 1:
            # one user for the whole call (the sampler batches per user, like IP-Adapter's
            # single ip_adapter_image_embeds): both CFG branches and every row get that user
            users = users.expand(text.shape[0], *users.shape[1:])
            mask = None if mask is None else mask.expand(text.shape[0])
        if users.shape[0] != text.shape[0]:
            raise ValueError(
                f"{USERS_KEY} has {users.shape[0]} rows for a UNet batch of {text.shape[0]}"
            )
        shared, distinct = self.modulator(text, users.to(text.device))
        if mask is not None:
            keep = mask.to(device=text.device, dtype=shared.dtype)
            shared = shared * keep[:, None, None]
            distinct = distinct * keep[:, None, None, None]
        st.shared, st.distinct = shared, distinct
        return args, kwargs


# --- losses ----------------------------------------------------------------------------------
def dispersion_loss(directions: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Premier Eq. 6: ``log mean_{i≠j} exp(−D(Δ_i, Δ_j) / τ)`` over the users in a batch.

    ``directions`` is ``[B, ...]``, one row per distinct user, all on the same (empty) prompt.
    InfoNCE without a positive term, as in Dispersive Loss (Wang & He 2025, Premier's [37]): the
    denoising loss plays the positive/alignment part. ``D`` is the L2 norm of the difference, as
    Premier states ("it is L2 norm"), divided by √(number of elements) (a root-mean-square
    difference, so τ means the same whatever the model width). Unlike [37]'s squared form, its
    pull on a pair does not grow with the pair's distance. Minimising the loss pushes the
    users' directions apart; it is largest (``0``) when all directions coincide.
    """
    if directions.shape[0] < 2:
        raise ValueError("dispersion_loss needs at least two users in the batch")
    z = directions.reshape(directions.shape[0], -1).float()
    off = ~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    sq = (z[:, None, :] - z[None, :, :]).pow(2).mean(-1)[off]
    dist = (sq + 1e-12).sqrt()  # eps: the norm's gradient is undefined at identical directions
    logits = -dist / temperature
    return torch.logsumexp(logits, dim=0) - math.log(logits.numel())


def premier_dispersion(
    modulator: PremierModulator,
    empty_text: torch.Tensor,
    user_tokens: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two adapters' dispersion losses (computed separately, Premier §4.2) on ``empty_text``.

    ``empty_text`` is the text states of the empty prompt ``[1, L, C]``; ``user_tokens`` holds
    one row per distinct user of the batch.
    """
    text = empty_text.expand(user_tokens.shape[0], -1, -1)
    shared, distinct = modulator(text, user_tokens)
    return dispersion_loss(shared, temperature), dispersion_loss(distinct, temperature)


def denoising_loss(
    unet: nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    text_states: torch.Tensor,
    added_cond: dict[str, torch.Tensor],
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    user_tokens: torch.Tensor | None,
) -> torch.Tensor:
    """The base model's own training loss (MSE to ε or v, per the scheduler), per example ``[B]``.

    Premier trains on a user's preference history with the generative loss (flow matching on
    FLUX); our base is a DDPM-trained SDXL-architecture UNet, so the same role is played by its
    ε/v-prediction loss (``generation/denoising.py``). ``user_tokens`` None = the base model.
    """
    noisy, target = noisy_and_target(scheduler, latents, noise, timesteps)
    extra = None if user_tokens is None else {USERS_KEY: user_tokens}
    pred = unet(
        noisy,
        timesteps,
        encoder_hidden_states=text_states,
        added_cond_kwargs=added_cond,
        cross_attention_kwargs=extra,
    ).sample
    return per_sample_mse(pred, target)


# --- the trainer/sampler plug-in -------------------------------------------------------------
#: safetensors metadata key of the init file that carries Premier's options (see premier_init).
OPTIONS_KEY = "premier_options"


def read_options(path: str) -> dict[str, Any]:
    """Premier's options stored in an init file's metadata (``premier-init`` writes them)."""
    import json

    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if OPTIONS_KEY not in meta:
        raise ValueError(
            f"{path}: no '{OPTIONS_KEY}' metadata; the Premier conditioning "
            "reads its options from embeddings/premier_init*.safetensors "
            "(rule premier_init)"
        )
    return json.loads(meta[OPTIONS_KEY])


class PremierConditioning(Conditioning):
    """Premier as a method of the shared trainer and sampler (``conditioning: premier``).

    Trainable: both preference adapters and one ``[T, D]`` embedding per training user
    (initialised from ``embeddings/premier_init.safetensors``, whose metadata also carries the
    adapter sizes and dispersion weights). ``objective = "denoise"``: the trainer takes the base
    model's denoising loss on the liked (preferred) image of each training pair instead of
    Diffusion-DPO; :meth:`extra_losses` adds the two dispersion terms. New users (stage 2) are
    combination weights over the training users' embeddings, loaded with a checkpoint from
    ``premier-new-users`` (``new_users.user_ids``, ``new_users.weights``), so their embedding
    always lives in the same space as the checkpoint's training users.
    """

    user_input = "embedding"
    objective = "denoise"

    def __init__(
        self, unet: Any, options: dict[str, Any], user_ids: torch.Tensor, tokens: torch.Tensor
    ) -> None:
        super().__init__()
        spec = PremierSpec(
            text_dim=int(unet.config.cross_attention_dim),
            num_blocks=len(cross_attention_names(unet)),
            user_tokens=int(options["user_tokens"]),
            user_dim=int(options["user_dim"]),
            adapter_dim=int(options["adapter_dim"]),
            adapter_layers=int(options["adapter_layers"]),
            adapter_heads=int(options["adapter_heads"]),
            out_init_std=float(options["out_init_std"]),
        )
        if tokens.shape[1:] != (spec.user_tokens, spec.user_dim):
            raise ValueError(
                f"initial embeddings {tuple(tokens.shape)} do not match "
                f"[U, {spec.user_tokens}, {spec.user_dim}]"
            )
        disp = options["dispersion"]
        self.weight_shared = float(disp["weight_shared"])
        self.weight_distinct = float(disp["weight_distinct"])
        self.temperature = float(disp["temperature"])
        self.modulator = PremierModulator(spec)
        self.table = UserEmbeddingTable.from_tensors(user_ids, tokens)
        self.controller = PremierController(unet, self.modulator)
        self.new_user_ids = torch.zeros(0, dtype=torch.int64)
        self.new_user_weights = torch.zeros(0, len(user_ids))

    @classmethod
    def from_config(
        cls, unet: Any, method_cfg: dict[str, Any], users: UserEmbeddings | None
    ) -> PremierConditioning:
        if users is None or users.source == "<memory>":
            raise ValueError(
                "conditioning 'premier' needs its init file as the method's "
                "embedding (embedding: premier_init)"
            )
        options = read_options(users.source)
        t, d = int(options["user_tokens"]), int(options["user_dim"])
        if int(method_cfg["num_tokens"]) != t:
            raise ValueError(
                f"num_tokens {method_cfg['num_tokens']} != the init file's "
                f"user_tokens {t} ({users.source})"
            )
        if users.dim != t * d:
            raise ValueError(
                f"{users.source}: emb width {users.dim} != user_tokens x user_dim = {t * d}"
            )
        return cls(unet, options, users.user_ids, users.emb.view(-1, t, d))

    @property
    def spec(self) -> PremierSpec:
        return self.modulator.spec

    # training
    def unet_inputs(self, batch: UserBatch, train: bool) -> dict[str, Any]:
        return {
            "encoder_hidden_states": batch.prompt_embeds,
            "added_cond_kwargs": {"text_embeds": batch.pooled, "time_ids": batch.time_ids},
            "cross_attention_kwargs": {USERS_KEY: self.table(batch.user_ids)},
        }

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        raise RuntimeError(
            "Premier trains with the denoising objective (objective='denoise') "
            "and has no reference model; this trainer ignored "
            "Conditioning.objective and tried to run Diffusion-DPO"
        )
        yield  # pragma: no cover

    def extra_losses(self, batch: UserBatch) -> dict[str, torch.Tensor]:
        """λ_s·L_disp(shared) + λ_d·L_disp(distinct) over the batch's distinct users (Eq. 7)."""
        users = torch.unique(batch.user_ids)
        if not (self.weight_shared or self.weight_distinct) or users.numel() < 2:
            return {}
        # SDXL's empty prompt is all-zero text states (force_zeros_for_empty_prompt): the
        # unconditional input the foundation was trained with.
        empty = torch.zeros(
            1,
            *batch.prompt_embeds.shape[1:],
            device=batch.prompt_embeds.device,
            dtype=self.table.weight.dtype,
        )
        d_s, d_d = premier_dispersion(self.modulator, empty, self.table(users), self.temperature)
        return {
            "disp_shared": self.weight_shared * d_s,
            "disp_distinct": self.weight_distinct * d_d,
        }

    # checkpoints (new users ride along with a stage-2 checkpoint, outside the module state)
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        state = super().adapter_state_dict()
        if len(self.new_user_ids):
            state["new_users.user_ids"] = self.new_user_ids.clone()
            state["new_users.weights"] = self.new_user_weights.detach().clone()
        return state

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        ids = state.pop("new_users.user_ids", torch.zeros(0, dtype=torch.int64))
        weights = state.pop("new_users.weights", torch.zeros(0, len(self.table.user_ids)))
        super().load_adapter_state_dict(state)
        self.set_new_users(ids, weights)

    def set_new_users(self, user_ids: torch.Tensor, weights: torch.Tensor) -> None:
        """Users outside training, as combination weights ``[N, K]`` over the table's users."""
        if weights.shape != (len(user_ids), len(self.table.user_ids)):
            raise ValueError(
                f"new-user weights {tuple(weights.shape)} != [{len(user_ids)}, "
                f"{len(self.table.user_ids)}]"
            )
        clash = set(user_ids.tolist()) & set(self.table.user_ids.tolist())
        if clash:
            raise ValueError(f"new users {sorted(clash)[:5]} are training users")
        self.new_user_ids = user_ids.to(torch.int64).cpu()
        self.new_user_weights = weights.detach().float().cpu()

    @torch.no_grad()
    def user_tokens(self, user_ids: list[int]) -> tuple[torch.Tensor, np.ndarray]:
        """``([B, T, D], own)``: a training user's embedding or a new user's combination; a user
        with neither gets zeros and ``own = False`` (and no modulation when sampling)."""
        w = self.table.weight
        out = torch.zeros(len(user_ids), *w.shape[1:], dtype=w.dtype, device=w.device)
        own = np.zeros(len(user_ids), dtype=bool)
        new_row = {int(u): i for i, u in enumerate(self.new_user_ids.tolist())}
        for i, u in enumerate(user_ids):
            row = self.table.index_of(u)
            if row is not None:
                out[i] = w[row]
                own[i] = True
            elif int(u) in new_row:
                coef = self.new_user_weights[new_row[int(u)]].to(w)
                out[i] = torch.einsum("k,ktd->td", coef, w)
                own[i] = True
        return out, own

    def pipeline_inputs(
        self, user_id: int, users: UserEmbeddings | None, guidance: bool
    ) -> tuple[dict[str, Any], bool]:
        """``cross_attention_kwargs`` with one user's tokens ``[1, T, D]`` for a whole pipeline
        call: the controller gives every row and both CFG branches that user, as for every
        other method, so guidance acts on the text only. A user with no embedding (neither
        trained nor a stage-2 combination) gets no modulation: the base model, and ``False``."""
        tokens, own = self.user_tokens([int(user_id)])
        mask = torch.from_numpy(own)
        return {"cross_attention_kwargs": {USERS_KEY: tokens, MASK_KEY: mask}}, bool(own[0])


# --- stage 2: new users ----------------------------------------------------------------------
@dataclass
class LikedImages:
    """Users' liked images as stage 2 reads them: latents and text states, one row each.

    ``latents`` are already multiplied by the VAE scaling factor; ``prompt_embeds``/``pooled``
    are the caption's text states exactly as the pipeline conditions on them.
    """

    user_ids: torch.Tensor  #: [N] int64
    latents: torch.Tensor  #: [N, C, h, w]
    prompt_embeds: torch.Tensor  #: [N, L, C]
    pooled: torch.Tensor  #: [N, P]

    def __post_init__(self) -> None:
        n = self.user_ids.shape[0]
        if n == 0:
            raise ValueError("LikedImages: no liked images")
        for name in ("latents", "prompt_embeds", "pooled"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(
                    f"LikedImages.{name} has {getattr(self, name).shape[0]} rows, user_ids has {n}"
                )
        groups: dict[int, list[int]] = {}
        for i, u in enumerate(self.user_ids.tolist()):
            groups.setdefault(int(u), []).append(i)
        self._by_user = {u: torch.tensor(r) for u, r in groups.items()}

    @property
    def users(self) -> list[int]:
        return sorted(self._by_user)

    def sample(self, gen: torch.Generator, batch_size: int) -> torch.Tensor:
        """Row indices of one batch: users drawn uniformly (distinct while there are enough),
        then one of each drawn user's liked images, so every user is fitted equally often."""
        users = self.users
        if batch_size <= len(users):
            pick = torch.randperm(len(users), generator=gen)[:batch_size]
        else:
            pick = torch.randint(len(users), (batch_size,), generator=gen)
        rows = []
        for j in pick.tolist():
            r = self._by_user[users[j]]
            rows.append(r[torch.randint(len(r), (1,), generator=gen)])
        return torch.cat(rows)


def _noise_and_timesteps(
    latents: torch.Tensor, scheduler: Any, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn(latents.shape, generator=gen).to(latents.device, latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
    return noise, t.to(latents.device)


def fit_new_users(
    unet: nn.Module,
    scheduler: Any,
    modulator: PremierModulator,
    embed: nn.Module,
    liked: LikedImages,
    time_ids: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> list[float]:
    """Stage 2 (Premier §4.2–4.3): fit only ``embed``'s parameters with the denoising loss.

    The UNet and both preference adapters are frozen here (``requires_grad`` off for the
    duration, restored after), so the only numbers that move are ``embed``'s: the combination
    weights of :class:`~prefgen.premier.user_tokens.CombinationEmbedding` or the free tensor of a
    :class:`~prefgen.premier.user_tokens.UserEmbeddingTable`. Returns the loss curve.
    """
    params = [p for p in embed.parameters() if p.requires_grad]
    if not params:
        raise ValueError("fit_new_users: the embedding module has no trainable parameters")
    frozen = [p for m in (unet, modulator) for p in m.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    try:
        for _ in range(steps):
            rows = liked.sample(gen, batch_size)
            latents = liked.latents[rows]
            noise, t = _noise_and_timesteps(latents, scheduler, gen)
            added = {"text_embeds": liked.pooled[rows], "time_ids": time_ids.expand(len(rows), -1)}
            loss = denoising_loss(
                unet,
                scheduler,
                latents,
                liked.prompt_embeds[rows],
                added,
                noise,
                t,
                embed(liked.user_ids[rows]),
            ).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return losses


@torch.no_grad()
def heldout_denoising_loss(
    unet: nn.Module,
    scheduler: Any,
    user_tokens: torch.Tensor | None,
    liked: LikedImages,
    time_ids: torch.Tensor,
    seed: int,
    repeats: int = 4,
) -> torch.Tensor:
    """Per-row denoising loss ``[N]`` on images not used for fitting, with fixed noise and
    timesteps (same ``seed`` → same draws for every arm, so arms are compared on identical
    noise). ``user_tokens`` is ``[N, T, D]`` aligned with ``liked``'s rows, or None (base)."""
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(liked.user_ids.shape[0])
    added = {"text_embeds": liked.pooled, "time_ids": time_ids.expand(len(liked.user_ids), -1)}
    for _ in range(repeats):
        noise, t = _noise_and_timesteps(liked.latents, scheduler, gen)
        total += denoising_loss(
            unet, scheduler, liked.latents, liked.prompt_embeds, added, noise, t, user_tokens
        ).cpu()
    return total / repeats
