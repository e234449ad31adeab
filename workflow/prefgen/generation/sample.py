"""``sample``: images of one method for every (user, unseen prompt, seed) of the evaluation set.

Every method samples the same rows of ``splits/eval_set.parquet`` with the same seeds: each
image's initial noise comes from its own ``torch.Generator`` seeded with the row's ``seed``, and
the scheduler (SDXL's Euler) adds no further noise, so an image depends on the method and
its row only, not on batching — comparisons between methods are paired. ``base`` is the frozen
foundation (no adapter); an adapter method samples every checkpoint listed in ``sample.steps``
(or all of them) through the stock ``StableDiffusionXLPipeline`` with its conditioning's
pipeline inputs (``ip_adapter_image_embeds`` for IP-Adapter methods).

Users without an embedding (a user the embedding stage had no λ or few-shot examples for) get
the "dropped user" input the adapter was trained with; such rows are flagged in the index
(``own_embedding = False``) and counted in the log, never silently mixed in.

A trained method is sampled once per training seed (``train.seeds``): every replicate samples
the same rows with the same sampling seeds, so replicates pair with each other and with
``base``, which is sampled once. Writes PNGs under
``samples/{method}/seed{train_seed}/step-{step}/`` (``samples/base/step-0/`` for base) and
the index beside them
(``method, train_seed, step, user_id, user_group, prompt_id, caption, seed, path,
own_embedding``; ``train_seed`` is -1 for base, which is not trained; ``path`` relative to the
run directory).
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from prefgen.core.io import atomic_dir, load_tensors, read_json, write_parquet
from prefgen.core.logging import get_logger

log = get_logger(__name__)

EVAL_COLUMNS = ("user_id", "user_group", "prompt_id", "caption", "seed")
#: train_seed of the untrained base model in the index (it pairs with every training seed)
UNTRAINED = -1
INDEX_COLUMNS = (
    "method",
    "train_seed",
    "step",
    "user_id",
    "user_group",
    "prompt_id",
    "caption",
    "seed",
    "path",
    "own_embedding",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="base or a key of train.methods")
    parser.add_argument("--foundation", required=True, help="pipeline folder or hub id")
    parser.add_argument("--eval-set", required=True, help="splits/eval_set.parquet")
    parser.add_argument("--adapter", default=None, help="adapters/<method>/final.json (not base)")
    parser.add_argument("--embeddings", default=None, help="embeddings/<name>.safetensors")
    parser.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="the adapter's training seed (an entry of train.seeds; not base)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="samples/<method>/seed<train_seed>/index.parquet (samples/base/index.parquet)",
    )
    parser.add_argument("--threads", type=int, default=1)


def read_eval_set(path: str) -> pd.DataFrame:
    df = pd.read_parquet(path)
    missing = [c for c in EVAL_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (expected {list(EVAL_COLUMNS)})")
    if df.empty:
        raise ValueError(f"{path}: the evaluation set is empty")
    return df[list(EVAL_COLUMNS)].reset_index(drop=True)


def select_steps(final: dict[str, Any], wanted: list[int] | str, source: str) -> list[dict]:
    """The checkpoints to sample: ``"all"`` or the listed steps (each must exist)."""
    ckpts = {c["step"]: c for c in final["checkpoints"]}
    if wanted == "all":
        return [ckpts[s] for s in sorted(ckpts)]
    missing = [s for s in wanted if s not in ckpts]
    if missing:
        raise ValueError(
            f"{source}: sample.steps {missing} have no checkpoint (have "
            f"{sorted(ckpts)}); align sample.steps with train.checkpoint_every"
        )
    return [ckpts[s] for s in wanted]


@torch.no_grad()
def generate(
    pipe: Any, rows: pd.DataFrame, cfg: dict[str, Any], extra: Any = None, per_user: bool = True
) -> tuple[list[np.ndarray], np.ndarray]:
    """uint8 images for ``rows`` (user_id, caption, seed), in row order.

    ``extra(user_id, guidance) -> (pipeline kwargs, own embedding?)`` supplies the user input.
    The SDXL pipeline takes one user input per call, so with ``per_user`` rows are batched per
    user; a method whose input is the same for everybody (base, a constant) batches freely.
    """
    images: list[np.ndarray | None] = [None] * len(rows)
    own = np.zeros(len(rows), dtype=bool)
    guidance = float(cfg["guidance_scale"]) > 1.0
    bs = int(cfg["batch_size"])
    if per_user:
        groups = list(rows.groupby("user_id", sort=True).indices.items())
    else:
        groups = [(int(rows["user_id"].iloc[0]), np.arange(len(rows)))]
    for user_id, positions in tqdm(groups, desc="sample", mininterval=5):
        kwargs, flag = ({}, False) if extra is None else extra(int(user_id), guidance)
        for start in range(0, len(positions), bs):
            pos = positions[start : start + bs]
            chunk = rows.iloc[pos]
            gens = [torch.Generator().manual_seed(int(s)) for s in chunk["seed"]]
            out = pipe(
                prompt=chunk["caption"].tolist(),
                generator=gens,
                num_inference_steps=int(cfg["num_inference_steps"]),
                guidance_scale=float(cfg["guidance_scale"]),
                output_type="np",
                **kwargs,
            )
            for p, img in zip(pos, out.images, strict=True):
                images[p] = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        own[positions] = flag
    return images, own


def write_pngs(images: list[np.ndarray], rows: pd.DataFrame, folder: Path) -> list[str]:
    """PNGs named ``u{user}_p{prompt}_s{seed}.png`` into ``folder`` (atomically as a whole)."""
    names = [f"u{int(r.user_id)}_p{int(r.prompt_id)}_s{int(r.seed)}.png" for r in rows.itertuples()]
    if len(set(names)) != len(names):
        raise ValueError("evaluation set has duplicate (user_id, prompt_id, seed) rows")
    with atomic_dir(folder) as tmp:
        for img, name in zip(images, names, strict=True):
            Image.fromarray(img).save(tmp / name)
    return names


@dataclass
class MethodSampler:
    """A method installed on a pipeline: its conditioning, user table and checkpoints.

    ``base`` has no conditioning (``cond is None``) and one pseudo-checkpoint, step 0.
    """

    method: str
    cond: Any
    users: Any
    checkpoints: list[tuple[int, Path | None]]

    def at(self, ckpt: Path | None, device: str, dtype: torch.dtype) -> tuple[Any, bool]:
        """Load checkpoint ``ckpt``; ``(extra, per_user)`` for ``generate``."""
        if ckpt is None:
            return None, False
        cond, users = self.cond, self.users
        cond.load_adapter_state_dict(load_tensors(ckpt))
        cond.to(device=device, dtype=dtype)

        def extra(user_id: int, guidance: bool) -> Any:
            return cond.pipeline_inputs(user_id, users, guidance)

        return extra, cond.user_input != "constant"


def load_method(
    pipe: Any,
    method: str,
    adapter: str | None,
    embeddings: str | None,
    steps: list[int] | str,
    device: str,
    dtype: torch.dtype,
) -> MethodSampler:
    """Install ``method``'s conditioning (from ``adapters/<m>/final.json``) on ``pipe``."""
    from prefgen.generation.adapters import UserEmbeddings, build_conditioning

    if method == "base":
        return MethodSampler(method, None, None, [(0, None)])
    if not adapter:
        raise ValueError(f"--method {method}: an adapter method needs --adapter")
    final = read_json(adapter)
    if not final.get("complete", False):
        raise ValueError(f"{adapter}: training did not complete")
    method_cfg = final["method_config"]
    if method_cfg.get("embedding") and not embeddings:
        raise ValueError(
            f"{adapter}: method uses embedding '{method_cfg['embedding']}' but no "
            "embeddings file was given"
        )
    users = UserEmbeddings.load(embeddings) if method_cfg.get("embedding") else None
    cond = build_conditioning(pipe.unet, method_cfg, users).to(device=device, dtype=dtype)
    cond.eval()
    adapter_dir = Path(adapter).parent
    ckpts = [(c["step"], adapter_dir / c["path"]) for c in select_steps(final, steps, adapter)]
    return MethodSampler(method, cond, users, ckpts)


