"""``train_adapter``: the one Diffusion-DPO trainer of every adapter method (PIPE §2.3, PPD Eq. 6).

Read top to bottom: load the cached latents/text states (``encode``) and the training pairs,
install the method's conditioning on the frozen UNet (``adapters.build_conditioning``: the only
thing that differs between ``dpo``, ``pipe``, ``ppd``, ...), then for every step draw a global
batch of pairs in a fixed order, noise both images of each pair with the *same* noise and
timestep, run the UNet once with the conditioning switched off (the reference: no second copy)
and once with it on, and take a Diffusion-DPO step on the conditioning's weights only.

Determinism and resume. The pairs of step ``s`` and all its random numbers (latent samples,
noise, timesteps, dropout draws) are functions of (seed, s) alone, drawn for the whole global
batch and then sliced per process. So a run resumed from ``checkpoint-s`` computes exactly the
batches an uninterrupted run computes after ``s`` (batches already seen are skipped by
construction, not by replaying a loader), and 1 process or N processes with the same global
batch see the same pairs and noise. A checkpoint is ``checkpoint-{step}/`` with
``adapter.safetensors`` (the conditioning's weights only), ``optimizer.safetensors`` (AdamW
moments, kept for the latest checkpoint only) and ``state.json``; its ``fingerprint`` covers the
config and the inputs, so a checkpoint from another config is never resumed.

accelerate owns the device, mixed precision, the processes (DDP over the trainable weights)
and gradient accumulation; launch with ``accelerate launch -m prefgen.cli train-adapter ...``
for several processes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from prefgen.core.io import atomic_dir, load_tensors, save_tensors, write_json, write_parquet
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed
from prefgen.generation.adapter_pairs import cache_rows, training_pairs
from prefgen.generation.adapters import (
    DIFFUSERS_IP_FILE,
    Conditioning,
    UserBatch,
    UserEmbeddings,
    build_conditioning,
)
from prefgen.generation.denoising import noisy_and_target, per_sample_mse
from prefgen.generation.dpo import diffusion_dpo_loss

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="a key of train.methods")
    parser.add_argument("--foundation", required=True, help="pipeline folder or hub id")
    parser.add_argument("--encoded", required=True, help="cache/encoded/train.safetensors")
    parser.add_argument("--image-index", required=True, help="cache/encoded/images.parquet")
    parser.add_argument("--caption-index", required=True, help="cache/encoded/captions.parquet")
    parser.add_argument("--pairs", required=True, help="splits/pipe/train.parquet")
    parser.add_argument("--holdout", required=True, help="splits/ppd/test_unseen.parquet")
    parser.add_argument("--embeddings", default=None, help="embeddings/<name>.safetensors")
    parser.add_argument("--out", required=True, help="adapters/<method>/final.json")
    parser.add_argument(
        "--log-dir",
        default=None,
        help="logs/<run_name>/tensorboard: the trackers of train.log_with write "
        "under <log-dir>/<method>/ (no tracking without it)",
    )
    parser.add_argument("--threads", type=int, default=1)


# --- data ------------------------------------------------------------------------------------
@dataclass
class TrainData:
    """The cached tensors and the training pairs pointing into them."""

    latent_mean: torch.Tensor  # [N_img, C, h, w], scaled
    latent_std: torch.Tensor
    prompt_embeds: torch.Tensor  # [N_cap, L, D]
    pooled: torch.Tensor  # [N_cap, P]
    pairs: pd.DataFrame  # ranking_id, user_id, ..., w_row, l_row, c_row

    @classmethod
    def load(
        cls, encoded: str, image_index: str, caption_index: str, pairs: str, holdout: str
    ) -> TrainData:
        t = load_tensors(encoded)
        for key in ("latent_mean", "latent_std", "prompt_embeds", "pooled"):
            if key not in t:
                raise ValueError(f"{encoded}: missing tensor '{key}'; rerun `encode`")
        selected = training_pairs(pd.read_parquet(pairs), pd.read_parquet(holdout), pairs, holdout)
        rows = cache_rows(
            selected, pd.read_parquet(image_index), pd.read_parquet(caption_index), encoded
        )
        return cls(t["latent_mean"], t["latent_std"], t["prompt_embeds"], t["pooled"], rows)


class BatchSchedule:
    """Which pairs and which random numbers every (step, micro-step) uses; see module docstring."""

    def __init__(
        self,
        data: TrainData,
        seed: int,
        global_batch: int,
        time_ids: torch.Tensor,
        num_train_timesteps: int,
    ):
        self.data = data
        self.seed = seed
        self.global_batch = global_batch
        self.time_ids = time_ids[:1]
        self.T = num_train_timesteps
        self.n = len(data.pairs)
        self._w = torch.from_numpy(data.pairs["w_row"].to_numpy().copy())
        self._l = torch.from_numpy(data.pairs["l_row"].to_numpy().copy())
        self._c = torch.from_numpy(data.pairs["c_row"].to_numpy().copy())
        self._u = torch.from_numpy(data.pairs["user_id"].to_numpy(np.int64).copy())
        self._perms: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            g = np.random.default_rng(derive_seed(self.seed, "train", "order", epoch))
            self._perms = {epoch: g.permutation(self.n)}  # only the current epoch is kept
        return self._perms[epoch]

    def indices(self, micro_index: int) -> np.ndarray:
        """Pair indices of global micro-batch ``micro_index`` (epochs reshuffle, nothing repeats
        within an epoch)."""
        pos = micro_index * self.global_batch + np.arange(self.global_batch)
        out = np.empty(self.global_batch, dtype=np.int64)
        for epoch in np.unique(pos // self.n):
            sel = pos // self.n == epoch
            out[sel] = self._order(int(epoch))[pos[sel] % self.n]
        return out

    def batch(self, micro_index: int, rank: int, world: int) -> dict[str, Any]:
        """This process's slice of global micro-batch ``micro_index``."""
        G = self.global_batch
        if G % world:
            raise ValueError(f"global batch {G} is not divisible by {world} processes")
        idx = torch.from_numpy(self.indices(micro_index))
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "train", "noise", micro_index))
        shape = (G, *self.data.latent_mean.shape[1:])
        eps_w, eps_l, noise = (torch.randn(shape, generator=gen) for _ in range(3))
        t = torch.randint(0, self.T, (G,), generator=gen)
        rand = torch.rand(G, generator=gen)
        sl = slice(rank * G // world, (rank + 1) * G // world)
        win, lose, c = self._w[idx[sl]], self._l[idx[sl]], self._c[idx[sl]]
        d = self.data
        x_w = d.latent_mean[win] + d.latent_std[win] * eps_w[sl]
        x_l = d.latent_mean[lose] + d.latent_std[lose] * eps_l[sl]
        users = UserBatch(
            user_ids=self._u[idx[sl]],
            prompt_embeds=d.prompt_embeds[c],
            pooled=d.pooled[c],
            time_ids=self.time_ids.expand(len(win), -1),
            rand=rand[sl],
        )
        return {"x_w": x_w, "x_l": x_l, "noise": noise[sl], "t": t[sl], "users": users}


# --- model -----------------------------------------------------------------------------------
class DPOModel(nn.Module):
    """The frozen UNet plus a method's conditioning; ``forward`` returns model and reference."""

    def __init__(self, unet: nn.Module, cond: Conditioning, noise_scheduler: Any):
        super().__init__()
        self.unet = unet
        self.cond = cond
        self.noise_scheduler = noise_scheduler

    def forward(
        self,
        x_w: torch.Tensor,
        x_l: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        users: UserBatch,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(model prediction, reference prediction, target)`` for the method's objective:
        winners then losers for ``dpo``; the preferred images only and no reference for
        ``denoise``. The target is ε or v, per the scheduler (``generation/denoising.py``)."""
        if self.cond.objective == "denoise":
            noisy, target = noisy_and_target(self.noise_scheduler, x_w, noise, t)
            pred = self.unet(noisy, t, **self.cond.unet_inputs(users, train=True)).sample
            return pred, None, target
        x0 = torch.cat([x_w, x_l])
        noise2, t2 = torch.cat([noise, noise]), torch.cat([t, t])  # a pair shares noise and t
        noisy, target = noisy_and_target(self.noise_scheduler, x0, noise2, t2)
        both = users.repeat(2)
        with torch.no_grad(), self.cond.reference():
            ref = self.unet(noisy, t2, **self.cond.unet_inputs(both, train=True)).sample
        pred = self.unet(noisy, t2, **self.cond.unet_inputs(both, train=True)).sample
        return pred, ref, target


def objective_loss(
    pred: torch.Tensor, ref: torch.Tensor | None, target: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-DPO when there is a reference prediction, else the denoising loss."""
    if ref is None:
        loss = per_sample_mse(pred, target).mean()
        return loss, {"loss": loss.item(), "model_loss": loss.item()}
    terms = diffusion_dpo_loss(pred, ref, target, beta)
    return terms.loss, terms.log_dict()


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    def move(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)

    u = batch["users"]
    users = UserBatch(
        u.user_ids.to(device),
        move(u.prompt_embeds),
        move(u.pooled),
        move(u.time_ids),
        move(u.rand) if u.rand is not None else None,
    )
    return {**{k: move(v) for k, v in batch.items() if k != "users"}, "users": users}


# --- checkpoints -----------------------------------------------------------------------------
def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """AdamW state as safetensors-ready tensors plus its param groups as JSON (no pickle)."""
    sd = opt.state_dict()
    tensors = {
        f"{pid}.{k}": torch.as_tensor(v) for pid, st in sd["state"].items() for k, v in st.items()
    }
    return tensors, json.dumps(sd["param_groups"])


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups_json: str
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(groups_json)})


