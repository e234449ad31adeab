"""The evaluation figures: judge scores along training (PIPE Fig. 2) and per-user sample grids
(PIPE Fig. 3), drawn with matplotlib's non-interactive backend.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from prefgen.core.io import atomic_path  # noqa: E402
from prefgen.evaluation.samples import resolve_image  # noqa: E402

#: row order of methods in figures; methods not listed follow alphabetically
METHOD_ORDER = ["base", "dpo", "pipe", "ppd", "premier"]


def ordered_methods(methods: Sequence[str]) -> list[str]:
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(m for m in set(methods) if m not in METHOD_ORDER)


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    """PNG written atomically, with fixed metadata so identical plots give identical bytes."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def checkpoint_curves(
    metrics: pd.DataFrame,
    selected: pd.DataFrame,
    judges: Sequence[str],
    path: str | Path,
    subtitle: str = "",
) -> None:
    """One panel per judge: mean score (± s.e.m.) against training step, one line per method.

    Methods with a single checkpoint (``base``) are a dashed horizontal line; the checkpoint
    picked by ``evaluate.select_by`` is starred.
    """
    n = len(judges)
    ncols = min(3, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.3 * nrows), squeeze=False)
    methods = ordered_methods(metrics["method"].unique())
    colours = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    best = selected.set_index("method")["step"].to_dict()
    steps_all = metrics["step"].to_numpy()
    span = (steps_all.min(), max(steps_all.max(), steps_all.min() + 1))
    for ax, judge in zip(axes.flat, judges, strict=False):
        sub = metrics[metrics["judge"] == judge]
        for method in methods:
            m = sub[sub["method"] == method].sort_values("step")
            if m.empty:
                continue
            y, e = m["mean_score"].to_numpy(), m["sem"].fillna(0.0).to_numpy()
            if len(m) == 1:
                ax.axhline(y[0], color=colours[method], ls="--", lw=1.2, label=method)
                ax.axhspan(y[0] - e[0], y[0] + e[0], color=colours[method], alpha=0.12)
                continue
            x = m["step"].to_numpy()
            ax.plot(x, y, marker="o", ms=3, color=colours[method], label=method)
            ax.fill_between(x, y - e, y + e, color=colours[method], alpha=0.15)
            if method in best:
                at = m[m["step"] == best[method]]
                ax.plot(
                    at["step"],
                    at["mean_score"],
                    marker="*",
                    ms=13,
                    color=colours[method],
                    markeredgecolor="black",
                    zorder=5,
                )
        ax.set_xlim(*span)
        ax.set_title(judge)
        ax.set_xlabel("training step")
        ax.set_ylabel("mean score")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, loc="best")
    title = "Judge scores over training (★ = checkpoint selected by the PIPE judge)"
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def user_types(
    truth_users: pd.DataFrame | None, type_names: Sequence[str] | None, lambdas: pd.DataFrame | None
) -> tuple[pd.DataFrame, list[str], str]:
    """``(weights [user_id x K], type names, source)``: planted types when the truth is known,
    else the learned PASTA mixture weights lambda_u (paper scale)."""
    if truth_users is not None:
        cols = sorted(
            (c for c in truth_users.columns if c.startswith("lambda_true_")),
            key=lambda c: int(c.rsplit("_", 1)[1]),
        )
        names = list(type_names) if type_names else [f"type {k}" for k in range(len(cols))]
        w = truth_users.set_index("user_id")[cols]
        w.columns = range(len(cols))
        return w, names, "planted type"
    if lambdas is None:
        raise ValueError("sample grids need either the world's truth or user_model/lambda.parquet")
    cols = sorted(
        (c for c in lambdas.columns if c.startswith("lambda_") and c[7:].isdigit()),
        key=lambda c: int(c[7:]),
    )
    w = lambdas.set_index("user_id")[cols]
    w.columns = range(len(cols))
    return w, [f"PASTA type {k}" for k in range(len(cols))], "learned type"


