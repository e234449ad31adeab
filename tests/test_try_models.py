"""A reader's commands on a finished smoke run: ``prefgen generate`` draws the pixels the
``sample`` rule wrote, ``prefgen score`` gives the numbers the ``judge`` rule wrote.

Tolerances. Images: the sampler seeds every image's noise with its own generator and the Euler
scheduler adds none, so the only thing a reader's call can change is the batch the image is
drawn in. The same rows as the rule's call for that user (all of the user's evaluation rows,
in order) give bit-identical PNGs; an image drawn alone goes through kernels of another batch
shape, whose float sums may round differently: at most one 8-bit level per channel (measured on
the smoke run, 24 images drawn alone per method: pipe 1 level, ppd and Premier 0). Scores: the
scorer embeds other batches with the run's CLIP than the judge rule did, so float32 rounding
enters the pipe and population scores: absolute 1e-5 of the judge's largest |score| (measured
on every smoke image scored in batches of 7: at most 1.0e-5 absolute on scores up to 14, i.e.
under 1e-6 of the scale; relative errors reach 3e-5 only for scores near 0). The oracle reads
the pixels alone and is equal."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from prefgen.cli import main
from prefgen.core.config import ConfigError
from prefgen.evaluation.score import score_images
from prefgen.generation.generate import TrainedRun, generate_images, pair_up, write_images

pytestmark = pytest.mark.e2e

METHODS = ["base", "dpo", "pipe", "ppd", "premier"]
#: one 8-bit level: an image drawn in a batch of another shape (see the module docstring)
PIXEL_TOL = 1
#: of the judge's largest |score| in the file (see the module docstring)
SCORE_SCALE_TOL = 1e-5


def model_folder(run, method: str) -> str:
    """``base`` or ``<method>/seed<first training seed>``: the replicate generate draws."""
    return method if method == "base" else f"{method}/seed{TrainedRun.open(run).train_seeds()[0]}"


def selected(run, method: str) -> pd.DataFrame:
    """The sample index rows of ``method`` (first training seed) at the selected checkpoint."""
    index = pd.read_parquet(run / "samples" / model_folder(run, method) / "index.parquet")
    return index[index["step"] == TrainedRun.open(run).selected_step(method)]


def pixels(run, path: str) -> np.ndarray:
    return np.asarray(Image.open(run / path).convert("RGB"))


def a_user(rows: pd.DataFrame) -> int:
    return int(rows.loc[rows["own_embedding"], "user_id"].iloc[0])


@pytest.mark.parametrize("method", METHODS)
def test_generate_draws_the_sample_rules_pixels(smoke_results, method, one_torch_thread) -> None:
    run = smoke_results
    rows = selected(run, method)
    shared = method in ("base", "dpo")  # one input for everybody: the rule batches all rows
    if not shared:  # the rule's call for one user: all of that user's rows, in order
        rows = rows[rows["user_id"] == a_user(rows)]
    user = None if shared else int(rows["user_id"].iloc[0])
    images, record = generate_images(
        run, method, rows["caption"].tolist(), rows["seed"].tolist(), user_id=user
    )
    assert record["step"] == int(rows["step"].iloc[0])
    assert record["own_embedding"] == (not shared)
    for img, path in zip(images, rows["path"], strict=True):
        np.testing.assert_array_equal(img, pixels(run, path))


@pytest.mark.parametrize("method", ["pipe", "premier"])
def test_one_image_alone_is_within_one_level(smoke_results, method, one_torch_thread) -> None:
    run = smoke_results
    rows = selected(run, method)
    row = rows[rows["user_id"] == a_user(rows)].iloc[-1]
    images, _ = generate_images(
        run, method, [row["caption"]], [int(row["seed"])], user_id=int(row["user_id"])
    )
    diff = np.abs(images[0].astype(int) - pixels(run, row["path"]).astype(int))
    assert diff.max() <= PIXEL_TOL


def test_other_checkpoints_users_and_seeds_change_the_image(
    smoke_results, one_torch_thread
) -> None:
    run = smoke_results
    rows = selected(run, "pipe")
    users = rows.loc[rows["own_embedding"], "user_id"].unique()[:2]
    caption, seed = rows["caption"].iloc[0], int(rows["seed"].iloc[0])
    index = pd.read_parquet(run / "samples" / model_folder(run, "pipe") / "index.parquet")
    other_step = int(
        next(s for s in sorted(index["step"].unique()) if s != int(rows["step"].iloc[0]))
    )  # a checkpoint not selected
    draw = [
        generate_images(run, "pipe", [caption], [s], user_id=int(u), step=st)[0][0]
        for u, s, st in [
            (users[0], seed, None),
            (users[1], seed, None),
            (users[0], seed + 1, None),
            (users[0], seed, other_step),
        ]
    ]
    for other in draw[1:]:
        assert np.abs(draw[0].astype(int) - other.astype(int)).max() > 0


def test_generate_cli_writes_pngs_and_what_was_used(
    smoke_results, tmp_path, capsys, one_torch_thread
) -> None:
    run = smoke_results
    rows = selected(run, "pipe")
    user = a_user(rows)
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "--run",
                str(run),
                "--method",
                "pipe",
                "--user",
                str(user),
                "--prompt",
                "a teal square on a beige background",
                "--prompt",
                "a red circle on a grey background",
                "--seed",
                "7",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((out / "generate.json").read_text())
    assert record["step"] == TrainedRun.open(run).selected_step("pipe")
    assert record["sample"]["num_inference_steps"] == 8 and record["user_id"] == user
    assert [e["seed"] for e in record["images"]] == [7, 7]
    for entry in record["images"]:
        assert Image.open(out / entry["file"]).size == (16, 16)
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [str(out / e["file"]) for e in record["images"]]
    assert main(["score", "--run", str(run), "--generated", str(out / "generate.json")]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0] == "image,user_id,caption,pipe,population,oracle" and len(table) == 3


def test_generate_errors_name_what_is_wrong(smoke_results, tmp_path) -> None:
    run = smoke_results
    with pytest.raises(ConfigError, match="MANIFEST.json: missing"):
        TrainedRun.open(tmp_path)
    listed = r"method 'lora': not trained .*\(methods: base, dpo, pipe, ppd, premier\)"
    with pytest.raises(ConfigError, match=listed):
        generate_images(run, "lora", ["a red circle"], [0], user_id=1)
    with pytest.raises(ValueError, match="user -5 has no 'pipe' embedding"):
        generate_images(run, "pipe", ["a red circle"], [0], user_id=-5)
    with pytest.raises(ValueError, match="give a user id"):
        generate_images(run, "pipe", ["a red circle"], [0])
    with pytest.raises(ValueError, match="checkpoint"):
        generate_images(run, "pipe", ["a red circle"], [0], user_id=1, step=5)
    with pytest.raises(ValueError, match="3 prompts and 2 seeds"):
        pair_up(["a", "b", "c"], [1, 2])
    assert pair_up(["a", "b"], [4]) == (["a", "b"], [4, 4])
    assert (
        main(
            [
                "generate",
                "--run",
                str(tmp_path),
                "--method",
                "pipe",
                "--prompt",
                "x",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


@pytest.mark.parametrize("method", ["pipe", "ppd", "base"])
def test_score_matches_the_judge_rule(smoke_results, method) -> None:
    run = smoke_results
    judged = pd.read_parquet(run / "scores" / f"{model_folder(run, method)}.parquet")
    rows = judged.groupby("step").head(12)  # other batches than the rule's
    got = score_images(
        run, [run / p for p in rows["path"]], rows["caption"].tolist(), rows["user_id"].tolist()
    )
    assert list(got.columns) == ["user_id", "caption", "pipe", "population", "oracle"]
    for name in ("pipe", "population"):
        tol = SCORE_SCALE_TOL * float(np.abs(judged[name]).max())
        np.testing.assert_allclose(got[name], rows[name], rtol=0, atol=tol)
    np.testing.assert_array_equal(got["oracle"], rows["oracle"])


def test_score_errors_name_what_is_wrong(smoke_results) -> None:
    run = smoke_results
    path = run / selected(run, "pipe")["path"].iloc[0]
    with pytest.raises(KeyError, match="-5"):
        score_images(run, [path], ["a red circle"], [-5], ["pipe"])
    with pytest.raises(ValueError, match="unknown scorer"):
        score_images(run, [path], ["a red circle"], [1], ["hpsv2"])
    with pytest.raises(ValueError, match="1 images, 2 captions"):
        score_images(run, [path], ["a", "b"], [1])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        score_images(run, [run / "nope.png"], ["a"], [1], ["population"])


@pytest.mark.parametrize("method", ["pipe", "dpo"])
@torch.no_grad()
def test_stock_diffusers_loads_the_adapter(smoke_results, method, one_torch_thread) -> None:
    """results/README.md's snippet: a fresh pipeline from the run's foundation folder, the
    checkpoint's ip_adapter.safetensors through diffusers' load_ip_adapter, the user vector as
    ip_adapter_image_embeds; the sample rule's PNGs within one 8-bit level (smoke adapters have
    2 user tokens, written as 4: float sums in another order, see test_diffusers_format.py)."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    run = smoke_results
    rows = selected(run, method)
    user = int(rows["user_id"].iloc[0])
    rows = rows[rows["user_id"] == user]
    step = int(rows["step"].iloc[0])
    ckpt = run / "adapters" / model_folder(run, method) / f"checkpoint-{step}"
    pipe = StableDiffusionXLPipeline.from_pretrained(run / "models" / "foundation")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(
        str(ckpt), subfolder="", weight_name="ip_adapter.safetensors", image_encoder_folder=None
    )
    if method == "dpo":  # population DPO: one learned vector for everybody
        e = load_file(ckpt / "ip_adapter.safetensors")["user_embeds.constant"]
    else:
        users = load_file(run / "embeddings" / "pipe.safetensors")
        e = users["emb"][(users["user_ids"] == user).nonzero().item()][None]
    e = e[None]  # [1 image, 1 embedding, D]
    out = pipe(
        prompt=rows["caption"].tolist(),
        generator=[torch.Generator().manual_seed(int(s)) for s in rows["seed"]],
        ip_adapter_image_embeds=[torch.cat([e, e])],  # CFG: the same user both ways
        num_inference_steps=8,
        guidance_scale=3.0,
        output_type="np",
    ).images
    for img, path in zip(out, rows["path"], strict=True):
        ours = (np.clip(img, 0, 1) * 255).round().astype(int)
        assert np.abs(ours - pixels(run, path).astype(int)).max() <= PIXEL_TOL


