"""``prefgen world``: the synthetic Pick-a-Pic world with ground truth. A stand-in.

Real Pick-a-Pic has no answer key: nobody knows a user's true taste, so nobody knows how good a
user model could be. This world plants one. Scenes (a coloured shape on a background, captioned
"a bright red star on a dark blue background") are rendered procedurally; eight pixel-measured
attributes (``prefgen.data.attributes``) span what users care about; ``K*`` planted user types
are linear rewards over the standardized attributes; each user mixes the types with weights
``lambda*_u ~ Dirichlet`` (a configurable share of users is "pure": one type only). Users rank
images the way Pick-a-Pic users did: per prompt a session of pairs in which the preferred image
stays and the other is replaced; the label is Bradley-Terry on the user's true reward difference
with a temperature, and a tie when the difference is below a threshold (calibrated to the
configured tie share). Pairs per user follow a discrete lognormal: a few users rank hundreds of
pairs, most a handful.

Outputs: shards with exactly the Pick-a-Pic v2 columns (``pickapic_schema``), and ``truth/``
(``world.json``: attributes, standardization, type weights, temperature, tie threshold,
vocabularies; ``users.parquet``: lambda*_u per user). Reading the truth back and scoring images
with it (``load_truth``, ``type_rewards``, ``oracle_reward``) is :mod:`prefgen.data.truth`.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from prefgen.core.io import atomic_dir, write_json, write_parquet
from prefgen.core.logging import get_logger
from prefgen.core.seeding import rng
from prefgen.data.attributes import (
    ATTRIBUTES,
    BACKGROUNDS,
    MEASURE_SIZE,
    OBJECT_COLOURS,
    measure_attributes,
)
from prefgen.data.pickapic_schema import PICKAPIC_V2_SCHEMA
from prefgen.data.render import SHAPES, SceneParams, encode_jpeg, jpeg_roundtrip, render

log = get_logger(__name__)

STAND_IN = "synthetic world (stand-in for Pick-a-Pic v2; procedurally rendered scenes)"

# --- the planted user types: weights over the standardized attributes ------------------------
#: ``world.n_types`` takes the first K of these. Each is a distinct taste a real Pick-a-Pic user
#: could plausibly have; they are ordered so that any first K disagree on most axes (vivid vs
#: moody on brightness, vivid vs minimal on colour, ...), so one population reward cannot
#: serve everyone.
TYPES: tuple[tuple[str, dict[str, float]], ...] = (
    ("vivid", {"brightness": 0.5, "saturation": 0.9, "colourfulness": 0.8}),
    ("moody", {"brightness": -1.1, "contrast": 0.7, "warmth": -0.4}),
    ("minimal", {"colourfulness": -0.9, "saturation": -0.5, "object_size": -0.8}),
    ("warm_soft", {"warmth": 1.0, "sharpness": -0.8, "contrast": -0.3}),
    ("faithful_sharp", {"caption_fidelity": 1.0, "sharpness": 0.8, "object_size": 0.4}),
    ("bold", {"object_size": 1.0, "contrast": 0.6, "brightness": 0.4}),
)
#: Added to every type: everybody prefers an image that shows what they asked for. This is the
#: share of taste a population model (PickScore-like) can learn.
SHARED_WEIGHTS: dict[str, float] = {"caption_fidelity": 0.4}

#: Optional style words in prompts and how they move the renderer (so a generator can learn
#: "bright" -> brighter). Keys of the effect dicts are latent knobs of ``sample_scenes``.
STYLE_WORDS: dict[str, dict[str, float]] = {
    "bright": {"log_gamma": -0.55},
    "dark": {"log_gamma": 0.55},
    "vivid": {"log_saturation": 0.45},
    "pale": {"log_saturation": -0.6},
    "soft": {"blur": 0.45},
    "crisp": {"blur": -0.3},
}

MODEL_NAME = "prefgen-synthetic-renderer"
URL_PREFIX = "https://synthetic.prefgen.invalid/images/"
RENDER_CHUNK = 4096  # fixed, so the pixel-noise streams do not depend on machine or config
EPOCH_START = np.datetime64("2023-04-01T00:00:00", "ns")
EPOCH_DAYS = 150


# --- prompts --------------------------------------------------------------------------------
@dataclass
class Prompt:
    style: str | None
    colour: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        words = [self.style, self.colour, self.shape] if self.style else [self.colour, self.shape]
        return f"a {' '.join(words)} on a {self.background} background"


def prompt_pool(n_prompts: int, style_rate: float, gen: np.random.Generator) -> list[Prompt]:
    """``n_prompts`` distinct prompts; about ``style_rate`` of them carry a style word.

    Object and background colours that would be hard to tell apart are never combined.
    """
    plain, styled = [], []
    for colour, shape, bg in itertools.product(OBJECT_COLOURS, SHAPES, BACKGROUNDS):
        dist = np.linalg.norm(np.subtract(OBJECT_COLOURS[colour], BACKGROUNDS[bg]))
        if dist < 100:
            continue
        plain.append(Prompt(None, colour, shape, bg))
        styled.extend(Prompt(s, colour, shape, bg) for s in STYLE_WORDS)
    n_styled = int(round(n_prompts * style_rate))
    n_plain = n_prompts - n_styled
    if n_plain > len(plain) or n_styled > len(styled):
        raise ValueError(
            f"world.n_prompts={n_prompts}: the caption grammar has only {len(plain)} "
            f"plain and {len(styled)} styled prompts"
        )
    pick_plain = gen.choice(len(plain), n_plain, replace=False)
    pick_styled = gen.choice(len(styled), n_styled, replace=False)
    pool = [plain[i] for i in pick_plain] + [styled[i] for i in pick_styled]
    return [pool[i] for i in gen.permutation(len(pool))]


# --- users ----------------------------------------------------------------------------------
def allocate_pairs(
    n_users: int, n_pairs: int, sigma: float, lo: int, hi: int, gen: np.random.Generator
) -> np.ndarray:
    """Pairs per user: discrete lognormal shares ``w_u = exp(sigma z_u)``, scaled to ``n_pairs``.

    ``n_u = lo + share of the rest``, capped at ``hi`` (the excess is redistributed), rounded so
    the total is exactly ``n_pairs``.
    """
    if n_users * lo > n_pairs or n_users * hi < n_pairs:
        raise ValueError(
            f"world: {n_pairs} pairs cannot be spread over {n_users} users with "
            f"{lo}..{hi} pairs each"
        )
    w = np.exp(sigma * gen.standard_normal(n_users))
    target = np.zeros(n_users)
    free = np.ones(n_users, bool)
    rest = float(n_pairs - n_users * lo)
    cap = hi - lo
    for _ in range(n_users):
        share = rest * w / w[free].sum()
        over = free & (share > cap)
        if not over.any():
            target[free] = share[free]
            break
        target[over] = cap
        free &= ~over
        rest = float(n_pairs - n_users * lo - target[~free].sum())
    base = np.floor(target).astype(np.int64)
    remainder = int(n_pairs - n_users * lo - base.sum())
    order = np.argsort(-(target - base), kind="stable")
    base[order[:remainder]] += 1
    return base + lo


def sample_lambdas(
    n_users: int, n_types: int, alpha: float, pure_share: float, gen: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``lambda*_u``: Dirichlet(alpha) mixtures, except ``pure_share`` of users are one-hot."""
    lam = gen.dirichlet(np.full(n_types, alpha), size=n_users)
    pure = gen.random(n_users) < pure_share
    onehot = np.eye(n_types)[gen.integers(0, n_types, n_users)]
    lam[pure] = onehot[pure]
    return lam, pure