def fingerprint(params: dict[str, Any], method: str, inputs: list[str | None]) -> str:
    """Identity of a training run: its config and its inputs (size + mtime), hashed.

    A checkpoint left by a run with another fingerprint is not resumed.
    """
    files = []
    for path in inputs:
        if path and os.path.exists(path):
            st = os.stat(path)
            files.append([os.path.basename(path), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"params": params, "method": method, "inputs": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def latest_checkpoint(out_dir: Path, fp: str) -> tuple[int, Path] | None:
    """The newest resumable checkpoint (same fingerprint, optimizer state present)."""
    best = None
    for ckpt in out_dir.glob("checkpoint-*"):
        state_file = ckpt / "state.json"
        if not state_file.exists() or not (ckpt / "optimizer.safetensors").exists():
            continue
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") == fp and (best is None or state["step"] > best[0]):
            best = (int(state["step"]), ckpt)
    return best


def save_checkpoint(
    out_dir: Path,
    step: int,
    cond: Conditioning,
    opt: torch.optim.Optimizer,
    fp: str,
    history: list[dict[str, float]],
) -> Path:
    """Write ``checkpoint-{step}`` atomically; drop older checkpoints' optimizer state."""
    target = out_dir / f"checkpoint-{step}"
    with atomic_dir(target) as tmp:
        # the fingerprint hashes input mtimes: it stays in state.json, out of the weights, so a
        # re-run on the same config writes byte-identical weights
        save_tensors(
            cond.adapter_state_dict(), tmp / "adapter.safetensors", metadata={"step": str(step)}
        )
        if getattr(cond, "diffusers_exportable", False):
            # the same weights in the layout StableDiffusionXLPipeline.load_ip_adapter reads
            save_tensors(
                cond.diffusers_state_dict(),
                tmp / DIFFUSERS_IP_FILE,
                metadata={"step": str(step), "format": "diffusers-ip-adapter"},
            )
        tensors, groups = optimizer_to_tensors(opt)
        save_tensors(tensors, tmp / "optimizer.safetensors", metadata={"param_groups": groups})
        write_json({"step": step, "fingerprint": fp}, tmp / "state.json")
        write_parquet(pd.DataFrame(history), tmp / "train_log.parquet")
    for old in out_dir.glob("checkpoint-*"):
        if old != target and (old / "optimizer.safetensors").exists():
            (old / "optimizer.safetensors").unlink()
    return target


def load_checkpoint(
    ckpt: Path, cond: Conditioning, opt: torch.optim.Optimizer
) -> list[dict[str, float]]:
    from safetensors import safe_open

    cond.load_adapter_state_dict(load_tensors(ckpt / "adapter.safetensors"))
    with safe_open(str(ckpt / "optimizer.safetensors"), "pt") as f:
        groups = f.metadata()["param_groups"]
    optimizer_from_tensors(opt, load_tensors(ckpt / "optimizer.safetensors"), groups)
    return pd.read_parquet(ckpt / "train_log.parquet").to_dict("records")


# --- the loop --------------------------------------------------------------------------------
def warmup_schedule(
    opt: torch.optim.Optimizer, lr: float, warmup: int, start: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """diffusers' ``constant_with_warmup`` schedule (linear warm-up over ``warmup`` steps, then
    ``lr``), positioned so that step ``start + 1`` trains at ``lr * min(1, (start + 1) / warmup)``:
    steps count from 1, and a run resumed at ``start`` continues the schedule. Call ``.step()``
    after each training step."""
    from diffusers.optimization import get_scheduler

    for group in opt.param_groups:
        group["initial_lr"] = lr  # the schedule's base; a resumed optimizer's lr is mid-schedule
    return get_scheduler("constant_with_warmup", opt, num_warmup_steps=warmup, last_epoch=start)


def trackers(log_with: list[str], log_dir: str | Path | None) -> list[str]:
    """accelerate trackers for ``train.log_with`` (none without a log folder); a tracker whose
    package is missing is an error naming the key, never a silently empty dashboard."""
    if log_dir is None or not log_with:
        return []
    import importlib.util

    for name in log_with:
        if importlib.util.find_spec(name) is None:
            raise ValueError(
                f"train.log_with lists '{name}' but the '{name}' package is not "
                f"installed (pip install {name}, or remove it from train.log_with)"
            )
    return list(log_with)


def tracker_config(method_cfg: dict[str, Any], cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """The run's hyperparameters as the flat scalars TensorBoard's hparams accept."""
    flat = {f"method.{k}": v for k, v in method_cfg.items()}
    flat |= {k: v for k, v in cfg.items() if k not in ("methods", "log_with")} | {"seed": seed}
    return {
        k: v if isinstance(v, int | float | str | bool) else json.dumps(v) for k, v in flat.items()
    }


def train(
    pipe: Any,
    data: TrainData,
    users: UserEmbeddings | None,
    method: str,
    method_cfg: dict[str, Any],
    cfg: dict[str, Any],
    seed: int,
    out_dir: Path,
    fp: str,
    log_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``method``'s conditioning; returns the summary written to ``final.json``.

    ``pipe`` is a ``models.Denoiser`` (or a whole pipeline): its UNet, scheduler and VAE factor.
    ``cfg`` is the ``train`` config (steps, batch, lr, beta, ...); ``fp`` the run's fingerprint.
    With ``log_dir`` every step's log row also goes to the trackers of ``train.log_with``
    (accelerate's tracker API: TensorBoard event files under ``log_dir/<adapter folder>/``).
    """
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from prefgen.generation.models import add_time_ids

    accum = int(cfg["gradient_accumulation_steps"])
    log_with = trackers(list(cfg.get("log_with", [])), log_dir)
    acc = Accelerator(
        mixed_precision=cfg["mixed_precision"],
        gradient_accumulation_steps=accum,
        cpu=not torch.cuda.is_available(),  # CPU processes: gloo
        log_with=log_with or None,
        project_dir=str(log_dir) if log_with else None,
    )
    if log_with:
        # one folder per trained adapter and seed (adapters/<name>/seed<k>/ -> <name>/seed<k>):
        # Premier's variants share a method, every method shares the seed folder names
        name = out_dir.name
        if name.startswith("seed") and name[4:].isdigit():
            name = f"{out_dir.parent.name}/{name}"
        acc.init_trackers(
            name,
            config=tracker_config(method_cfg, cfg, seed),
            init_kwargs={"wandb": {"dir": str(log_dir)}},
        )
    torch.manual_seed(derive_seed(seed, "train", "init", method))
    unet = pipe.unet
    if cfg["gradient_checkpointing"]:
        # SDXL at 1024 px keeps tens of GB of activations for the backward pass; recomputing
        # them per block trades ~1/3 more compute for memory and leaves the gradients as they are
        # (diffusers recomputes only under grad, so the no-grad reference pass is untouched).
        unet.enable_gradient_checkpointing()
    cond = build_conditioning(unet, method_cfg, users)
    model = DPOModel(unet, cond, DDPMScheduler.from_config(pipe.scheduler.config))
    opt = torch.optim.AdamW(
        cond.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"])
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    start, history = 0, []
    resumed = latest_checkpoint(out_dir, fp)
    if resumed is not None:
        start = resumed[0]
        history = [h for h in load_checkpoint(resumed[1], cond, opt) if h["step"] <= start]
        log.info("%s: resuming from %s (step %d)", method, resumed[1], start)
    elif any(out_dir.glob("checkpoint-*")):
        log.info(
            "%s: checkpoints in %s are from another config/input; starting over", method, out_dir
        )
        if acc.is_main_process:
            for old in out_dir.glob("checkpoint-*"):
                shutil.rmtree(old)
    acc.wait_for_everyone()
    schedule_lr = warmup_schedule(opt, float(cfg["lr"]), int(cfg["warmup_steps"]), start)
    model, opt = acc.prepare(model, opt)
    global_batch = int(cfg["batch_size"])
    schedule = BatchSchedule(
        data,
        seed,
        global_batch,
        add_time_ids(pipe, 1),
        int(pipe.scheduler.config.num_train_timesteps),
    )
    steps, every = int(cfg["steps"]), int(cfg["checkpoint_every"])
    beta, lr = float(cfg["beta"]), float(cfg["lr"])
    weight_dtype = torch.float32
    log.info(
        "%s: %d pairs, %d steps x %d pairs (%d processes, accumulation %d), beta %g, lr %g",
        method,
        schedule.n,
        steps,
        global_batch * accum,
        acc.num_processes,
        accum,
        beta,
        lr,
    )
    t0 = time.perf_counter()
    model.train()
    for step in tqdm(
        range(start + 1, steps + 1),
        desc=f"train {method}",
        mininterval=5,
        disable=not acc.is_local_main_process,
    ):
        logs: list[dict[str, float]] = []
        for k in range(accum):
            micro = (step - 1) * accum + k
            batch = to_device(
                schedule.batch(micro, acc.process_index, acc.num_processes),
                acc.device,
                weight_dtype,
            )
            with acc.accumulate(model), acc.autocast():
                pred, ref, target = model(**batch)
                main, main_log = objective_loss(pred, ref, target, beta)
                extra = acc.unwrap_model(model).cond.extra_losses(batch["users"])
                loss = main + sum(extra.values(), torch.zeros((), device=acc.device))
                acc.backward(loss)
                if acc.sync_gradients and cfg["max_grad_norm"]:
                    acc.clip_grad_norm_(model.parameters(), float(cfg["max_grad_norm"]))
                opt.step()
                opt.zero_grad(set_to_none=True)
            logs.append({**main_log, **{k2: float(v) for k2, v in extra.items()}})
        row = {key: float(np.mean([entry[key] for entry in logs])) for key in logs[0]}
        reduced = acc.reduce(torch.tensor(list(row.values()), device=acc.device), "mean")
        history.append({"step": step, **dict(zip(row, reduced.tolist(), strict=True))})
        if log_with:
            acc.log({f"train/{k}": v for k, v in history[-1].items() if k != "step"}, step=step)
        if step % every == 0 or step == steps:
            if acc.is_main_process:
                save_checkpoint(out_dir, step, acc.unwrap_model(model).cond, opt, fp, history)
            acc.wait_for_everyone()
        schedule_lr.step()
    elapsed = time.perf_counter() - t0
    if log_with:
        acc.end_training()
    cond = acc.unwrap_model(model).cond
    return summary(
        method, method_cfg, cfg, out_dir, history, elapsed, schedule.n, cond, fp, acc.num_processes
    )


def summary(
    method: str,
    method_cfg: dict[str, Any],
    cfg: dict[str, Any],
    out_dir: Path,
    history: list[dict[str, float]],
    elapsed: float,
    n_pairs: int,
    cond: Conditioning,
    fp: str,
    processes: int,
) -> dict[str, Any]:
    """What ``final.json`` records: checkpoints, their sizes, and how training went."""
    ckpts = []
    for path in sorted(
        out_dir.glob("checkpoint-*/adapter.safetensors"),
        key=lambda p: int(p.parent.name.split("-")[1]),
    ):
        ckpts.append(
            {
                "step": int(path.parent.name.split("-")[1]),
                "path": str(path.relative_to(out_dir)),
                "bytes": path.stat().st_size,
            }
        )
    hist = pd.DataFrame(history)
    first = hist.head(max(1, len(hist) // 10)).mean(numeric_only=True)
    last = hist.tail(max(1, len(hist) // 10)).mean(numeric_only=True)
    return {
        "method": method,
        "method_config": method_cfg,
        "fingerprint": fp,
        "complete": bool(history) and history[-1]["step"] == int(cfg["steps"]),
        "steps": int(cfg["steps"]),
        "n_pairs": n_pairs,
        "processes": processes,
        "pairs_per_step": int(cfg["batch_size"]) * int(cfg["gradient_accumulation_steps"]),
        "beta": float(cfg["beta"]),
        "seconds_this_run": elapsed,
        "trainable_parameters": sum(p.numel() for p in cond.parameters()),
        "user_input": cond.user_input,
        "checkpoints": ckpts,
        "first_tenth": {k: float(v) for k, v in first.items() if k != "step"},
        "last_tenth": {k: float(v) for k, v in last.items() if k != "step"},
    }


def users_with_embeddings(
    data: TrainData, users: UserEmbeddings, method_cfg: dict[str, Any], source: str
) -> tuple[TrainData, dict[str, int]]:
    """The training pairs of users the method has an embedding for.

    PIPE fits λ for every training user, so a missing one is an error. PPD has no embedding for
    users with fewer than N few-shot examples and excludes them (PPD §5.2); with
    ``users_without_embedding: drop`` their pairs leave training, counted and logged.
    """
    known = set(users.user_ids.tolist())
    missing = sorted(set(data.pairs["user_id"].astype(int)) - known)
    policy = method_cfg.get("users_without_embedding", "error")
    if missing and policy != "drop":
        raise ValueError(
            f"{source}: {len(missing)} training users have no embedding, e.g. "
            f"{missing[:5]} (set users_without_embedding: drop to exclude them)"
        )
    keep = data.pairs["user_id"].astype(int).isin(known).to_numpy()
    excluded = {"users": len(missing), "pairs": int((~keep).sum())}
    if missing:
        log.warning(
            "%s: %d training users without an embedding excluded with their %d pairs "
            "(users_without_embedding: drop), e.g. %s",
            source,
            excluded["users"],
            excluded["pairs"],
            missing[:5],
        )
    pairs = data.pairs.loc[keep].reset_index(drop=True)
    return replace(data, pairs=pairs), excluded


def run(args: argparse.Namespace) -> None:
    from prefgen.core.seeding import seed_everything, training_seed
    from prefgen.generation.models import load_denoiser

    p = args.params
    methods = p["train"]["methods"]
    if args.method not in methods:
        raise ValueError(f"--method {args.method}: not in train.methods {sorted(methods)}")
    method_cfg = methods[args.method]
    torch.set_num_threads(max(1, args.threads))
    seed = training_seed(p)  # the run seed, or this replicate's (train.seeds)
    seed_everything(derive_seed(seed, "train", args.method))
    if method_cfg.get("embedding") and not args.embeddings:
        raise ValueError(
            f"method {args.method} uses embedding '{method_cfg['embedding']}' "
            "but no --embeddings file was given"
        )
    users = UserEmbeddings.load(args.embeddings) if method_cfg.get("embedding") else None
    data = TrainData.load(
        args.encoded, args.image_index, args.caption_index, args.pairs, args.holdout
    )
    excluded: dict[str, int] = {"users": 0, "pairs": 0}
    if users is not None:
        data, excluded = users_with_embeddings(data, users, method_cfg, args.embeddings)
    denoiser = load_denoiser(args.foundation)
    out = Path(args.out)
    identity = {k: v for k, v in p["train"].items() if k not in ("methods", "log_with")}
    fp = fingerprint(
        identity | {"seed": seed},
        json.dumps(method_cfg, sort_keys=True),
        [args.encoded, args.pairs, args.holdout, args.embeddings],
    )
    result = train(
        denoiser,
        data,
        users,
        args.method,
        method_cfg,
        p["train"],
        seed,
        out.parent,
        fp,
        args.log_dir,
    )
    result["excluded_without_embedding"] = excluded
    result["train_seed"] = p.get("train_seed")
    from accelerate import PartialState

    if PartialState().is_main_process:
        write_json(result, out)
        log.info(
            "%s: done, %d checkpoints, final loss %.4f, implicit acc %.3f",
            args.method,
            len(result["checkpoints"]),
            result["last_tenth"].get("loss", float("nan")),
            result["last_tenth"].get("implicit_acc", float("nan")),
        )
