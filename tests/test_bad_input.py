"""Bad input, one case per test: a clear error naming the file, row or key and what was
expected, or a quarantine row with a reason counted in ``stats.json``; never a traceback from
deep inside a library, never a silent drop. Every data case checks that rows in = rows kept +
rows quarantined. ``docs/reliability.md`` lists these cases with the older ones."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from prefgen.core.config import ConfigError, check_unique_keys, validate
from prefgen.data.pickapic import MAX_IMAGE_PIXELS, ShardError
from prefgen.data.splits import load_pairs, split_pipe, split_ppd
from prefgen.user_model.imageio import decode_images
from prefgen.user_model.pasta import RewardModel, load_reward_model, save_reward_model

from tests.conftest import REPO, snakemake
from tests.data_world import make_clean, make_world, world_params
from tests.test_failed_writes import ENV
from tests.test_pickapic import SMALL, replace, shard_table, write_shards

PROFILE = REPO / "workflow" / "profiles" / "slurm"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("world"), world_params(**SMALL))


def smoke() -> dict:
    return yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def balanced(out: dict[str, Path], rows_in: int) -> dict:
    """stats.json, after checking every row in is either kept or quarantined (and counted)."""
    stats = json.loads(out["stats"].read_text())
    kept = pq.ParquetFile(out["pairs"]).metadata.num_rows
    quarantined = pq.ParquetFile(out["quarantine"]).metadata.num_rows
    assert stats["rows_read"] == rows_in == kept + quarantined
    assert stats["pairs"] == kept and stats["quarantined"] == quarantined
    assert sum(stats["quarantine_reasons"].values()) == quarantined
    return stats


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("seed", -1, r"key 'seed': -1 is less than the minimum of 0"),
        (
            "split.pipe.test_fraction",
            1.5,
            r"key 'split\.pipe\.test_fraction': 1\.5 is greater than "
            r"or equal to the maximum of 1",
        ),
    ],
)
def test_out_of_range_value_is_named(key: str, value: object, message: str) -> None:
    config = smoke()
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "/abs", ".hidden", "", "x y"])
def test_run_name_that_would_leave_results_is_refused(name: str) -> None:
    config = smoke()
    config["run_name"] = name
    with pytest.raises(ConfigError, match=r"key 'run_name': .* does not match"):
        validate(config)


def test_snakemake_refuses_a_run_name_outside_results_before_any_job(tmp_path: Path) -> None:
    path = tmp_path / "escape.yaml"
    path.write_text(yaml.safe_dump(smoke() | {"run_name": ".."}))
    proc = snakemake("-n", "all", "--configfile", str(path), check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "'..' does not match" in out
    assert "Building DAG of jobs" not in out


def test_ordinary_run_names_pass() -> None:
    for name in ("smoke", "paper_v2", "mini-2026.12", "x.."):
        validate(smoke() | {"run_name": name})


# --- profile ------------------------------------------------------------------------------------


def test_profile_that_is_not_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text((PROFILE / "config.yaml").read_text() + "jobs: [5,\n")
    with pytest.raises(ConfigError, match=rf"(?s){path}: not valid YAML: .*line \d+"):
        check_unique_keys([path])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("jobz: 5\n", "unrecognized arguments: --jobz=5"),
        ("jobs: [5,\n", "Couldn't parse config file"),
    ],
    ids=["unknown-key", "not-yaml"],
)
def test_snakemake_refuses_a_bad_profile_before_any_job(
    tmp_path: Path, line: str, message: str
) -> None:
    profile = tmp_path / "slurm"
    profile.mkdir()
    (profile / "config.yaml").write_text((PROFILE / "config.yaml").read_text() + line)
    proc = snakemake(
        "-n",
        "all",
        "--configfile",
        "config/smoke.yaml",
        "--profile",
        str(profile),
        check=False,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out
    assert "Building DAG of jobs" not in out


# --- shards -------------------------------------------------------------------------------------


def test_truncated_shard_names_the_file(world: dict[str, Path], tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "s", [shard_table(world, 0), shard_table(world, 1)])
    bad = shards / "shard-00001.parquet"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a download cut short
    with pytest.raises(ShardError, match=r"shard-00001\.parquet: not a readable parquet file"):
        make_clean(tmp_path, shards)
    assert not (tmp_path / "clean").exists() or not any((tmp_path / "clean").iterdir())


def test_non_parquet_file_named_parquet_names_the_file(tmp_path: Path) -> None:
    shards = tmp_path / "s"
    shards.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    (shards / "shard-00000.parquet").write_bytes(buf.getvalue())
    with pytest.raises(ShardError, match=r"shard-00000\.parquet: not a readable parquet file"):
        make_clean(tmp_path, shards)


def test_corrupt_page_behind_a_sound_footer_names_file_and_row(
    world: dict[str, Path], tmp_path: Path
) -> None:
    shards = tmp_path / "s"
    shards.mkdir()
    path = shards / "shard-00000.parquet"
    pq.write_table(shard_table(world, 0), path, compression="zstd", row_group_size=100)
    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(1).column(meta.schema.names.index("caption"))
    raw = bytearray(path.read_bytes())
    start = col.data_page_offset + 40  # inside the second row group's caption page
    raw[start : start + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=r"shard-00000\.parquet: unreadable after row 100"):
        make_clean(tmp_path, shards, batch_size=100)


def test_shard_error_from_the_command_is_one_line(world: dict[str, Path], tmp_path: Path) -> None:
    shards = tmp_path / "s"
    shards.mkdir()
    (shards / "shard-00000.parquet").write_text("not parquet")
    clean = tmp_path / "clean"
    params = {"data": {"source": "pickapic", "path": str(shards), "batch_size": 64}}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefgen.cli",
            "ingest",
            "--params",
            json.dumps(params),
            *[
                a
                for k in ("pairs", "images", "quarantine")
                for a in (f"--{k}", str(clean / f"{k}.parquet"))
            ],
            "--stats",
            str(clean / "stats.json"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("prefgen ingest: ") and "Traceback" not in proc.stderr
    assert "shard-00000.parquet: not a readable parquet file" in proc.stderr
    assert not clean.exists() or not any(clean.iterdir())


# --- rows ---------------------------------------------------------------------------------------


def test_nan_labels_are_quarantined_and_counted(world: dict[str, Path], tmp_path: Path) -> None:
    t = shard_table(world, 0)
    l0, l1 = t.column("label_0").to_pylist(), t.column("label_1").to_pylist()
    l0[7], l1[8] = float("nan"), float("nan")
    t = replace(replace(t, "label_0", l0), "label_1", l1)
    out = make_clean(tmp_path, write_shards(tmp_path / "s", [t]))
    stats = balanced(out, t.num_rows)
    q = pd.read_parquet(out["quarantine"]).set_index("row")
    assert q["reason"].to_dict() == {7: "inconsistent_labels", 8: "inconsistent_labels"}
    assert "nan" in q.loc[7, "detail"]
    assert "expected (1,0), (0,1) or (0.5,0.5)" in q.loc[7, "detail"]
    assert stats["quarantine_reasons"]["inconsistent_labels"] == 2


def test_duplicate_ranking_ids_are_quarantined_and_counted(
    world: dict[str, Path], tmp_path: Path
) -> None:
    t = shard_table(world, 0)
    shards = write_shards(tmp_path / "s", [t, t.slice(10, 3)])  # three rows sent twice
    out = make_clean(tmp_path, shards)
    stats = balanced(out, t.num_rows + 3)
    q = pd.read_parquet(out["quarantine"])
    assert list(q["reason"]) == ["duplicate_ranking_id"] * 3
    assert list(q["row"]) == [0, 1, 2] and q["source_file"].str.endswith("00001.parquet").all()
    assert stats["per_file"]["shard-00001.parquet"]["duplicate_ranking_id"] == 3


def _png(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, "PNG")
    return buf.getvalue()


def test_non_jpeg_image_bytes_are_kept_and_decode_to_rgb(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """A PNG where a JPEG was expected is still a picture of the pair: kept, and every reader
    decodes it to the same RGB pixels."""
    t = shard_table(world, 0)
    jpg0 = t.column("jpg_0").to_pylist()
    uids = t.column("image_0_uid").to_pylist()
    jpg0[5], uids[5] = _png(jpg0[5]), "a-png-image"
    t = replace(replace(t, "jpg_0", jpg0), "image_0_uid", uids)
    out = make_clean(tmp_path, write_shards(tmp_path / "s", [t]))
    stats = balanced(out, t.num_rows)
    assert stats["quarantined"] == 0 and stats["image_uid_conflicts"] == 0
    images = pd.read_parquet(out["images"]).set_index("image_uid")
    stored = images.loc["a-png-image", "jpg"]
    assert stored.startswith(b"\x89PNG")
    (rgb,) = decode_images([stored], ["row 5"])
    assert rgb.shape[2] == 3 and rgb.dtype == np.uint8


def _claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header (SOF0) claiming ``width`` x ``height`` pixels."""
    raw = bytearray(jpeg)
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    raw[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(raw)


def test_image_header_claiming_huge_dimensions_is_refused_before_decoding(
    world: dict[str, Path], tmp_path: Path
) -> None:
    t = shard_table(world, 0)
    jpg1 = t.column("jpg_1").to_pylist()
    side = int(MAX_IMAGE_PIXELS**0.5) + 1  # just over the reader's limit, under PIL's
    jpg1[2] = _claiming(jpg1[2], side, side)
    jpg1[9] = _claiming(jpg1[9], 60_000, 60_000)  # 3.6 G pixels: PIL's own limit trips too
    t = replace(t, "jpg_1", jpg1)
    out = make_clean(tmp_path, write_shards(tmp_path / "s", [t]))
    stats = balanced(out, t.num_rows)
    q = pd.read_parquet(out["quarantine"]).set_index("row")
    assert q["reason"].to_dict() == {2: "oversized_image", 9: "oversized_image"}
    assert q.loc[2, "detail"] == (
        f"jpg_1: header claims {side} x {side} = {side * side} pixels, "
        f"more than MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}; not decoded"
    )
    assert "DecompressionBombError" in q.loc[9, "detail"]
    assert stats["quarantine_reasons"]["oversized_image"] == 2


def test_user_image_given_to_score_that_is_corrupt_or_oversized_is_named(tmp_path: Path) -> None:
    """``prefgen score --image`` reads files a user hands in: the same header limit as ingest,
    and a broken file is a ValueError (one line from the command) naming it."""
    from prefgen.evaluation.score import load_rgb

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, "JPEG")
    good = tmp_path / "good.jpg"
    good.write_bytes(buf.getvalue())
    assert load_rgb(good).size == (16, 16)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(buf.getvalue()[:60])
    with pytest.raises(ValueError, match=rf"image '{broken}': not a decodable image"):
        load_rgb(broken)
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(_claiming(buf.getvalue(), 5000, 5000))
    with pytest.raises(ValueError, match=rf"image '{huge}': header claims 5000 x 5000 pixels"):
        load_rgb(huge)


