"""A new user from a few preference pairs: PIPE's onboarding, with nothing retrained.

PIPE personalizes through E_u = λ_uᵀW (``embeddings.pipe``), and λ_u is a small ridge logistic
regression on the user's own pairs with the type rewards φ frozen (PIPE Eq. 2,
``user_model.lambda_fit.fit_lambdas``). So a user the run never saw joins by fitting λ on their
pairs with the run's own λ settings (``lambda.l2``, ``lambda.prior``: the population λ recorded
in ``user_model/lambda.json``, ``min_informative``, ``max_iter``, ``tol``) and the run's φ
(``user_model/pasta.safetensors``), then E_u = λ_uᵀW feeds the trained ``pipe`` adapter as it is.
Only ``pipe`` onboards this way: ``ppd`` needs the VLM's few-shot pass, ``premier`` an
optimisation of user tokens, ``dpo`` and ``base`` have no user.

The pairs file has Pick-a-Pic's columns ``caption, image_0_uid, image_1_uid, label_0, label_1``
(1/0: the first image preferred, 0/1: the second, 0.5/0.5: a tie); other columns are ignored.
The images must be ones the run embedded (``features/images.parquet``: the run's Pick-a-Pic
images) — the frozen CLIP features are read from there, as are known captions' (new captions
are embedded with the run's CLIP). Ties carry no direction and do not enter the fit (the
workflow's splits give them a random one); at least ``lambda.min_informative`` (and 1) non-tie
pairs are needed, since below that the workflow itself gives a user the population λ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prefgen.core.io import read_json

PAIR_COLUMNS = ("caption", "image_0_uid", "image_1_uid", "label_0", "label_1")
#: methods a user can join from pairs alone
ONBOARD_METHODS = ("pipe",)


def read_pairs(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The pairs and, per row, whether image 0 is preferred (``True``/``False``) or a tie
    (``None`` in an object array); errors name the file, row and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file")
    df = pd.read_parquet(path)
    missing = [c for c in PAIR_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected Pick-a-Pic columns {list(PAIR_COLUMNS)}"
        )
    df = df[list(PAIR_COLUMNS)].reset_index(drop=True)
    for col in PAIR_COLUMNS:
        null = df[col].isna().to_numpy()
        if null.any():
            raise ValueError(f"{path}: row {int(np.flatnonzero(null)[0])}: column '{col}' is empty")
    labels = df[["label_0", "label_1"]].to_numpy(np.float64)
    first = np.empty(len(df), dtype=object)
    for i, (a, b) in enumerate(labels):
        if (a, b) == (1.0, 0.0):
            first[i] = True
        elif (a, b) == (0.0, 1.0):
            first[i] = False
        elif (a, b) == (0.5, 0.5):
            first[i] = None
        else:
            raise ValueError(
                f"{path}: row {i}: labels ({a:g}, {b:g}); expected (1, 0), (0, 1) "
                "or (0.5, 0.5) as in Pick-a-Pic"
            )
    return df, first


def onboard_pipe(
    run_dir: str | Path, pairs_path: str | Path, user_id: int, config: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """``(UserEmbeddings with the one new user, what the fit did)`` for the ``pipe`` adapter.

    ``config`` is the run's resolved config (``MANIFEST.json``), for its ``lambda`` settings.
    """
    from prefgen.embeddings.pipe import pipe_embeddings
    from prefgen.generation.adapters import UserEmbeddings
    from prefgen.user_model.features import ClipEmbedder, FeatureStore
    from prefgen.user_model.lambda_fit import fit_lambdas
    from prefgen.user_model.pasta import load_reward_model

    run = Path(run_dir)
    pairs_path = Path(pairs_path)
    params = config["lambda"]
    df, first = read_pairs(pairs_path)
    decided = np.array([f is not None for f in first])
    needed = max(1, int(params["min_informative"]))
    if decided.sum() < needed:
        raise ValueError(
            f"{pairs_path}: {int(decided.sum())} non-tie pair(s) of {len(df)}; "
            f"onboarding needs at least {needed} (lambda.min_informative of the "
            "run, and one): with fewer the user is the population"
        )
    df, first = df[decided].reset_index(drop=True), first[decided].astype(bool)
    store = FeatureStore.load(run / "features")
    uids = pd.concat([df["image_0_uid"], df["image_1_uid"]]).astype(str)
    unknown = ~uids.isin(store.image_row.index).to_numpy()
    if unknown.any():
        rows = sorted({int(i) % len(df) for i in np.flatnonzero(unknown)})
        raise ValueError(
            f"{pairs_path}: image uid(s) {sorted(set(uids[unknown]))[:5]} (rows "
            f"{rows[:5]}) are not among the run's images ({run / 'features'}); "
            "a new user rates images the run has embedded"
        )
    win = np.where(first, df["image_0_uid"], df["image_1_uid"]).astype(str)
    lose = np.where(first, df["image_1_uid"], df["image_0_uid"]).astype(str)
    img = store.image_emb[
        torch.from_numpy(
            np.concatenate(
                [
                    store.image_rows(win, where=str(pairs_path)),
                    store.image_rows(lose, where=str(pairs_path)),
                ]
            )
        )
    ]
    captions = df["caption"].astype(str)
    known = captions.isin(store.caption_row.index).to_numpy()
    txt = torch.empty(len(df), store.caption_emb.shape[1], dtype=store.caption_emb.dtype)
    with torch.no_grad():
        if known.any():  # the features the run fitted λ with
            txt[known] = store.caption_emb[
                torch.from_numpy(
                    store.caption_rows(captions[known].to_numpy(), where=str(pairs_path))
                )
            ]
        if (~known).any():  # new prompts: the run's CLIP, as the features rule embeds them
            new = ClipEmbedder(run / "models" / "clip").captions(captions[~known].tolist())
            txt[~known] = new.to(txt.dtype)
        model = load_reward_model(run / "user_model" / "pasta.safetensors")
        phi = model.phi(img, torch.cat([txt, txt])).double().numpy()
    dphi = phi[: len(df)] - phi[len(df) :]
    prior = None
    if params["prior"] == "population":
        prior = np.asarray(read_json(run / "user_model" / "lambda.json")["population_lambda"])
    fit = fit_lambdas(
        dphi,
        np.zeros(len(df), dtype=np.int64),
        1,
        float(params["l2"]),
        prior_mean=prior,
        min_informative=int(params["min_informative"]),
        max_iter=int(params["max_iter"]),
        tol=float(params["tol"]),
    )
    if fit.fallback[0]:
        raise ValueError(
            f"{pairs_path}: every pair has Δφ = 0 under the run's type rewards; "
            "these pairs say nothing about the user"
        )
    emb = pipe_embeddings(fit.lam, model.W).float()
    users = UserEmbeddings(torch.tensor([int(user_id)]), emb, source=str(pairs_path))
    info = {
        "pairs": str(pairs_path),
        "n_pairs": int(len(decided)),
        "n_ties_left_out": int((~decided).sum()),
        "lambda": fit.lam[0].tolist(),
        "prior": params["prior"],
        "l2": float(params["l2"]),
    }
    return users, info
