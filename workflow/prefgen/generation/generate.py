"""``prefgen generate``: images from what a finished run trained, for any user, prompt and seed.

A reader's command, not a rule's: it takes no ``--params``. Everything it needs is in the run
folder ``results/<run_name>/``:

- the resolved config, from ``MANIFEST.json`` (written by ``bundle``): the foundation
  (``models/foundation/`` or ``foundation.pretrained``), each method's user embedding and the
  ``sample`` settings the ``sample`` rule drew with (inference steps, guidance, batch size,
  dtype);
- the checkpoint ``evaluate`` compared each method at, from ``tables/best_checkpoints.csv``
  (``--step`` picks another one of the method's checkpoints);
- the method's adapter, ``adapters/<method>/final.json`` (Premier: its stage-2 adapter
  ``adapters/premier_stage2/final.json`` with ``embeddings/premier_init.safetensors``, the inputs
  of ``sample_premier``), and its user table ``embeddings/<name>.safetensors``.

Images come from the sampler's own code (``sample.load_method`` and ``sample.generate``): one
pipeline call per user, each image's initial noise from a ``torch.Generator`` seeded with its
seed, the deterministic Euler scheduler. So (user, prompt, seed, checkpoint) gives the pixels the
``sample`` rule wrote for that row; they are bit-identical when the call holds the same rows as
the rule's call for that user (all of the user's evaluation rows, in order), and otherwise equal
up to the float rounding of a different batch shape (see tests/test_try_models.py).

A user without an embedding is an error unless ``allow_dropped_user``: the sampler would give
them the "dropped user" input (no personalization), which a reader asking for a user's images
should not get silently.

Writes ``<out>/<method>-step<step>_u<user>_<k>_s<seed>.png`` (``k``: the prompt's position) and
``<out>/generate.json`` (run, method, step, files read, sampling settings, one entry per image).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from prefgen.core.config import ConfigError
from prefgen.core.io import read_json, write_json
from prefgen.core.logging import get_logger

log = get_logger(__name__)

MANIFEST = "MANIFEST.json"
BEST = Path("tables") / "best_checkpoints.csv"
#: Premier is sampled with its stage-2 adapter (new users' combinations) and the stage-1 table
PREMIER_ADAPTER = "premier_stage2"
PREMIER_EMBEDDINGS = "premier_init"


@dataclass
class TrainedRun:
    """A finished run folder and the resolved config its ``MANIFEST.json`` records."""

    root: Path
    config: dict[str, Any]
    best: pd.DataFrame = field(repr=False)

    @classmethod
    def open(cls, root: str | Path) -> TrainedRun:
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"{root}: no such run folder (expected results/<run_name>/)")
        manifest = root / MANIFEST
        if not manifest.exists():
            raise ConfigError(
                f"{manifest}: missing; it is written by the workflow's last rule "
                "(bundle): finish the run with `snakemake all` first"
            )
        config = read_json(manifest).get("config")
        if not isinstance(config, dict) or "sample" not in config:
            raise ConfigError(f"{manifest}: no resolved 'config' with a 'sample' section")
        best_path = root / BEST
        if not best_path.exists():
            raise ConfigError(f"{best_path}: missing (written by the evaluate rule)")
        best = pd.read_csv(best_path)
        if not {"method", "step"} <= set(best.columns):
            raise ConfigError(
                f"{best_path}: expected columns 'method' and 'step', got {list(best.columns)}"
            )
        return cls(root, config, best)

    def train_seeds(self) -> list[int]:
        """The run's training seeds (``train.seeds``); the first is the default replicate."""
        return [int(k) for k in self.config["train"].get("seeds", [0])]

    def check_train_seed(self, train_seed: int | None) -> int:
        seeds = self.train_seeds()
        if train_seed is None:
            return seeds[0]
        if int(train_seed) not in seeds:
            raise ConfigError(f"train seed {train_seed}: not one of the run's train.seeds {seeds}")
        return int(train_seed)

    def methods(self) -> list[str]:
        """Methods this run can draw with: base, every trained adapter method, Premier."""
        found = ["base", *self.config["train"]["methods"]]
        first = self.train_seeds()[0]
        if (self.root / "adapters" / PREMIER_ADAPTER / f"seed{first}" / "final.json").exists():
            found.append("premier")
        return found

    def foundation(self) -> str:
        pretrained = self.config["foundation"].get("pretrained")
        return str(pretrained) if pretrained else str(self.root / "models" / "foundation")

    def method_files(self, method: str, train_seed: int) -> tuple[Path | None, Path | None]:
        """``(adapter final.json, embeddings file)`` the sample rule reads for ``method`` and
        training seed ``train_seed``."""
        if method not in self.methods():
            raise ConfigError(
                f"method '{method}': not trained in {self.root} (methods: "
                f"{', '.join(self.methods())})"
            )
        if method == "base":
            return None, None
        if method == "premier":
            return (
                self.root / "adapters" / PREMIER_ADAPTER / f"seed{train_seed}" / "final.json",
                self.root / "embeddings" / PREMIER_EMBEDDINGS / f"seed{train_seed}.safetensors",
            )
        name = self.config["train"]["methods"][method].get("embedding")
        emb = self.root / "embeddings" / f"{name}.safetensors" if name else None
        return self.root / "adapters" / method / f"seed{train_seed}" / "final.json", emb

    def selected_step(self, method: str, train_seed: int | None = None) -> int:
        """The checkpoint ``evaluate`` compared ``method`` at for that training seed (base: 0)."""
        if method == "base":
            return 0
        train_seed = self.check_train_seed(train_seed)
        rows = self.best[self.best["method"] == method]
        if "train_seed" in rows.columns:
            rows = rows[rows["train_seed"] == train_seed]
        if rows.empty:
            raise ConfigError(
                f"{self.root / BEST}: no row for method '{method}' (it has "
                f"{sorted(self.best['method'])}); pass a step explicitly"
            )
        return int(rows["step"].iloc[0])