# --- splits -------------------------------------------------------------------------------------


def _pairs(tmp_path: Path, extra: list[tuple[int, bool]]) -> pd.DataFrame:
    """16 users x 20 non-tie pairs over 30 captions, plus ``extra`` (user, is_tie) pairs."""
    rows = [(u, False) for u in range(1, 17) for _ in range(20)] + extra
    gen = np.random.default_rng(1)
    label0 = np.where([tie for _, tie in rows], 0.5, (gen.random(len(rows)) < 0.5).astype(float))
    df = pd.DataFrame(
        {
            "ranking_id": np.arange(len(rows), dtype=np.int64),
            "user_id": np.array([u for u, _ in rows], dtype=np.int64),
            "caption": [f"caption {i % 30}" for i in range(len(rows))],
            "image_0_uid": [f"a{i}" for i in range(len(rows))],
            "image_1_uid": [f"b{i}" for i in range(len(rows))],
            "label_0": label0,
            "label_1": 1.0 - label0,
            "is_tie": [tie for _, tie in rows],
        }
    )
    df.to_parquet(tmp_path / "pairs.parquet")
    return load_pairs(tmp_path / "pairs.parquet")


HELD = {"prompts": 2, "user_fraction": 0.0, "min_pairs": 4, "support_pairs": 4}


