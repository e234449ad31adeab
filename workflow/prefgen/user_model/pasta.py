"""``prefgen fit-pasta``: K user-type reward heads φ(c,x) ∈ R^K fitted by EM over users (PASTA).

PIPE (§2.1-2.2) builds on PASTA's user types: a reward model φ(c,x) = W h(c,x) on frozen CLIP
features, a shared trunk h ∈ R^H (an MLP) and a final linear layer W ∈ R^{K×H} whose rows are
the K types. Users are a mixture of types: user u belongs to type k with prior π_k and then
labels all their pairs by Bradley-Terry on φ_k. EM over users:

- E-step: responsibilities r_uk ∝ π_k ∏_n σ(φ_k(w_n) − φ_k(l_n)) over u's training pairs;
- M-step: π_k = mean_u r_uk (exact), and θ = (trunk, W) improves the expected complete-data
  log-likelihood Q(θ) = Σ_u Σ_k r_uk Σ_n log σ(Δφ_k) by a few full-batch Adam steps,
  warm-started from the current θ.

Adam steps need not increase Q, so an M-step is *accepted only if it increases the observed
objective* L = Σ_u log Σ_k π_k exp(ll_uk) − penalty; otherwise θ is restored (keeping the exact
π update, itself an ascent step) and the learning rate halved. L therefore never decreases
(a generalised EM), which ``{variant}_em.csv`` logs per iteration and the tests check.

The ``population`` variant is the same model with K = 1 (every user one type): the Bradley-Terry
reward model trained on everyone's pairs, our stand-in for PickScore.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prefgen.core.io import (
    atomic_path,
    check_state_shapes,
    load_tensors,
    save_tensors,
    tensor_metadata,
    write_json,
)
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed
from prefgen.user_model.features import FeatureStore
from prefgen.user_model.pairs import PairSet, build_pairs, read_split

log = get_logger(__name__)


# --------------------------------------------------------------------------- the model
class RewardModel(nn.Module):
    """φ(c,x) = W h(c,x): an MLP trunk on frozen [image, text(, image⊙text)] features, K heads.

    Inputs are standardised with the training items' mean/std (stored as buffers, so the saved
    model is self-contained). ``interaction`` adds the element-wise product of the (normalised)
    image and text embeddings, the CLIP similarity's ingredients, as input features.
    """

    def __init__(
        self, dim: int, hidden: int, n_types: int, width: int, depth: int, interaction: bool
    ) -> None:
        super().__init__()
        self.config = {
            "dim": dim,
            "hidden": hidden,
            "n_types": n_types,
            "width": width,
            "depth": depth,
            "interaction": interaction,
        }
        in_dim = dim * (3 if interaction else 2)
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        layers: list[nn.Module] = []
        sizes = [in_dim] + [width] * (depth - 1) + [hidden]
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.GELU()]
        self.trunk = nn.Sequential(*layers)
        self.W = nn.Parameter(torch.randn(n_types, hidden) / hidden**0.5)

    @property
    def n_types(self) -> int:
        return int(self.W.shape[0])

    def inputs(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        parts = [img, txt] + ([img * txt] if self.config["interaction"] else [])
        return torch.cat(parts, dim=-1)

    def set_standardisation(self, x: torch.Tensor) -> None:
        self.feat_mean.copy_(x.mean(0))
        self.feat_std.copy_(x.std(0).clamp_min(1e-6))

    def h_from_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk((x - self.feat_mean) / self.feat_std)

    def h(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """The trunk output h(c,x) ∈ R^H."""
        return self.h_from_inputs(self.inputs(img, txt))

    def phi(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """Type rewards ``[N,K]`` for frozen image/caption embeddings ``[N,D]`` each."""
        return self.h(img, txt) @ self.W.T

    def phi_from_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.h_from_inputs(x) @ self.W.T


def save_reward_model(model: RewardModel, path: str | Path, meta: dict[str, Any]) -> None:
    """``{path}`` (safetensors weights) + ``{path}.json`` with the config and fit summary."""
    path = Path(path)
    save_tensors(dict(model.state_dict()), path, metadata={"config": json.dumps(model.config)})
    write_json({"config": model.config, **meta}, path.with_suffix(".json"))


def load_reward_model(path: str | Path) -> RewardModel:
    """The fitted reward model (eval mode, no gradients) from ``user_model/{variant}...``."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(
            f"{path}: reward model (and {meta_path.name}) not found; run fit_pasta first"
        )
    cfg = json.loads(meta_path.read_text())["config"]
    state = load_tensors(path)
    stored = tensor_metadata(path).get("config")
    if stored is None or json.loads(stored) != cfg:
        raise ValueError(
            f"{path}: the config in its metadata ({stored}) differs from "
            f"{meta_path.name}'s ({json.dumps(cfg)}); the two files come from "
            "different fits: rerun fit_pasta"
        )
    model = RewardModel(**cfg)
    check_state_shapes(model, state, path)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- EM