def pair_up(prompts: list[str], seeds: list[int]) -> tuple[list[str], list[int]]:
    """One (prompt, seed) per image: equal-length lists, or one of them of length one."""
    if not prompts:
        raise ValueError("no prompt given")
    if not seeds:
        raise ValueError("no seed given")
    if len(seeds) == 1:
        seeds = seeds * len(prompts)
    elif len(prompts) == 1:
        prompts = prompts * len(seeds)
    if len(prompts) != len(seeds):
        raise ValueError(
            f"{len(prompts)} prompts and {len(seeds)} seeds: give one seed per "
            "prompt, a single seed for all prompts, or a single prompt"
        )
    return list(prompts), [int(s) for s in seeds]


def generate_images(
    run_dir: str | Path,
    method: str,
    prompts: list[str],
    seeds: list[int],
    user_id: int | None = None,
    step: int | None = None,
    allow_dropped_user: bool = False,
    device: str | None = None,
    pairs: str | Path | None = None,
    train_seed: int | None = None,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """uint8 ``[H, W, 3]`` images, one per (prompt, seed), and a record of what was used.

    With ``pairs`` (a Pick-a-Pic parquet of a new user's choices) the user joins first
    (``embeddings.onboard``; ``pipe`` only) under ``user_id`` (default -1).
    """
    from prefgen.embeddings.onboard import ONBOARD_METHODS, onboard_pipe
    from prefgen.generation.models import load_pipeline
    from prefgen.generation.sample import generate, load_method

    run = TrainedRun.open(run_dir)
    prompts, seeds = pair_up(prompts, seeds)
    if pairs is not None and method not in ONBOARD_METHODS:
        raise ValueError(
            f"method '{method}' cannot onboard a user from pairs (only "
            f"{', '.join(ONBOARD_METHODS)}: its user is λ fitted on the pairs with "
            "the type rewards frozen); draw an existing user instead"
        )
    onboarded = None
    if pairs is not None:
        user_id = -1 if user_id is None else int(user_id)
        new_users, onboarded = onboard_pipe(run.root, pairs, user_id, run.config)
    train_seed = run.check_train_seed(train_seed)
    adapter, embeddings = run.method_files(method, train_seed)
    step = run.selected_step(method, train_seed) if step is None else int(step)
    cfg = run.config["sample"]
    dtype = getattr(torch, cfg["dtype"])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(run.foundation(), dtype=dtype).to(device)
    sampler = load_method(
        pipe,
        method,
        str(adapter) if adapter else None,
        str(embeddings) if embeddings else None,
        [step] if method != "base" else "all",
        device,
        dtype,
    )
    ((step, ckpt),) = sampler.checkpoints
    if onboarded is not None:
        sampler.users = new_users
        embeddings = Path(pairs)
    extra, per_user = sampler.at(ckpt, device, dtype)
    if per_user and user_id is None:
        raise ValueError(f"method '{method}' draws for a user: give a user id")
    user = int(user_id) if user_id is not None else 0
    own = False
    if extra is not None:
        _, own = extra(user, False)
        if per_user and not own and not allow_dropped_user:
            raise ValueError(
                f"user {user} has no '{method}' embedding in {embeddings}: the "
                "model would draw with the dropped-user input (no "
                "personalization); allow it explicitly with --allow-dropped-user "
                "(allow_dropped_user=True)"
            )
    rows = pd.DataFrame({"user_id": user, "caption": prompts, "seed": seeds})
    images, _ = generate(pipe, rows, cfg, extra, per_user)
    record = {
        "run": str(run.root),
        "method": method,
        "train_seed": None if method == "base" else train_seed,
        "step": step,
        "user_id": user_id,
        "own_embedding": bool(own),
        "foundation": run.foundation(),
        "adapter": str(ckpt) if ckpt is not None else None,
        "embeddings": str(embeddings) if embeddings else None,
        "onboarded": onboarded,
        "sample": {
            k: cfg[k] for k in ("num_inference_steps", "guidance_scale", "batch_size", "dtype")
        },
        "images": [{"prompt": p, "seed": s} for p, s in zip(prompts, seeds, strict=True)],
    }
    return images, record


def write_images(images: list[np.ndarray], record: dict[str, Any], out: str | Path) -> list[Path]:
    """PNGs and ``generate.json`` into ``out``; returns the PNG paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    who = f"u{record['user_id']}" if record["user_id"] is not None else "all"
    paths = []
    for k, (img, entry) in enumerate(zip(images, record["images"], strict=True)):
        path = out / f"{record['method']}-step{record['step']}_{who}_{k}_s{entry['seed']}.png"
        Image.fromarray(img).save(path)
        entry["file"] = path.name
        paths.append(path)
    write_json(record, out / "generate.json")
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="the run folder, results/<run_name>/")
    parser.add_argument(
        "--method",
        required=True,
        help="base, premier or a trained adapter method (pipe, ppd, dpo, ...)",
    )
    parser.add_argument(
        "--user",
        type=int,
        default=None,
        help="user id (methods with per-user inputs: pipe, ppd, premier)",
    )
    parser.add_argument(
        "--prompt", action="append", required=True, help="a prompt; repeat for several"
    )
    parser.add_argument(
        "--seed",
        type=int,
        action="append",
        default=None,
        help="a seed per prompt, or one for all (default 0); repeat for several",
    )
    parser.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint step (default: the one in tables/best_checkpoints.csv)",
    )
    parser.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="which training replicate (train.seeds; default: the first)",
    )
    parser.add_argument(
        "--pairs",
        default=None,
        help="a new user's Pick-a-Pic pairs (parquet): onboard them (pipe only) "
        "and draw for them (as --user, default -1)",
    )
    parser.add_argument(
        "--allow-dropped-user",
        action="store_true",
        help="draw a user without an embedding with the dropped-user input",
    )
    parser.add_argument("--out", required=True, help="folder for the PNGs and generate.json")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (the sample rule uses 1; other counts may change the "
        "last bits of the pixels)",
    )


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(max(1, args.threads))
    images, record = generate_images(
        args.run,
        args.method,
        args.prompt,
        args.seed or [0],
        user_id=args.user,
        step=args.step,
        allow_dropped_user=args.allow_dropped_user,
        pairs=args.pairs,
        train_seed=args.train_seed,
    )
    paths = write_images(images, record, args.out)
    for path in paths:
        print(path)
    print(
        json.dumps(
            {
                k: record[k]
                for k in ("method", "train_seed", "step", "user_id", "own_embedding", "adapter")
            }
        )
    )
