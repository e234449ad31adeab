"""Does the stand-in foundation render what its prompts ask for? Measured with the world's pixels.

The DPO stage can only move attributes the foundation renders with some variety and under
prompt control, so ``foundation`` checks two things on freshly generated images, using the
world's own pixel functions (``prefgen.data.attributes.measure_attributes``), never the renderer:

* **object colour**: the colour of a generated object is the palette colour whose caption gets
  the highest measured ``caption_fidelity`` (hue of the segmented object vs. the colour word);
  the rate at which it equals the prompt's colour is compared with chance (1 / palette size)
  and with the same measurement on the world's training images;
* **style words**: for the same prompts and seeds, adding "bright"/"dark" (and the other style
  words) must move the measured attribute the way it moves it in the training data.

Rows of ``tables/foundation_quality.csv``: ``check, attribute, generated, training_data,
chance, n, passes, model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefgen.core.io import write_table
from prefgen.core.seeding import rng

MODEL_LABEL = "tiny SDXL-architecture stand-in trained on the synthetic world"

#: style word -> (attribute it moves, direction in the world's renderer: +1 raises it)
STYLE_ATTRIBUTE: dict[str, tuple[str, int]] = {
    "bright": ("brightness", +1),
    "dark": ("brightness", -1),
    "vivid": ("saturation", +1),
    "pale": ("saturation", -1),
    "crisp": ("sharpness", +1),
    "soft": ("sharpness", -1),
}


def predicted_colours(images: Any, captions: list[str]) -> np.ndarray:
    """The palette colour each image's object shows (argmax of measured caption fidelity)."""
    from prefgen.data.attributes import OBJECT_COLOURS, caption_colour, measure_attributes

    names = list(OBJECT_COLOURS)
    scores = []
    for name in names:
        probe = []
        for cap in captions:
            colour = caption_colour(cap)
            head, sep, tail = cap.partition(" on ")
            probe.append(
                head.replace(colour, name, 1) + sep + tail if colour else f"a {name} object"
            )
        scores.append(measure_attributes(images, probe)["caption_fidelity"].to_numpy())
    return np.array(names)[np.nanargmax(np.nan_to_num(np.stack(scores, 1), nan=-1.0), axis=1)]


def quality_prompts(n_per_colour: int, seed: int) -> pd.DataFrame:
    """Plain prompts (every palette colour, random shape and contrasting background), each
    repeated with every style word; ``seed`` is shared by a prompt and its styled variants."""
    from prefgen.data.attributes import BACKGROUNDS, OBJECT_COLOURS
    from prefgen.data.render import SHAPES

    g = rng(seed, "foundation", "quality")
    rows = []
    for colour, rgb in OBJECT_COLOURS.items():
        bgs = [
            b for b, brgb in BACKGROUNDS.items() if np.linalg.norm(np.subtract(rgb, brgb)) >= 100
        ]
        for i in range(n_per_colour):
            shape, bg = SHAPES[g.integers(len(SHAPES))], bgs[g.integers(len(bgs))]
            s = int(g.integers(0, 2**31 - 1))
            for style in [None, *STYLE_ATTRIBUTE]:
                words = f"{style} {colour}" if style else colour
                rows.append(
                    {
                        "base": f"{colour}-{i}",
                        "colour": colour,
                        "style": style or "none",
                        "caption": f"a {words} {shape} on a {bg} background",
                        "seed": s,
                    }
                )
    return pd.DataFrame(rows)


def style_effects(attrs: pd.DataFrame, meta: pd.DataFrame) -> dict[str, float]:
    """Mean attribute change from plain to each style word (paired by ``base`` when possible)."""
    out = {}
    frame = pd.concat([meta.reset_index(drop=True), attrs.reset_index(drop=True)], axis=1)
    plain = frame[frame["style"] == "none"]
    for style, (attr, _) in STYLE_ATTRIBUTE.items():
        styled = frame[frame["style"] == style]
        if "base" in frame and styled["base"].notna().all():
            merged = styled.merge(plain, on="base", suffixes=("", "_plain"))
            out[style] = float((merged[attr] - merged[f"{attr}_plain"]).mean())
        else:
            out[style] = float(styled[attr].mean() - plain[attr].mean())
    return out


def foundation_quality(
    pipe: Any, cfg: dict[str, Any], seed: int, train_images: np.ndarray, train_captions: list[str]
) -> pd.DataFrame:
    """The quality table (see the module docstring) for a loaded pipeline."""
    import torch

    from prefgen.data.attributes import OBJECT_COLOURS, caption_colour, measure_attributes

    prompts = quality_prompts(int(cfg["prompts_per_colour"]), seed)
    images = []
    bs = int(cfg["batch_size"])
    for start in range(0, len(prompts), bs):
        chunk = prompts.iloc[start : start + bs]
        out = pipe(
            prompt=chunk["caption"].tolist(),
            generator=[torch.Generator().manual_seed(int(s)) for s in chunk["seed"]],
            num_inference_steps=int(cfg["num_inference_steps"]),
            guidance_scale=float(cfg["guidance_scale"]),
            output_type="np",
        )
        images.append((np.clip(out.images, 0, 1) * 255).round().astype(np.uint8))
    gen_images = np.concatenate(images)
    gen_attrs = measure_attributes(gen_images, prompts["caption"].tolist())

    # the same measurements on the world's training images, for reference
    pick = rng(seed, "foundation", "quality", "data").permutation(len(train_images))[:2000]
    data_caps = [train_captions[i] for i in pick]
    data_attrs = measure_attributes(train_images[pick], data_caps)
    data_style = [
        next((w for w in STYLE_ATTRIBUTE if cap.startswith(f"a {w} ")), "none") for cap in data_caps
    ]
    data_meta = pd.DataFrame({"style": data_style, "base": None})
    data_colour = np.array([caption_colour(c) for c in data_caps])

    chance = 1.0 / len(OBJECT_COLOURS)
    gen_rate = float(
        np.mean(
            predicted_colours(gen_images, prompts["caption"].tolist())
            == prompts["colour"].to_numpy()
        )
    )
    data_rate = float(np.mean(predicted_colours(train_images[pick], data_caps) == data_colour))
    rows = [
        {
            "check": "object colour matches caption",
            "attribute": "colour",
            "generated": gen_rate,
            "training_data": data_rate,
            "chance": chance,
            "n": len(prompts),
            "passes": gen_rate >= 3 * chance,
        }
    ]
    gen_fx = style_effects(gen_attrs, prompts[["style", "base"]])
    data_fx = style_effects(data_attrs, data_meta)
    for style, (attr, sign) in STYLE_ATTRIBUTE.items():
        rows.append(
            {
                "check": f"'{style}' in prompt: change in {attr}",
                "attribute": attr,
                "generated": gen_fx[style],
                "training_data": data_fx[style],
                "chance": 0.0,
                "n": int((prompts["style"] == style).sum()),
                "passes": bool(np.sign(gen_fx[style]) == sign),
            }
        )
    table = pd.DataFrame(rows)
    table["model"] = MODEL_LABEL
    return table


def write_quality(table: pd.DataFrame, path: str | Path) -> None:
    write_table(
        table,
        Path(path).with_suffix(""),
        caption="Foundation quality, measured with the world's pixel functions on "
        "generated images (stand-in model, synthetic world). Colour: rate at "
        "which the object's measured colour equals the prompt's (chance = 1/7). "
        "Style words: mean paired change of the attribute vs. the plain prompt.",
    )