def pickapic_pairs(train: pd.DataFrame, path) -> None:
    """A user's split pairs in Pick-a-Pic columns, every other pair with the images swapped.

    A tie keeps the direction the split gave it (the split randomises it, and fit_lambda fits
    it so), so the pairs are exactly what the workflow fitted the user's λ on."""
    swap = np.arange(len(train)) % 2 == 1
    w, lose = train["image_w_uid"].to_numpy(), train["image_l_uid"].to_numpy()
    pd.DataFrame(
        {
            "caption": train["caption"].to_numpy(),
            "image_0_uid": np.where(swap, lose, w),
            "image_1_uid": np.where(swap, w, lose),
            "label_0": np.where(swap, 0.0, 1.0),
            "label_1": np.where(swap, 1.0, 0.0),
            "user_id": 0,
        }
    ).to_parquet(path)


@pytest.fixture(scope="module")
def known_user(smoke_results):
    """A seen evaluation user and their PIPE training pairs."""
    run = smoke_results
    train = pd.read_parquet(run / "splits" / "pipe" / "train.parquet")
    rows = selected(run, "pipe")
    user = int(rows.loc[rows["user_group"] == "seen", "user_id"].iloc[0])
    mine = train[train["user_id"] == user]
    assert len(mine) >= 3
    return user, mine