def test_users_with_only_ties_or_one_pair_are_counted_by_every_split(tmp_path: Path) -> None:
    """Decided at the split, not at ingest (ingest counts all-tie users in stats.json): PPD
    drops both users and counts them; PIPE keeps their pairs in train and counts them."""
    tie_user, single_user = 900, 901
    pairs = _pairs(tmp_path, [(tie_user, True)] * 5 + [(single_user, False)])
    ppd = split_ppd(
        pairs,
        {"seed": 0, "held_out": HELD, "ppd": {"val_fraction": 0.1, "test_caption_fraction": 0.2}},
    )
    dropped = ppd["stats"]["dropped"]
    assert dropped["users_with_fewer_than_4_nontie_pairs"] == 2
    assert dropped["pairs_of_users_with_fewer_than_4_nontie_pairs"] == 6
    assert not {tie_user, single_user} & {
        u for name in ("train", "val", "test_seen") for u in ppd[name]["user_id"]
    }
    pipe = split_pipe(pairs, {"seed": 0, "held_out": HELD, "pipe": {"test_fraction": 0.2}})
    stats = pipe["stats"]
    assert stats["users_with_only_ties"] == 1
    assert stats["users_without_test_pairs"] == 1  # the single-pair user: round(0.2 x 1) = 0
    train = pipe["train"]
    assert (train["user_id"] == tie_user).sum() == 5
    assert (train["user_id"] == single_user).sum() == 1
    n_kept = len(pipe["train"]) + len(pipe["test"])
    assert n_kept + sum(v for v in stats["dropped"].values() if isinstance(v, int)) == len(pairs)


