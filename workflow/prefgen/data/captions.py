"""The synthetic world's training captions for the stand-in CLIP: what an image *shows*.

Real CLIP models learn from web alt-text, which often says how an image looks (dark, blurry,
close-up) and names what is drawn rather than what was asked for. The world's captions only
name the prompt's object, colour and background, so the ``clip`` stage (``source: train``)
trains on captions rewritten here from the pixels: the colour word the object actually has
(:func:`recaption`, :func:`observed_colours`) and a word per configured attribute in its low or
high quantile bin (:func:`describe`, :func:`graded_words`), measured with the world's pixel
functions (``prefgen.data.attributes``), never the renderer's latent scene.
:func:`training_captions` is what ``clip`` calls. Only CLIP *training* sees these captions:
the features and every later stage embed the plain captions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from prefgen.core.seeding import rng

#: Words appended to a training caption for an image in the low / high tercile of an attribute.
DESCRIPTOR_WORDS: dict[str, tuple[str, str]] = {
    "brightness": ("dark", "bright"),
    "saturation": ("muted", "saturated"),
    "warmth": ("cool", "warm"),
    "contrast": ("flat", "contrasty"),
    "sharpness": ("blurry", "sharp"),
    "colourfulness": ("plain", "colourful"),
    "object_size": ("small", "large"),
}


#: Descriptor that recaptions with the object's colour as the pixels show it.
OBJECT_COLOUR = "object_colour"
#: Descriptor saying how true the object's colour is to the colour it is called (hue + saturation).
COLOUR_PURITY = "colour_purity"
#: Its low / high words ("an off-colour red star", "a true-colour red star").
COLOUR_PURITY_WORDS = ("off-colour", "true-colour")
#: Mean object saturation below which the object is called "grey" (no palette colour).
GREY_SATURATION = 0.15


def observed_colours(images: np.ndarray) -> list[str]:
    """The colour word of each image's object as seen: the palette hue nearest its mean colour.

    A captioner describing the picture (not the prompt) would say "a blue star" when the
    generator drew a blue star for "a red star". Uses the world's pixel functions for the object
    mask and the palette (``prefgen.data.attributes``), never the renderer's latent scene; an
    unsaturated object is "grey".
    """
    from matplotlib.colors import rgb_to_hsv

    from prefgen.data.attributes import PALETTE_HUES, object_mask, to_float_batch

    x = to_float_batch(images)
    w = object_mask(x)[..., None].astype(np.float32)
    mean_rgb = (x * w).sum((1, 2)) / np.maximum(w.sum((1, 2)), 1.0)
    hsv = rgb_to_hsv(np.clip(mean_rgb, 0.0, 1.0))
    names = sorted(PALETTE_HUES)
    hues = np.array([PALETTE_HUES[n] for n in names])
    dh = np.abs(hsv[:, :1] * 360.0 - hues[None, :])
    nearest = np.minimum(dh, 360.0 - dh).argmin(1)
    return [
        "grey" if s < GREY_SATURATION else names[k] for s, k in zip(hsv[:, 1], nearest, strict=True)
    ]


def describe(
    images: np.ndarray, captions: Sequence[str], attributes: Sequence[str], levels: int = 3
) -> list[str]:
    """Training captions with visual descriptors: "a red star on a grey background, large blurry".

    Web alt-text, which real CLIP models learn from, often says how an image looks (dark,
    blurry, close-up), and so real CLIP embeddings encode such properties. The world's captions
    only name the object, colour and background; appending a word for each listed attribute in
    its low or high tercile (measured on the pixels by ``prefgen.data.attributes``) gives the
    stand-in CLIP the same kind of supervision. ``object_colour`` recaptions: the caption's
    colour word becomes the colour the object actually has (:func:`observed_colours`,
    :func:`recaption`), so the image embedding encodes what was drawn and a prompt asking for
    another colour ends up far from it (CLIP similarity then measures caption fidelity, as a
    real CLIP's does). Only CLIP *training* sees these captions: the features and every later
    stage embed the plain captions.
    """
    if not attributes:
        return [str(c) for c in captions]
    from prefgen.data.attributes import measure_attributes

    special = {OBJECT_COLOUR, COLOUR_PURITY}
    unknown = sorted(set(attributes) - set(DESCRIPTOR_WORDS) - special)
    if unknown:
        raise ValueError(
            f"clip.train.descriptors: unknown attribute(s) {unknown}; expected some "
            f"of {sorted(DESCRIPTOR_WORDS) + sorted(special)}"
        )
    if levels not in (3, 5):
        raise ValueError(f"clip.train.descriptor_levels: expected 3 or 5, got {levels!r}")
    captions = [str(c) for c in captions]
    if OBJECT_COLOUR in attributes:
        captions = [
            recaption(c, seen) for c, seen in zip(captions, observed_colours(images), strict=True)
        ]
    words: list[list[str]] = [[] for _ in range(len(captions))]
    graded = [a for a in attributes if a not in special]
    values = measure_attributes(images, captions) if graded or COLOUR_PURITY in attributes else None
    table = {a: DESCRIPTOR_WORDS[a] for a in graded}
    if COLOUR_PURITY in attributes:  # fidelity to the (recaptioned) colour word: hue + saturation
        table[COLOUR_PURITY] = COLOUR_PURITY_WORDS
    for attr, (low_word, high_word) in table.items():
        key = "caption_fidelity" if attr == COLOUR_PURITY else attr
        for i, word in enumerate(graded_words(values[key].to_numpy(), low_word, high_word, levels)):
            if word:
                words[i].append(word)
    return [f"{c}, {' '.join(w)}" if w else c for c, w in zip(captions, words, strict=True)]


def graded_words(v: np.ndarray, low_word: str, high_word: str, levels: int) -> list[str]:
    """One word per value from its quantile bin: 3 levels = terciles (low, -, high); 5 levels =
    quintiles ("very low", "low", -, "high", "very high"), so the caption also says how much.
    A value equal to a bin edge goes to the bin nearer the middle. NaN values get no word."""
    qs = np.nanquantile(v, np.arange(1, levels) / levels)
    names = (
        [low_word, "", high_word]
        if levels == 3
        else [f"very {low_word}", low_word, "", high_word, f"very {high_word}"]
    )
    mid = levels // 2
    out = []
    for x in v:
        if np.isnan(x):
            out.append("")
            continue
        right = int(np.searchsorted(qs, x, side="right"))
        out.append(names[right if right <= mid else max(mid, int(np.searchsorted(qs, x)))])
    return out


def training_captions(
    images: np.ndarray, captions: Sequence[str], train: dict[str, Any], seed: int
) -> list[str]:
    """The captions CLIP trains on: :func:`describe` with the configured descriptors, except a
    seeded ``plain_share`` of rows that keep only the recaption (no style words).

    The features embed the plain prompts ("a pale red star on a grey background"); if every
    training caption carried style words, those prompts would sit outside what the text tower
    was trained on. Mixing in plain (recaptioned) captions teaches it the prompts' own form.
    """
    attrs = list(train["descriptors"])
    out = describe(images, captions, attrs, int(train.get("descriptor_levels", 3)))
    share = float(train.get("plain_share", 0.0))
    if share > 0:
        plain = describe(images, captions, [a for a in attrs if a == OBJECT_COLOUR])
        pick = rng(seed, "clip", "plain_captions").random(len(out)) < share
        out = [p if k else o for o, p, k in zip(out, plain, pick, strict=True)]
    return out


def recaption(caption: str, seen: str) -> str:
    """``caption`` with its object colour word replaced by the colour the object has (``seen``).

    "a pale red star on a grey background" drawn blue becomes "a pale blue star on a grey
    background": the caption describes the picture, as alt-text does, rather than the prompt.
    Captions naming no palette colour are returned unchanged.
    """
    from prefgen.data.attributes import caption_colour

    asked = caption_colour(caption)
    if asked is None or asked == seen:
        return caption
    head, sep, tail = caption.partition(" on ")
    return re.sub(rf"\b{asked}\b", seen, head, count=1) + sep + tail