def session_lengths(n: int, mean: float, hi: int, gen: np.random.Generator) -> list[int]:
    """Split a user's ``n`` pairs into prompt sessions of 1 + Poisson(mean - 1) pairs (<= hi)."""
    out = []
    while n > 0:
        k = int(min(hi, 1 + gen.poisson(max(mean - 1.0, 0.0)), n))
        out.append(k)
        n -= k
    return out


# --- images ---------------------------------------------------------------------------------
def sample_scenes(
    prompts: list[Prompt], wrong_colour_rate: float, gen: np.random.Generator
) -> SceneParams:
    """Latent rendering knobs for one image per entry of ``prompts`` (style words shift them)."""
    n = len(prompts)
    colour_names = list(OBJECT_COLOURS)
    palette = np.array([OBJECT_COLOURS[c] for c in colour_names]) / 255.0
    bgs = np.array([BACKGROUNDS[p.background] for p in prompts]) / 255.0
    colour_idx = np.array([colour_names.index(p.colour) for p in prompts])
    wrong = gen.random(n) < wrong_colour_rate
    shift = gen.integers(1, len(colour_names), n)  # any other palette colour
    colour_idx = np.where(wrong, (colour_idx + shift) % len(colour_names), colour_idx)
    effect = {k: np.zeros(n) for k in ("log_gamma", "log_saturation", "blur")}
    for i, p in enumerate(prompts):
        if p.style:
            for k, v in STYLE_WORDS[p.style].items():
                effect[k][i] += v
    return SceneParams(
        shape=np.array([SHAPES.index(p.shape) for p in prompts]),
        colour=np.clip(palette[colour_idx] + gen.normal(0, 0.03, (n, 3)), 0, 1),
        background=np.clip(bgs + gen.normal(0, 0.03, (n, 3)), 0, 1),
        gradient_colour=gen.random((n, 3)),
        gradient_amount=gen.random(n) ** 1.5 * 0.7,
        gradient_angle=gen.uniform(0, 2 * np.pi, n),
        scale=gen.uniform(0.35, 0.8, n),
        cx=gen.uniform(-0.2, 0.2, n),
        cy=gen.uniform(-0.2, 0.2, n),
        rotation=gen.uniform(0, 2 * np.pi, n),
        saturation=np.exp(gen.normal(0, 0.35, n) + effect["log_saturation"]),
        warmth=gen.normal(0, 0.05, n),
        contrast=np.exp(gen.normal(0, 0.25, n)),
        gamma=np.exp(gen.normal(0, 0.35, n) + effect["log_gamma"]),
        blur=np.clip(gen.normal(0.3, 0.25, n) + effect["blur"], 0, 1),
    )


