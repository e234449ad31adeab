"""``prefgen judge`` / ``prefgen judge-external``: score every generated image with every judge.

One row per generated image (the samples index columns) plus one float column per judge, in
``scores/{method}.parquet`` (core judges) or ``scores/external/{method}.parquet`` (the paper-scale
judges, run in envs/judges.yaml; ``--env-out`` records that environment's package versions for
the manifest). Images are read in batches, so memory stays flat at SDXL resolution; every judge
scores a batch before the next is read.
"""

from __future__ import annotations

import argparse
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prefgen.core.config import ConfigError
from prefgen.core.io import write_json, write_parquet
from prefgen.core.logging import get_logger
from prefgen.evaluation.judge_registry import build_judges
from prefgen.evaluation.judge_types import JudgeContext, checked_scores
from prefgen.evaluation.samples import load_images, read_index

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="samples/{method}/index.parquet")
    parser.add_argument(
        "--run-dir",
        required=True,
        help="results/<run_name>/: index paths are relative to it; the user model is read from it",
    )
    parser.add_argument(
        "--truth",
        default=None,
        help="data/truth/ of the synthetic world (needed by the oracle judge)",
    )
    parser.add_argument("--out", required=True, help="scores parquet to write")
    parser.add_argument(
        "--env-out",
        default=None,
        help="JSON of the judges environment's package versions (judge-external)",
    )


def run(args: argparse.Namespace) -> None:
    environment = "judges" if args._command == "judge-external" else "core"
    params = args.params.get("judge")
    if not isinstance(params, dict) or not params.get("judges"):
        raise ConfigError("--params must carry {'judge': {'judges': [...], 'batch_size': ...}}")
    names = list(params["judges"])
    t0 = time.time()
    index = read_index(args.index, args.run_dir)
    ctx = JudgeContext(
        run_dir=Path(args.run_dir),
        truth_dir=Path(args.truth) if args.truth else None,
        device=str(params.get("device", "cpu")),
        options=dict(params.get("models", {})),
    )
    if environment == "judges":
        from prefgen.evaluation.external_judges import use_hub_cache

        use_hub_cache(params.get("hub_cache"))
    judges = build_judges(names, environment, ctx)
    log.info(
        "%s: %d images of method '%s', judges %s (loaded in %.1fs)",
        args.index,
        len(index),
        index["method"].iloc[0],
        names,
        time.time() - t0,
    )
    scores = {name: np.empty(len(index), dtype=np.float64) for name in names}
    batch_size = int(params["batch_size"])
    for start in tqdm(range(0, len(index), batch_size), desc="judge", unit="batch"):
        batch = index.iloc[start : start + batch_size]
        images = load_images(args.run_dir, batch["path"].tolist())
        if environment == "core" and len({im.size for im in images}) == 1:
            # the core judges take a uint8 [N,H,W,3] array: the CLIP scorer's vectorised path
            images = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
        captions = batch["caption"].astype(str).tolist()
        users = batch["user_id"].to_numpy(np.int64)
        for name, judge in judges.items():
            scores[name][start : start + len(batch)] = checked_scores(
                name, judge.score(images, captions, users), len(batch)
            )
    out = index.copy()
    for name in names:
        out[name] = scores[name]
    write_parquet(out, args.out)
    if args.env_out:
        from prefgen.evaluation.external_judges import EXTERNAL_PACKAGES

        write_json(
            {"judges": names, "packages": _versions(EXTERNAL_PACKAGES), "models": ctx.options},
            args.env_out,
        )
    log.info("wrote %s (%d rows) in %.1fs", args.out, len(out), time.time() - t0)


def _versions(packages: list[str]) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