def pair_loglik(phi: torch.Tensor, pairs: PairSet) -> torch.Tensor:
    """``[P,K]`` log σ(φ_k(winner) − φ_k(loser)) per pair and type."""
    return F.logsigmoid(phi[torch.from_numpy(pairs.win)] - phi[torch.from_numpy(pairs.lose)])


def user_loglik(phi: torch.Tensor, pairs: PairSet) -> torch.Tensor:
    """``[U,K]`` Bradley-Terry log-likelihood of each user's pairs under each type (float64)."""
    ll = pair_loglik(phi, pairs).double()
    out = torch.zeros(pairs.n_users, ll.shape[1], dtype=torch.float64)
    return out.index_add_(0, torch.from_numpy(pairs.user), ll)


def penalty(model: RewardModel, l2: float) -> torch.Tensor:
    if l2 <= 0:
        return torch.zeros((), dtype=torch.float64)
    return (
        0.5 * l2 * sum(p.double().pow(2).sum() for n, p in model.named_parameters() if p.ndim >= 2)
    )


def observed_objective(ll_uk: torch.Tensor, log_pi: torch.Tensor) -> float:
    """Σ_u log Σ_k π_k exp(ll_uk): the mixture log-likelihood EM ascends."""
    return float(torch.logsumexp(ll_uk + log_pi, dim=1).sum())


def responsibilities(ll_uk: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    return torch.softmax(ll_uk + log_pi, dim=1)


class EMResult:
    """One EM run: the model, the mixture weights, and the per-iteration log."""

    def __init__(self, model: RewardModel, log_pi: torch.Tensor, history: list[dict]) -> None:
        self.model, self.log_pi, self.history = model, log_pi, history

    @property
    def objective(self) -> float:
        return self.history[-1]["objective"]


def fit_em(
    x_items: torch.Tensor,
    pairs: PairSet,
    model: RewardModel,
    params: dict[str, Any],
    seed: int,
    restart: int = 0,
    progress: bool = True,
) -> EMResult:
    """EM for the mixture of K Bradley-Terry types over users (see the module docstring)."""
    K = model.n_types
    if pairs.n_users < K:
        raise ValueError(
            f"pasta: K={K} user types but only {pairs.n_users} users with training "
            "pairs; K must not exceed the number of users"
        )
    l2 = float(params["l2"])
    lr = float(params["lr"])
    m_steps = int(params["m_steps"])
    gen = torch.Generator().manual_seed(derive_seed(seed, "pasta", K, restart, "init"))
    # random soft assignment of users to types (Dirichlet(1) rows, as normalised Exp(1) draws)
    # breaks the symmetry between the K heads
    g = -torch.log(torch.rand(pairs.n_users, K, generator=gen, dtype=torch.float64))
    r = g / g.sum(1, keepdim=True)
    log_pi = torch.log(r.mean(0))
    win_t, lose_t = torch.from_numpy(pairs.win), torch.from_numpy(pairs.lose)
    user_t = torch.from_numpy(pairs.user)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def objective_of(m: RewardModel, lp: torch.Tensor) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            ll = user_loglik(m.phi_from_inputs(x_items), pairs)
            return observed_objective(ll, lp) - float(penalty(m, l2)), ll

    def m_step(resp: torch.Tensor) -> None:
        w = resp.float()[user_t]  # [P,K] responsibility of each pair's user for each type
        for _ in range(m_steps):
            phi = model.phi_from_inputs(x_items)
            ll = F.logsigmoid(phi[win_t] - phi[lose_t])
            loss = -(w * ll).sum() / pairs.n_pairs + penalty(model, l2).float() / pairs.n_pairs
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    history: list[dict] = []
    # iteration 0: fit θ to the random responsibilities (no acceptance test: nothing to beat yet)
    m_step(r)
    current, ll = objective_of(model, log_pi)
    r = responsibilities(ll, log_pi)
    history.append(
        {
            "restart": restart,
            "iteration": 0,
            "objective": current,
            "loglik": current + float(penalty(model, l2).detach()),
            "accepted": True,
            "lr": lr,
        }
    )
    bar = tqdm(
        range(1, int(params["iterations"]) + 1),
        desc=f"EM K={K} restart {restart}",
        disable=not progress,
        mininterval=5,
    )
    for it in bar:
        new_log_pi = torch.log(r.mean(0).clamp_min(1e-12))
        saved_state = copy.deepcopy(model.state_dict())
        saved_opt = copy.deepcopy(opt.state_dict())
        m_step(r)
        proposal, ll_new = objective_of(model, new_log_pi)
        accepted = proposal >= current
        if not accepted:
            model.load_state_dict(saved_state)
            opt.load_state_dict(saved_opt)
            lr *= 0.5
            for group in opt.param_groups:
                group["lr"] = lr
            proposal, ll_new = objective_of(model, new_log_pi)  # exact π update only
            if proposal < current:  # cannot happen in exact arithmetic; never step down
                proposal, ll_new, new_log_pi = current, ll, log_pi
        gain = proposal - current
        current, ll, log_pi = proposal, ll_new, new_log_pi
        r = responsibilities(ll, log_pi)
        history.append(
            {
                "restart": restart,
                "iteration": it,
                "objective": current,
                "loglik": current + float(penalty(model, l2).detach()),
                "accepted": bool(accepted),
                "lr": lr,
            }
        )
        bar.set_postfix(obj=f"{current:.1f}")
        if accepted and gain < float(params["tol"]) * abs(current):
            break
        if lr < 1e-7:
            break
    bar.close()
    return EMResult(model, log_pi, history)


def fit_pasta(
    pairs: PairSet,
    store: FeatureStore,
    params: dict[str, Any],
    n_types: int,
    seed: int,
    progress: bool = True,
) -> tuple[EMResult, list[dict]]:
    """Best of ``restarts`` EM runs (highest final objective), and every run's log rows."""
    if n_types < 1:
        raise ValueError(f"pasta: n_types must be >= 1, got {n_types}")
    if n_types > pairs.n_users:
        raise ValueError(
            f"pasta: K={n_types} user types but only {pairs.n_users} users with "
            "training pairs; K must not exceed the number of users"
        )
    img, txt = pairs.item_features(store)
    bad = ~(torch.isfinite(img).all(1) & torch.isfinite(txt).all(1))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"pasta: non-finite features for image_uid {str(pairs.item_uid[i])!r} / "
            f"caption {str(pairs.item_caption[i])!r} ({int(bad.sum())} items)"
        )
    restarts = 1 if n_types == 1 else int(params["restarts"])
    best: EMResult | None = None
    rows: list[dict] = []
    for restart in range(restarts):
        torch.manual_seed(derive_seed(seed, "pasta", n_types, restart, "model"))
        model = RewardModel(
            dim=img.shape[1],
            hidden=int(params["hidden"]),
            n_types=n_types,
            width=int(params["width"]),
            depth=int(params["depth"]),
            interaction=bool(params["interaction"]),
        )
        x = model.inputs(img, txt)
        model.set_standardisation(x)
        result = fit_em(x, pairs, model, params, seed, restart, progress)
        rows += result.history
        log.info(
            "pasta K=%d restart %d: objective %.2f after %d iterations",
            n_types,
            restart,
            result.objective,
            result.history[-1]["iteration"],
        )
        if best is None or result.objective > best.objective:
            best = result
    assert best is not None
    return best, rows