def test_split_left_empty_by_the_config_is_an_error_naming_it(tmp_path: Path) -> None:
    pairs = _pairs(tmp_path, [])
    with pytest.raises(
        ConfigError,
        match=r"split_pipe: the config leaves split\(s\) \['test'\] "
        r"with no pairs; check split\.pipe\.test_fraction",
    ):
        split_pipe(pairs, {"seed": 0, "held_out": HELD, "pipe": {"test_fraction": 0.01}})
    with pytest.raises(ConfigError, match=r"split_ppd: .*\['test_seen'\].*test_caption_fraction"):
        split_ppd(
            pairs,
            {
                "seed": 0,
                "held_out": HELD,
                "ppd": {"val_fraction": 0.1, "test_caption_fraction": 0.01},
            },
        )
    with pytest.raises(ConfigError, match=r"split\.held_out\.prompts=30: the pairs have only 30"):
        split_pipe(
            pairs, {"seed": 0, "held_out": HELD | {"prompts": 30}, "pipe": {"test_fraction": 0.2}}
        )


# --- model files --------------------------------------------------------------------------------

CFG = {"dim": 4, "hidden": 3, "n_types": 2, "width": 5, "depth": 1, "interaction": False}


def saved_model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "pasta.safetensors"
    save_reward_model(RewardModel(**CFG), path, {"pi": [0.5, 0.5]})
    return path


def test_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = saved_model(tmp_path)
    load_reward_model(path)  # intact, it loads
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=rf"{path}: not a complete safetensors file"):
        load_reward_model(path)


def test_tensor_of_the_wrong_shape_names_file_tensor_and_shapes(tmp_path: Path) -> None:
    path = saved_model(tmp_path)
    from prefgen.core.io import save_tensors

    other = RewardModel(**CFG | {"n_types": 3})  # weights of a 3-type fit, labelled 2-type
    save_tensors(dict(other.state_dict()), path, metadata={"config": json.dumps(CFG)})
    with pytest.raises(
        ValueError,
        match=rf"{path}: tensor 'W' has shape \(3, 3\), the model "
        r"built from its config expects \(2, 3\)",
    ):
        load_reward_model(path)


def test_metadata_that_contradicts_the_config_is_refused(tmp_path: Path) -> None:
    path = saved_model(tmp_path)
    meta = path.with_suffix(".json")
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"config": CFG | {"hidden": 4}}))
    with pytest.raises(
        ValueError,
        match=rf"{path}: the config in its metadata .* differs from "
        r"pasta\.json's",
    ):
        load_reward_model(path)


# --- the case table -----------------------------------------------------------------------------


def test_every_test_the_reliability_page_names_exists() -> None:
    """docs/reliability.md names a test for every case; each must exist under that name."""
    import re

    short = {
        "tb": "test_bad_input.py",
        "tw": "test_failed_writes.py",
        "tp": "test_pickapic.py",
        "tc": "test_config.py",
    }
    text = (REPO / "docs" / "reliability.md").read_text()
    sources = {p.name: p.read_text() for p in (REPO / "tests").glob("test_*.py")}
    named = re.findall(r"`(?:(\w+)::|tests/(test_\w+\.py)::)?(test_\w+)(?:\[[^\]]*\])?`", text)
    assert len(named) >= 40
    for prefix, path, test in named:
        files = [short[prefix]] if prefix else [path] if path else list(sources)
        assert any(f"def {test}(" in sources[f] for f in files), f"{test} not in {files}"