def run(args: argparse.Namespace) -> None:
    from prefgen.generation.models import load_pipeline

    torch.set_num_threads(max(1, args.threads))
    cfg = args.params["sample"]
    rows = read_eval_set(args.eval_set)
    out = Path(args.out)
    if (args.method == "base") != (args.train_seed is None):
        raise ValueError(
            f"--method {args.method}: --train-seed is required for a trained "
            "method and not allowed for base"
        )
    method_dir = out.parent
    run_dir = method_dir.parent.parent if args.train_seed is None else method_dir.parents[2]
    train_seed = UNTRAINED if args.train_seed is None else int(args.train_seed)
    dtype = getattr(torch, cfg["dtype"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(args.foundation, dtype=dtype).to(device)
    sampler = load_method(
        pipe, args.method, args.adapter, args.embeddings, cfg["steps"], device, dtype
    )

    for old in method_dir.glob("step-*"):
        shutil.rmtree(old)  # stale images of an earlier configuration
    frames = []
    for step, ckpt in sampler.checkpoints:
        extra, per_user = sampler.at(ckpt, device, dtype)
        images, own = generate(pipe, rows, cfg, extra, per_user)
        folder = method_dir / f"step-{step}"
        names = write_pngs(images, rows, folder)
        frame = rows.assign(
            method=args.method,
            train_seed=train_seed,
            step=step,
            own_embedding=own,
            path=[str((folder / n).relative_to(run_dir)) for n in names],
        )
        frames.append(frame[list(INDEX_COLUMNS)])
        if per_user and sampler.cond.user_input == "embedding" and not own.all():
            log.warning(
                "%s step %d: %d of %d rows have no user embedding and got the dropped-user "
                "input (own_embedding=False), users %s",
                args.method,
                step,
                int((~own).sum()),
                len(own),
                sorted(set(rows.loc[~own, "user_id"].astype(int)))[:10],
            )
        log.info("%s step %d: %d images -> %s", args.method, step, len(images), folder)
    write_parquet(pd.concat(frames, ignore_index=True), out)