# --------------------------------------------------------------------------- stage
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True, help="features/ directory")
    parser.add_argument("--train", required=True, help="splits/pipe/train.parquet")
    parser.add_argument("--variant", required=True, choices=["pasta", "population"])
    parser.add_argument("--model", required=True, help="user_model/{variant}.safetensors")
    parser.add_argument("--em-log", required=True, help="user_model/{variant}_em.csv")
    parser.add_argument("--threads", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    params, seed = args.params["pasta"], int(args.params["seed"])
    n_types = int(params["n_types"]) if args.variant == "pasta" else 1
    t0 = time.time()
    store = FeatureStore.load(args.features)
    pairs = build_pairs(read_split(args.train), store, source=str(args.train))
    log.info(
        "fit_pasta %s: K=%d, %d users, %d pairs, %d items",
        args.variant,
        n_types,
        pairs.n_users,
        pairs.n_pairs,
        len(pairs.item_img),
    )
    best, rows = fit_pasta(pairs, store, params, n_types, seed)
    em = pd.DataFrame(
        rows, columns=["restart", "iteration", "objective", "loglik", "accepted", "lr"]
    )
    with atomic_path(args.em_log) as tmp:
        em.to_csv(tmp, index=False)
    chosen = int(em.loc[em["objective"].idxmax(), "restart"])
    meta = {
        "variant": args.variant,
        "n_users": pairs.n_users,
        "n_pairs": pairs.n_pairs,
        "pi": torch.exp(best.log_pi).tolist(),
        "objective": best.objective,
        "chosen_restart": chosen,
        "restarts": int(em["restart"].nunique()),
        "stand_in": "small MLP reward heads on the stand-in CLIP features",
    }
    save_reward_model(best.model, args.model, meta)
    log.info(
        "fit_pasta %s: objective %.2f, π = %s, %.1fs",
        args.variant,
        best.objective,
        np.round(meta["pi"], 3).tolist(),
        time.time() - t0,  # logged, not in the metadata: the same input gives the same bytes
    )