def render_images(
    scenes: SceneParams, captions: list[str], size: int, quality: int, seed: int
) -> tuple[list[bytes], pd.DataFrame]:
    """JPEG bytes of every scene and the attributes measured on the *decoded* JPEGs.

    Measuring after the JPEG round trip means the labels come from exactly the pixels a model
    (and the oracle) will later see.
    """
    jpegs: list[bytes] = []
    attrs = []
    n_chunks = (len(scenes) + RENDER_CHUNK - 1) // RENDER_CHUNK
    for c in tqdm(range(n_chunks), desc="render", unit="chunk", mininterval=2.0):
        sl = slice(c * RENDER_CHUNK, (c + 1) * RENDER_CHUNK)
        pixels = render(scenes.take(sl), size, rng(seed, "world", "noise", c))
        chunk = [encode_jpeg(p, quality) for p in pixels]
        decoded = jpeg_roundtrip(pixels, quality)
        attrs.append(measure_attributes(decoded, captions[sl]))
        jpegs.extend(chunk)
    return jpegs, pd.concat(attrs, ignore_index=True)


def image_uids(n: int, gen: np.random.Generator) -> list[str]:
    """Deterministic UUID-4 strings (Pick-a-Pic image uids are UUIDs)."""
    import uuid

    raw = gen.integers(0, 256, size=(n, 16), dtype=np.uint8)
    return [str(uuid.UUID(bytes=bytes(r), version=4)) for r in raw]