def test_new_user_from_pairs_is_the_user_the_workflow_fitted(
    smoke_results, known_user, tmp_path, one_torch_thread
) -> None:
    """Onboarding a known user from their own training pairs gives back their λ and E_u, and
    the pipe images the sample rule drew for them, exactly: the same Δφ (the run's features)
    through the same per-user Newton solve (each user's sums run over their own pairs only),
    then the same sampler call."""
    from prefgen.core.io import load_tensors
    from prefgen.embeddings.onboard import onboard_pipe

    run = smoke_results
    user, train = known_user
    pickapic_pairs(train, tmp_path / "pairs.parquet")
    config = TrainedRun.open(run).config
    users, info = onboard_pipe(run, tmp_path / "pairs.parquet", user, config)
    fitted = pd.read_parquet(run / "user_model" / "lambda.parquet").set_index("user_id")
    lam = fitted.loc[user, [f"lambda_{k}" for k in range(len(info["lambda"]))]].to_numpy(float)
    np.testing.assert_array_equal(info["lambda"], lam)
    table = load_tensors(run / "embeddings" / "pipe.safetensors")
    row = int((table["user_ids"] == user).nonzero().item())
    assert torch.equal(users.emb[0], table["emb"][row])
    rows = selected(run, "pipe")
    rows = rows[rows["user_id"] == user]
    images, record = generate_images(
        run,
        "pipe",
        rows["caption"].tolist(),
        rows["seed"].tolist(),
        pairs=tmp_path / "pairs.parquet",
    )
    assert record["user_id"] == -1 and record["onboarded"]["n_pairs"] == len(train)
    for img, path in zip(images, rows["path"], strict=True):
        np.testing.assert_array_equal(img, pixels(run, path))
    # the onboarded user's λ also scores: as the known user it reproduces
    write_images(images, record, tmp_path / "out")
    assert (
        main(
            [
                "score",
                "--run",
                str(run),
                "--generated",
                str(tmp_path / "out" / "generate.json"),
                "--out",
                str(tmp_path / "scores.csv"),
            ]
        )
        == 0
    )
    new = pd.read_csv(tmp_path / "scores.csv")
    assert list(new.columns) == ["image", "user_id", "caption", "pipe", "population"]
    assert (new["user_id"] == -1).all()
    known = score_images(
        run,
        [tmp_path / "out" / e["file"] for e in record["images"]],
        rows["caption"].tolist(),
        [user] * len(rows),
        ["pipe", "population"],
    )
    np.testing.assert_allclose(new["pipe"], known["pipe"], rtol=1e-12)


