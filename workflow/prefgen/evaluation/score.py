"""``prefgen score``: a finished run's user models as a scorer, outside the workflow.

A reader's command (no ``--params``): images + captions + a user → the scores the ``judge``
rule computes, with the same judges (``evaluation.judge_registry``) built from the same run folder:

- ``pipe``: the user's PIPE reward λ_uᵀ φ(c, x) (``user_model/lambda.parquet`` and the PASTA type
  heads; a user without a fitted λ is an error naming them);
- ``population``: the K = 1 reward model (the same for every user);
- ``oracle``: the user's true reward, on the synthetic world only (``data/truth/``);
- ``clip_score``: text-image similarity of the run's CLIP.

Images are scored as the judge rule scores them: RGB, and one uint8 array per batch when the
batch's images share a size. Scores equal the judge's within float rounding: the CLIP batches
differ from the rule's, which changes the order of float sums (tests/test_try_models.py states
the tolerance).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from prefgen.core.config import ConfigError
from prefgen.core.io import read_json

#: the judges a reader can ask for (core environment, built from the run folder)
SCORERS = ("pipe", "population", "oracle", "clip_score")
DEFAULT_BATCH = 512


def default_scorers(run_dir: Path) -> list[str]:
    """pipe and population, plus oracle when the run has the synthetic world's truth."""
    return ["pipe", "population", *(["oracle"] if (run_dir / "data" / "truth").is_dir() else [])]


def score_images(
    run_dir: str | Path,
    images: Sequence[str | Path | Image.Image],
    captions: Sequence[str],
    user_ids: Sequence[int],
    scorers: Sequence[str] | None = None,
    new_users: dict[int, Sequence[float]] | None = None,
) -> pd.DataFrame:
    """One row per image: ``user_id``, ``caption`` and one float column per scorer.

    ``new_users`` maps users onboarded from pairs (``prefgen generate --pairs``) to their λ,
    which the ``pipe`` scorer uses beside the run's fitted users (they have no true reward, so
    the default scorers leave ``oracle`` out for them).
    """
    from prefgen.evaluation.judge_registry import build_judges
    from prefgen.evaluation.judge_types import JudgeContext, checked_scores

    run_dir = Path(run_dir)
    if not (run_dir / "user_model" / "lambda.parquet").exists():
        raise ConfigError(
            f"{run_dir}: no user_model/lambda.parquet; expected a finished run "
            "folder results/<run_name>/"
        )
    n = len(images)
    if n == 0:
        raise ValueError("no image given")
    if len(captions) != n or len(user_ids) != n:
        raise ValueError(
            f"{n} images, {len(captions)} captions and {len(user_ids)} user ids: "
            "give one caption and one user per image"
        )
    names = list(scorers) if scorers else default_scorers(run_dir)
    if new_users and not scorers:
        names = [s for s in names if s != "oracle"]
    unknown = [s for s in names if s not in SCORERS]
    if unknown:
        raise ValueError(f"unknown scorer(s) {unknown}; choose from {list(SCORERS)}")
    truth = run_dir / "data" / "truth"
    if "oracle" in names and not truth.is_dir():
        raise ValueError(
            f"scorer 'oracle' needs the synthetic world's truth ({truth}); this run "
            "has none (real Pick-a-Pic data has no true reward)"
        )
    ctx = JudgeContext(run_dir=run_dir, truth_dir=truth if truth.is_dir() else None)
    judges = build_judges(names, "core", ctx)
    if new_users and "pipe" in names:
        add_users(ctx.cache["user_model"], new_users)
    batch_size = DEFAULT_BATCH
    manifest = run_dir / "MANIFEST.json"
    if manifest.exists():
        batch_size = int(read_json(manifest)["config"]["judge"]["core"]["batch_size"])
    users = np.asarray(user_ids, dtype=np.int64)
    scores = {name: np.empty(n, dtype=np.float64) for name in names}
    for start in range(0, n, batch_size):
        batch = [load_rgb(im) for im in images[start : start + batch_size]]
        pixels: list[Image.Image] | np.ndarray = batch
        if len({im.size for im in batch}) == 1:  # the judge rule's vectorised path
            pixels = np.stack([np.asarray(im, dtype=np.uint8) for im in batch])
        caps = [str(c) for c in captions[start : start + batch_size]]
        for name, judge in judges.items():
            scores[name][start : start + len(batch)] = checked_scores(
                name, judge.score(pixels, caps, users[start : start + len(batch)]), len(batch)
            )
    out = pd.DataFrame({"user_id": users, "caption": [str(c) for c in captions]})
    for name in names:
        out[name] = scores[name]
    return out