# --- labelling ------------------------------------------------------------------------------
def simulate_sessions(
    session_images: list[np.ndarray],
    reward: list[np.ndarray],
    temperature: float,
    tie_threshold: float,
    gen: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Run every ranking session: the preferred image stays, the other is replaced.

    ``reward[s]`` holds the session user's true reward of each of its images. Returns one entry
    per pair: session index, step, left/right image index, label_0 and the reward difference.
    """
    sess, step, left, right, label0, delta = [], [], [], [], [], []
    for s, (imgs, r) in enumerate(zip(session_images, reward, strict=True)):
        cur = 0
        flips = gen.random(len(imgs) - 1) < 0.5
        u = gen.random(len(imgs) - 1)
        for j in range(1, len(imgs)):
            a, b = (j, cur) if flips[j - 1] else (cur, j)
            d = r[a] - r[b]
            if abs(d) < tie_threshold:
                lab = 0.5
                cur = a if u[j - 1] < 0.5 else b
            else:
                win_a = u[j - 1] < 1.0 / (1.0 + np.exp(-d / temperature))
                lab = 1.0 if win_a else 0.0
                cur = a if win_a else b
            sess.append(s)
            step.append(j - 1)
            left.append(imgs[a])
            right.append(imgs[b])
            label0.append(lab)
            delta.append(d)
    return {
        "session": np.array(sess),
        "step": np.array(step),
        "image_0": np.array(left),
        "image_1": np.array(right),
        "label_0": np.array(label0),
        "delta": np.array(delta),
    }


# --- the stage: build_world's steps, in the order it runs ------------------------------------
@dataclass
class Sessions:
    """Ranking sessions: one (user, prompt) with ``length`` pairs, hence ``length + 1`` images;
    session ``s`` owns images ``offsets[s]:offsets[s + 1]``."""

    user: np.ndarray  #: [S] user index (row of ``user_ids``)
    prompt: np.ndarray  #: [S] prompt index
    length: np.ndarray  #: [S] pairs
    offsets: np.ndarray  #: [S + 1]

    def __len__(self) -> int:
        return len(self.length)

    def images(self) -> list[np.ndarray]:
        """Image indices of every session."""
        return [np.arange(self.offsets[s], self.offsets[s + 1]) for s in range(len(self))]


def sample_users(
    w: dict[str, Any], n_types: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(user_ids, lambda* [U, K], is_pure [U], pairs per user [U])``."""
    n_users = int(w["n_users"])
    ugen = rng(seed, "world", "users")
    user_ids = np.sort(ugen.choice(np.arange(1, 1 << 20), n_users, replace=False)).astype(np.int64)
    lam, pure = sample_lambdas(
        n_users, n_types, float(w["dirichlet_alpha"]), float(w["pure_user_share"]), ugen
    )
    ppu = w["pairs_per_user"]
    n_pairs_u = allocate_pairs(
        n_users,
        int(w["n_pairs"]),
        float(ppu["sigma"]),
        int(ppu["min"]),
        int(ppu["max"]),
        rng(seed, "world", "pairs_per_user"),
    )
    return user_ids, lam, pure, n_pairs_u


def plan_sessions(
    n_pairs_u: np.ndarray, popularity: np.ndarray, spp: dict[str, Any], seed: int
) -> Sessions:
    """Each user's pairs split into sessions, each on a prompt drawn by ``popularity``."""
    sgen = rng(seed, "world", "sessions")
    sess_user, sess_len = [], []
    for u in range(len(n_pairs_u)):
        for k in session_lengths(int(n_pairs_u[u]), float(spp["mean"]), int(spp["max"]), sgen):
            sess_user.append(u)
            sess_len.append(k)
    sess_prompt = sgen.choice(len(popularity), len(sess_len), p=popularity)
    sess_len_arr = np.array(sess_len)
    offsets = np.concatenate([[0], np.cumsum(sess_len_arr + 1)])
    return Sessions(np.array(sess_user), sess_prompt, sess_len_arr, offsets)


def planted_weights(n_types: int) -> tuple[list[str], np.ndarray]:
    """Names and ``[K, A]`` reward weights of the first ``n_types`` planted types (each type's
    own weights plus the shared ones)."""
    type_names = [TYPES[k][0] for k in range(n_types)]
    weights = np.array(
        [
            [TYPES[k][1].get(a, 0.0) + SHARED_WEIGHTS.get(a, 0.0) for a in ATTRIBUTES]
            for k in range(n_types)
        ]
    )
    return type_names, weights


def attribute_scale(attrs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The world's standardization: mean and std of every attribute over all its images (a
    constant attribute keeps std 1)."""
    mean = attrs.mean().to_numpy()
    std = attrs.std(ddof=0).to_numpy()
    return mean, np.where(std > 1e-9, std, 1.0)


def image_rewards(
    attrs: pd.DataFrame,
    mean: np.ndarray,
    std: np.ndarray,
    weights: np.ndarray,
    lam: np.ndarray,
    img_user: np.ndarray,
) -> np.ndarray:
    """``[images]``: each image's true reward for the user of its session."""
    z = np.nan_to_num((attrs[list(ATTRIBUTES)].to_numpy() - mean) / std, nan=0.0)
    rewards_k = z @ weights.T  # [images, K]
    return np.einsum("nk,nk->n", rewards_k, lam[img_user])


def label_sessions(
    sessions: Sessions, img_reward: np.ndarray, temperature: float, tie_share: float, seed: int
) -> tuple[dict[str, np.ndarray], float]:
    """Every session's pairs and labels, and the tie threshold.

    The threshold is calibrated so that about ``tie_share`` of the realised pairs are ties. The
    realised pairs depend on the labels (the winner stays), so simulate once without ties, take
    the quantile of |delta|, and simulate again with it (same random stream both times).
    """
    session_images = sessions.images()
    session_reward = [img_reward[ix] for ix in session_images]
    first = simulate_sessions(
        session_images, session_reward, temperature, 0.0, rng(seed, "world", "labels")
    )
    tie_threshold = float(np.quantile(np.abs(first["delta"]), tie_share))
    pairs = simulate_sessions(
        session_images, session_reward, temperature, tie_threshold, rng(seed, "world", "labels")
    )
    return pairs, tie_threshold


def timestamp_pairs(
    pairs: dict[str, np.ndarray], n_sessions: int, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``(pairs in time order, created_at)``: sessions start uniformly over ``EPOCH_DAYS``,
    pairs 5..40 s apart."""
    n_pairs = len(pairs["session"])
    tgen = rng(seed, "world", "time")
    sess_start = tgen.integers(0, EPOCH_DAYS * 86400 * 10**3, n_sessions) * 10**6  # ns, ms grid
    gaps = tgen.integers(5, 41, n_pairs) * 10**9
    created = EPOCH_START + (sess_start[pairs["session"]] + (pairs["step"] + 1) * gaps).astype(
        "timedelta64[ns]"
    )
    order = np.lexsort((pairs["step"], pairs["session"], created))
    return {key: value[order] for key, value in pairs.items()}, created[order]


def pickapic_table(
    pairs: dict[str, np.ndarray],
    created: np.ndarray,
    pair_user_ids: np.ndarray,
    img_captions: list[str],
    jpegs: list[bytes],
    uids: list[str],
) -> pa.Table:
    """The pairs in exactly the Pick-a-Pic v2 schema (``pickapic_schema``)."""
    n_pairs = len(pairs["session"])
    i0, i1, lab0 = pairs["image_0"], pairs["image_1"], pairs["label_0"]
    captions = np.array(img_captions, dtype=object)[i0]
    uid_arr = np.array(uids, dtype=object)
    best = np.where(lab0 == 1.0, uid_arr[i0], np.where(lab0 == 0.0, uid_arr[i1], ""))
    caption_counts = pd.Series(captions).map(pd.Series(captions).value_counts()).to_numpy()
    jpeg_arr = np.array(jpegs, dtype=object)
    return pa.table(
        {
            "are_different": pa.array(i0 != i1, pa.bool_()),
            "best_image_uid": pa.array(best.tolist(), pa.string()),
            "caption": pa.array(captions.tolist(), pa.string()),
            "created_at": pa.array(created, pa.timestamp("ns")),
            "has_label": pa.array(np.ones(n_pairs, bool), pa.bool_()),
            "image_0_uid": pa.array(uid_arr[i0].tolist(), pa.string()),
            "image_0_url": pa.array([URL_PREFIX + u + ".jpg" for u in uid_arr[i0]], pa.string()),
            "image_1_uid": pa.array(uid_arr[i1].tolist(), pa.string()),
            "image_1_url": pa.array([URL_PREFIX + u + ".jpg" for u in uid_arr[i1]], pa.string()),
            "jpg_0": pa.array(jpeg_arr[i0].tolist(), pa.binary()),
            "jpg_1": pa.array(jpeg_arr[i1].tolist(), pa.binary()),
            "label_0": pa.array(lab0.astype(np.float64), pa.float64()),
            "label_1": pa.array((1.0 - lab0).astype(np.float64), pa.float64()),
            "model_0": pa.array([MODEL_NAME] * n_pairs, pa.string()),
            "model_1": pa.array([MODEL_NAME] * n_pairs, pa.string()),
            "ranking_id": pa.array(np.arange(1, n_pairs + 1, dtype=np.int64), pa.int64()),
            "user_id": pa.array(pair_user_ids, pa.int64()),
            "num_example_per_prompt": pa.array(caption_counts.astype(np.int64), pa.int64()),
        },
        schema=PICKAPIC_V2_SCHEMA,
    )


def style_word_effect(attrs: pd.DataFrame, img_prompts: list[Prompt]) -> dict[str, Any]:
    """How each style word moves each attribute, net of the background (which dominates it)."""
    style = pd.Series([p.style or "none" for p in img_prompts])
    net = attrs - attrs.groupby(pd.Series([p.background for p in img_prompts])).transform("mean")
    return {
        word: {
            a: float(net.loc[style == word, a].mean())
            for a in ("brightness", "saturation", "sharpness")
        }
        for word in ["none", *STYLE_WORDS]
    }


def world_meta(
    seed: int,
    w: dict[str, Any],
    mean: np.ndarray,
    std: np.ndarray,
    type_names: list[str],
    weights: np.ndarray,
    tie_threshold: float,
    pairs: dict[str, np.ndarray],
    pure: np.ndarray,
    realised_ppu: np.ndarray,
    sessions: Sessions,
    prompts: list[Prompt],
    style_effect: dict[str, Any],
    n_images: int,
) -> dict[str, Any]:
    """``world.json``: the answer key (standardization, type weights, temperature, tie
    threshold) and a summary of what was realised."""
    temperature = float(w["temperature"])
    lab0, d = pairs["label_0"], pairs["delta"]
    is_tie = lab0 == 0.5
    nontie = ~is_tie
    ppu, spp = w["pairs_per_user"], w["pairs_per_session"]
    return {
        "stand_in": STAND_IN,
        "seed": seed,
        "image_size": int(w["image_size"]),
        "measure_size": MEASURE_SIZE,
        "jpeg_quality": int(w["jpeg_quality"]),
        "attributes": list(ATTRIBUTES),
        "attribute_mean": dict(zip(ATTRIBUTES, mean.tolist(), strict=True)),
        "attribute_std": dict(zip(ATTRIBUTES, std.tolist(), strict=True)),
        "types": [
            {
                "index": k,
                "name": type_names[k],
                "weights": dict(zip(ATTRIBUTES, weights[k].tolist(), strict=True)),
            }
            for k in range(len(type_names))
        ],
        "shared_weights": SHARED_WEIGHTS,
        "reward": "r_k(x,c) = weights[k] . z(x,c), z = (measure_attributes(x,c) - mean) / std "
        "(NaN -> 0); r_u = sum_k lambda_true_k(u) r_k",
        "labels": "Bradley-Terry: P(image_0 preferred) = "
        "sigmoid((r_u(x0) - r_u(x1)) / temperature); tie (0.5, 0.5) when "
        "|r_u(x0) - r_u(x1)| < tie_threshold",
        "temperature": temperature,
        "tie_threshold": tie_threshold,
        "tie_share_target": float(w["tie_share"]),
        "tie_share": float(is_tie.mean()),
        "user_mixture": {
            "distribution": "Dirichlet",
            "alpha": float(w["dirichlet_alpha"]),
            "pure_user_share_target": float(w["pure_user_share"]),
            "pure_users": int(pure.sum()),
        },
        "pairs_per_user": {
            "distribution": "discrete lognormal: n_u = min + round((n_pairs - n_users*min) * "
            "w_u / sum(w)), w_u = exp(sigma * z_u), z_u ~ N(0,1), capped at max "
            "(excess redistributed)",
            "sigma": float(ppu["sigma"]),
            "min": int(ppu["min"]),
            "max": int(ppu["max"]),
            "realised": _describe(realised_ppu),
        },
        "sessions": {
            "pairs_per_session": "1 + Poisson(mean - 1), capped at max; the preferred "
            "image stays, the other is replaced (as in the Pick-a-Pic app)",
            "mean": float(spp["mean"]),
            "max": int(spp["max"]),
            "n_sessions": len(sessions),
        },
        "vocabulary": {
            "object_colours": {k: list(v) for k, v in OBJECT_COLOURS.items()},
            "backgrounds": {k: list(v) for k, v in BACKGROUNDS.items()},
            "shapes": list(SHAPES),
            "style_words": STYLE_WORDS,
        },
        "prompts": {
            "pool": len(prompts),
            "used": int(len(np.unique(sessions.prompt))),
            "popularity": f"Zipf, exponent {float(w['prompt_zipf'])}",
            "style_word_rate": float(w["style_word_rate"]),
        },
        "wrong_colour_rate": float(w["wrong_colour_rate"]),
        "style_word_effect": {
            "definition": "mean attribute of images whose prompt has the word, "
            "minus the mean over images on the same background",
            **style_effect,
        },
        "n_users": len(realised_ppu),
        "n_pairs": len(lab0),
        "n_images": n_images,
        "oracle_accuracy_nontie": float(np.mean((d[nontie] > 0) == (lab0[nontie] == 1.0))),
        "bayes_accuracy_nontie_expected": float(
            np.mean(1.0 / (1.0 + np.exp(-np.abs(d[nontie]) / temperature)))
        ),
    }


def truth_users(
    user_ids: np.ndarray, lam: np.ndarray, realised_ppu: np.ndarray, pure: np.ndarray
) -> pd.DataFrame:
    """``users.parquet``: λ* per user, its dominant type, realised pairs, purity."""
    users = pd.DataFrame({"user_id": user_ids})
    for k in range(lam.shape[1]):
        users[f"lambda_true_{k}"] = lam[:, k]
    users["dominant_type"] = lam.argmax(1).astype(np.int64)
    users["n_pairs"] = realised_ppu.astype(np.int64)
    users["is_pure"] = pure
    return users


def build_world(params: dict[str, Any]) -> tuple[pa.Table, dict[str, Any], pd.DataFrame]:
    """Generate the world in memory: (pairs in the Pick-a-Pic v2 schema, world.json, users).

    Prompts (Zipf popularity) → users (λ*, pairs per user) → sessions → rendered images and
    their attributes → planted rewards → labels (ties calibrated) → timestamps → the table,
    the answer key and the users; every step draws from its own named random stream.
    """
    seed = int(params["seed"])
    w = params["world"]
    t0 = time.time()
    n_types = int(w["n_types"])
    if not 2 <= n_types <= len(TYPES):
        raise ValueError(f"world.n_types={n_types}: must be between 2 and {len(TYPES)}")

    prompts = prompt_pool(
        int(w["n_prompts"]), float(w["style_word_rate"]), rng(seed, "world", "prompts")
    )
    pop = 1.0 / np.arange(1, len(prompts) + 1) ** float(w["prompt_zipf"])
    pop /= pop.sum()
    user_ids, lam, pure, n_pairs_u = sample_users(w, n_types, seed)
    sessions = plan_sessions(n_pairs_u, pop, w["pairs_per_session"], seed)

    img_prompts = [prompts[i] for i in np.repeat(sessions.prompt, sessions.length + 1)]
    img_captions = [p.caption for p in img_prompts]
    n_images = len(img_prompts)
    log.info(
        "world: %d users, %d sessions, %d images to render at %dx%d",
        len(user_ids),
        len(sessions),
        n_images,
        w["image_size"],
        w["image_size"],
    )
    scenes = sample_scenes(img_prompts, float(w["wrong_colour_rate"]), rng(seed, "world", "scenes"))
    jpegs, attrs = render_images(
        scenes, img_captions, int(w["image_size"]), int(w["jpeg_quality"]), seed
    )

    mean, std = attribute_scale(attrs)
    type_names, weights = planted_weights(n_types)
    img_user = np.repeat(sessions.user, sessions.length + 1)
    img_reward = image_rewards(attrs, mean, std, weights, lam, img_user)
    pairs, tie_threshold = label_sessions(
        sessions, img_reward, float(w["temperature"]), float(w["tie_share"]), seed
    )
    pairs, created = timestamp_pairs(pairs, len(sessions), seed)
    uids = image_uids(n_images, rng(seed, "world", "uids"))
    pair_users = sessions.user[pairs["session"]]
    table = pickapic_table(pairs, created, user_ids[pair_users], img_captions, jpegs, uids)

    realised_ppu = np.bincount(pair_users, minlength=len(user_ids))
    meta = world_meta(
        seed,
        w,
        mean,
        std,
        type_names,
        weights,
        tie_threshold,
        pairs,
        pure,
        realised_ppu,
        sessions,
        prompts,
        style_word_effect(attrs, img_prompts),
        n_images,
    )
    users = truth_users(user_ids, lam, realised_ppu, pure)
    log.info(
        "world: %d pairs, %d users, %d prompts, tie share %.3f, oracle accuracy %.3f "
        "(non-tie), built in %.1fs",
        meta["n_pairs"],
        meta["n_users"],
        meta["prompts"]["used"],
        meta["tie_share"],
        meta["oracle_accuracy_nontie"],
        time.time() - t0,
    )
    return table, meta, users


def _describe(x: np.ndarray) -> dict[str, float]:
    return {
        "min": int(x.min()),
        "median": float(np.median(x)),
        "mean": float(x.mean()),
        "p90": float(np.percentile(x, 90)),
        "max": int(x.max()),
    }


def write_shards(
    table: pa.Table, out_dir: str | Path, rows_per_shard: int, row_group_size: int = 1000
) -> list[Path]:
    """Write ``shard-{i:05d}.parquet`` files atomically (the directory appears when complete)."""
    paths = []
    with atomic_dir(out_dir) as tmp:
        for i, start in enumerate(range(0, table.num_rows, rows_per_shard)):
            path = tmp / f"shard-{i:05d}.parquet"
            pq.write_table(
                table.slice(start, rows_per_shard),
                path,
                row_group_size=row_group_size,
                compression="snappy",
            )
            paths.append(Path(out_dir) / path.name)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="output directory for the parquet shards")
    parser.add_argument("--world-json", required=True, help="output: data/truth/world.json")
    parser.add_argument("--users", required=True, help="output: data/truth/users.parquet")


def run(args: argparse.Namespace) -> None:
    table, meta, users = build_world(args.params)
    paths = write_shards(table, args.shards, int(args.params["world"]["rows_per_shard"]))
    write_parquet(users, args.users)
    write_json(meta, args.world_json)
    log.info(
        "wrote %d shards to %s and the truth to %s",
        len(paths),
        args.shards,
        Path(args.world_json).parent,
    )


__all__ = ["build_world", "write_shards"]