def test_onboarding_errors_name_what_is_wrong(smoke_results, known_user, tmp_path) -> None:
    run = smoke_results
    _, train = known_user
    good = tmp_path / "pairs.parquet"
    pickapic_pairs(train, good)
    with pytest.raises(ValueError, match="method 'ppd' cannot onboard a user from pairs"):
        generate_images(run, "ppd", ["a red circle"], [0], pairs=good)
    ties = pd.read_parquet(good).assign(label_0=0.5, label_1=0.5)
    ties.to_parquet(tmp_path / "ties.parquet")
    with pytest.raises(ValueError, match="0 non-tie pair.*needs at least 1"):
        generate_images(run, "pipe", ["a red circle"], [0], pairs=tmp_path / "ties.parquet")
    unknown = pd.read_parquet(good)
    unknown.loc[1, "image_1_uid"] = "not-an-image"
    unknown.to_parquet(tmp_path / "unknown.parquet")
    with pytest.raises(ValueError, match=r"'not-an-image'\] \(rows \[1\]\) are not among"):
        generate_images(run, "pipe", ["a red circle"], [0], pairs=tmp_path / "unknown.parquet")
    bad = pd.read_parquet(good)
    bad.loc[2, "label_0"] = 0.7
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="row 2: labels \\(0.7, 0\\)"):
        generate_images(run, "pipe", ["a red circle"], [0], pairs=tmp_path / "bad.parquet")
    pd.read_parquet(good).drop(columns="label_1").to_parquet(tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match="missing column\\(s\\) \\['label_1'\\]"):
        generate_images(run, "pipe", ["a red circle"], [0], pairs=tmp_path / "cols.parquet")
    assert (
        main(
            [
                "generate",
                "--run",
                str(run),
                "--method",
                "dpo",
                "--pairs",
                str(good),
                "--prompt",
                "x",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