def add_users(scorer: object, new_users: dict[int, Sequence[float]]) -> None:
    """Give the PIPE scorer onboarded users' λ (checked against the run's number of types)."""
    table = scorer.lambdas
    cols = [c for c in table.columns if c.startswith("lambda_")]
    for user, lam in new_users.items():
        if len(lam) != len(cols):
            raise ValueError(f"user {user}: λ has {len(lam)} entries, the run's model {len(cols)}")
        if int(user) in table.index:
            raise ValueError(
                f"user {user} is one of the run's fitted users; an onboarded user needs a new id"
            )
    rows = pd.DataFrame(
        [dict(zip(cols, lam, strict=True)) for lam in new_users.values()],
        index=pd.Index([int(u) for u in new_users], name=table.index.name),
    )
    scorer.lambdas = pd.concat([table, rows])


def load_rgb(image: str | Path | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image '{path}' not found")
    from prefgen.data.pickapic import MAX_IMAGE_PIXELS

    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:  # from the header, before decoding
                raise ValueError(
                    f"image '{path}': header claims {width} x {height} pixels, "
                    f"more than MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}; not decoded"
                )
            return im.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:  # PIL's errors for bad files
        raise ValueError(f"image '{path}': not a decodable image ({exc})") from exc


def from_generated(
    record_path: str | Path,
) -> tuple[list[Path], list[str], list[int], dict[int, list[float]]]:
    """Images, prompts, user and (if onboarded from pairs) the user's λ of a ``generate.json``
    written by ``prefgen generate``."""
    record_path = Path(record_path)
    record = read_json(record_path)
    if record.get("user_id") is None:
        raise ValueError(f"{record_path}: drawn without a user (method base); give --user")
    entries = record.get("images") or []
    missing = [i for i, e in enumerate(entries) if "file" not in e or "prompt" not in e]
    if not entries or missing:
        raise ValueError(
            f"{record_path}: expected 'images' entries with 'file' and 'prompt' "
            f"(bad entries: {missing[:5]})"
        )
    paths = [record_path.parent / e["file"] for e in entries]
    user = int(record["user_id"])
    new = {user: record["onboarded"]["lambda"]} if record.get("onboarded") else {}
    return paths, [e["prompt"] for e in entries], [user] * len(paths), new


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="the run folder, results/<run_name>/")
    parser.add_argument("--image", action="append", default=[], help="an image; repeat")
    parser.add_argument(
        "--caption",
        action="append",
        default=[],
        help="the prompt of each image, or one for all images",
    )
    parser.add_argument("--user", type=int, default=None, help="the user the images are for")
    parser.add_argument(
        "--generated",
        default=None,
        help="generate.json of `prefgen generate`: its images, prompts and user",
    )
    parser.add_argument(
        "--scorer",
        action="append",
        default=None,
        choices=SCORERS,
        help="repeat for several (default: pipe, population and, on the synthetic world, oracle)",
    )
    parser.add_argument("--out", default=None, help="CSV to write (default: print it)")


def run(args: argparse.Namespace) -> None:
    images: list[str | Path] = list(args.image)
    captions: list[str] = list(args.caption)
    users: list[int] = []
    new_users: dict[int, list[float]] = {}
    if args.generated:
        if images:
            raise ValueError("give --generated or --image, not both")
        images, gen_captions, users, new_users = from_generated(args.generated)
        captions = captions or gen_captions
    if not images:
        raise ValueError("no image given (--image or --generated)")
    if len(captions) == 1:
        captions = captions * len(images)
    if args.user is not None:
        users = [args.user] * len(images)
    if not users:
        raise ValueError("no user given (--user)")
    table = score_images(args.run, images, captions, users, args.scorer, new_users)
    table.insert(0, "image", [str(p) for p in images])
    if args.out:
        table.to_csv(args.out, index=False)
    else:
        table.to_csv(sys.stdout, index=False, float_format="%.6g")