def pick_grid_user(weights: pd.DataFrame, candidates: Sequence[int], k: int) -> tuple[int, bool]:
    """The seen test user with the largest weight on type ``k`` (the purest example), and
    whether ``k`` is also that user's dominant type."""
    w = weights.loc[weights.index.intersection(list(candidates))]
    if w.empty:
        raise ValueError("no seen test user of the eval set has type weights")
    user = int(w[k].idxmax())
    return user, int(np.argmax(w.loc[user].to_numpy())) == k


def sample_grid(
    scores: pd.DataFrame,
    selected: pd.DataFrame,
    run_dir: Path,
    user_id: int,
    n_prompts: int,
    annotate: str | None,
    title: str,
    path: str | Path,
) -> None:
    """Rows = methods at their selected checkpoint, columns = prompts, for one user."""
    step = selected.set_index("method")["step"].to_dict()
    methods = ordered_methods(list(step))
    rows = scores[(scores["user_id"] == user_id) & (scores["step"] == scores["method"].map(step))]
    per_method = [
        set(map(tuple, rows.loc[rows["method"] == m, ["prompt_id", "seed"]].to_numpy().tolist()))
        for m in methods
    ]
    common = sorted(set.intersection(*per_method)) if per_method else []
    chosen: list[tuple[int, int]] = []
    for prompt_id, seed in common:  # one seed per prompt, the smallest
        if not chosen or chosen[-1][0] != prompt_id:
            chosen.append((prompt_id, seed))
    chosen = chosen[:n_prompts]
    if not chosen:
        raise ValueError(f"user {user_id}: no (prompt, seed) sampled by every method {methods}")
    # One mosaic image on one axes (not one axes per cell): an order of magnitude faster to
    # draw, which matters with one grid per user type in every run.
    cell, pad = 128, 14
    key = rows.set_index(["method", "prompt_id", "seed"])
    mosaic = np.full(
        (len(methods) * (cell + pad) + pad, len(chosen) * (cell + pad) + pad, 3),
        255,
        dtype=np.uint8,
    )
    cells = {}
    for i, method in enumerate(methods):
        for j, (prompt_id, seed) in enumerate(chosen):
            r = key.loc[(method, prompt_id, seed)]
            cells[i, j] = r
            with Image.open(resolve_image(run_dir, r["path"])) as im:
                tile = im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            y, x = pad + i * (cell + pad), pad + j * (cell + pad)
            mosaic[y : y + cell, x : x + cell] = np.asarray(tile)
    width = max(1.55 * len(chosen) + 1.2, 6.0)
    height = 1.55 * len(methods) + 1.6
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((1.0 / width, 0.35 / height, 1 - 1.15 / width, 1 - 1.55 / height))
    ax.imshow(mosaic, interpolation="nearest")
    centres_x = [pad + j * (cell + pad) + cell / 2 for j in range(len(chosen))]
    centres_y = [pad + i * (cell + pad) + cell / 2 for i in range(len(methods))]
    ax.set_xticks(
        centres_x,
        ["\n".join(textwrap.wrap(str(cells[0, j]["caption"]), 20)) for j in range(len(chosen))],
        fontsize=7,
    )
    ax.xaxis.tick_top()
    ax.set_yticks(centres_y, [f"{m}\n(step {step[m]})" for m in methods], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if annotate is not None:
        for (i, j), r in cells.items():
            ax.text(
                centres_x[j],
                pad + i * (cell + pad) + cell + pad / 2,
                f"{annotate} {r[annotate]:.2f}",
                ha="center",
                va="center",
                fontsize=6.5,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5},
            )
    fig.text(
        0.5,
        1 - 0.08 / height,
        "\n".join(textwrap.fill(line, width=int(width * 12)) for line in title.split("\n")),
        ha="center",
        va="top",
        fontsize=9,
    )
    save_figure(fig, path)
