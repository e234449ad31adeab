"""The Pick-a-Pic v2 reader and `ingest`: schema errors, quarantine, streaming, statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefgen.data.pickapic import ShardError, iter_batches, list_shards

from tests.data_world import make_clean, make_world, world_params

#: A small world: 3 shards of 300 rows.
SMALL = {"n_users": 30, "n_pairs": 900, "n_prompts": 100, "rows_per_shard": 300}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("world"), world_params(**SMALL))


def shard_table(world: dict[str, Path], i: int = 0) -> pa.Table:
    return pq.read_table(world["shards"] / f"shard-{i:05d}.parquet")


def write_shards(dest: Path, tables: list[pa.Table]) -> Path:
    dest.mkdir(parents=True)
    for i, t in enumerate(tables):
        pq.write_table(t, dest / f"shard-{i:05d}.parquet")
    return dest


def replace(table: pa.Table, name: str, values: list, typ: pa.DataType | None = None) -> pa.Table:
    idx = table.schema.get_field_index(name)
    return table.set_column(idx, name, pa.array(values, typ or table.schema.field(name).type))


def test_clean_world_passes_whole(world: dict[str, Path], tmp_path: Path) -> None:
    out = make_clean(tmp_path, world["shards"])
    pairs = pd.read_parquet(out["pairs"])
    images = pd.read_parquet(out["images"])
    stats = json.loads(out["stats"].read_text())
    assert len(pairs) == 900 and stats["quarantined"] == 0 and stats["shards"] == 3
    assert list(pairs.columns) == [
        "ranking_id",
        "user_id",
        "caption",
        "image_0_uid",
        "image_1_uid",
        "label_0",
        "label_1",
        "is_tie",
        "created_at",
    ]
    assert images["image_uid"].is_unique
    assert set(images["image_uid"]) == set(pairs["image_0_uid"]) | set(pairs["image_1_uid"])
    assert stats["ties"] == int(pairs["is_tie"].sum()) == int((pairs["label_0"] == 0.5).sum())
    assert pq.ParquetFile(out["images"]).metadata.num_row_groups > 1, "images written streaming"
    assert (
        stats["users"] == 30 and stats["pairs_per_user"]["max"] > stats["pairs_per_user"]["median"]
    )


def test_missing_column_names_file_and_column(world: dict[str, Path], tmp_path: Path) -> None:
    bad = write_shards(
        tmp_path / "s", [shard_table(world, 0), shard_table(world, 1).drop(["label_1"])]
    )
    with pytest.raises(ShardError, match=r"shard-00001\.parquet.*label_1"):
        make_clean(tmp_path, bad)
    assert not (tmp_path / "clean" / "pairs.parquet").exists(), "nothing written on a bad shard"


def test_wrong_column_type_names_file_and_column(world: dict[str, Path], tmp_path: Path) -> None:
    t = shard_table(world)
    t = replace(t, "user_id", [str(u) for u in t.column("user_id").to_pylist()], pa.string())
    bad = write_shards(tmp_path / "s", [t])
    with pytest.raises(ShardError, match=r"shard-00000\.parquet.*'user_id'.*string.*int64"):
        make_clean(tmp_path, bad)


def test_zero_row_shard_names_the_file(world: dict[str, Path], tmp_path: Path) -> None:
    bad = write_shards(tmp_path / "s", [shard_table(world, 0), shard_table(world, 1).slice(0, 0)])
    with pytest.raises(ShardError, match=r"shard-00001\.parquet: shard has zero rows"):
        make_clean(tmp_path, bad)


def test_no_shards_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="no parquet shards"):
        list_shards(tmp_path / "nothing-*.parquet")


def test_bad_rows_are_quarantined_with_reasons(world: dict[str, Path], tmp_path: Path) -> None:
    t = shard_table(world, 1)
    jpg1 = t.column("jpg_1").to_pylist()
    jpg1[3] = jpg1[3][: len(jpg1[3]) // 2]  # a truncated download
    jpg1[4] = b"not a jpeg at all"
    l0, l1 = t.column("label_0").to_pylist(), t.column("label_1").to_pylist()
    l0[10], l1[10] = 0.7, 0.3  # neither a preference nor a tie
    l0[11], l1[11] = 1.0, 1.0
    l0[12] = None
    users = t.column("user_id").to_pylist()
    users[20] = None
    has_label = t.column("has_label").to_pylist()
    has_label[30] = False
    t = replace(replace(replace(t, "jpg_1", jpg1), "label_0", l0), "label_1", l1)
    t = replace(replace(t, "user_id", users), "has_label", has_label)
    shards = write_shards(tmp_path / "s", [shard_table(world, 0), t])
    out = make_clean(tmp_path, shards, batch_size=64)
    q = pd.read_parquet(out["quarantine"]).set_index("row")
    stats = json.loads(out["stats"].read_text())
    expected = {
        3: "undecodable_jpeg",
        4: "undecodable_jpeg",
        10: "inconsistent_labels",
        11: "inconsistent_labels",
        12: "inconsistent_labels",
        20: "missing_user",
        30: "unlabelled",
    }
    assert q["reason"].to_dict() == expected
    assert (q["source_file"].str.endswith("shard-00001.parquet")).all()
    assert q.loc[3, "detail"].startswith("jpg_1:") and "truncated" in q.loc[3, "detail"].lower()
    assert q.loc[10, "ranking_id"] == t.column("ranking_id")[10].as_py()
    assert stats["quarantined"] == 7 and stats["quarantine_reasons"]["undecodable_jpeg"] == 2
    assert stats["quarantine_reasons"]["inconsistent_labels"] == 3
    assert stats["per_file"]["shard-00001.parquet"]["missing_user"] == 1
    pairs = pd.read_parquet(out["pairs"])
    assert len(pairs) == 600 - 7 and stats["rows_read"] == len(pairs) + len(q) == 600
    assert not set(q["ranking_id"]) & set(pairs["ranking_id"])
    images = pd.read_parquet(out["images"])
    bad_uid = t.column("image_1_uid")[3].as_py()
    if bad_uid not in set(pairs["image_0_uid"]) | set(pairs["image_1_uid"]):
        assert bad_uid not in set(images["image_uid"])


def test_duplicate_ranking_id_and_identical_images_are_quarantined(
    world: dict[str, Path], tmp_path: Path
) -> None:
    t = shard_table(world, 0)
    uids = t.column("image_1_uid").to_pylist()
    uids[5] = t.column("image_0_uid")[5].as_py()
    t = replace(t, "image_1_uid", uids)
    shards = write_shards(tmp_path / "s", [t, shard_table(world, 0).slice(0, 2)])
    out = make_clean(tmp_path, shards)
    q = pd.read_parquet(out["quarantine"])
    assert q.groupby("reason").size().to_dict() == {
        "duplicate_ranking_id": 2,
        "identical_images": 1,
    }
    stats = json.loads(out["stats"].read_text())
    kept = len(pd.read_parquet(out["pairs"]))
    assert stats["rows_read"] == t.num_rows + 2 == kept + len(q) == stats["pairs"] + 3


def test_an_image_uid_with_different_bytes_is_counted_and_first_kept(
    world: dict[str, Path], tmp_path: Path
) -> None:
    t = shard_table(world, 0)
    uids, jpgs = t.column("image_1_uid").to_pylist(), t.column("jpg_1").to_pylist()
    other = next(j for j in range(1, len(uids)) if uids[j] != uids[0] and jpgs[j] != jpgs[0])
    uids[other] = uids[0]  # same uid, different (valid) picture
    t = replace(t, "image_1_uid", uids)
    out = make_clean(tmp_path, write_shards(tmp_path / "s", [t]))
    stats = json.loads(out["stats"].read_text())
    assert stats["image_uid_conflicts"] == 1 and stats["quarantined"] == 0
    images = pd.read_parquet(out["images"]).set_index("image_uid")
    assert images.loc[uids[0], "jpg"] == jpgs[0]


def test_users_with_only_ties_are_counted(world: dict[str, Path], tmp_path: Path) -> None:
    t = shard_table(world, 0)
    users = t.column("user_id").to_pylist()
    l0, l1 = t.column("label_0").to_pylist(), t.column("label_1").to_pylist()
    for i in (0, 1, 2):  # a new user who only ever answered "tie"
        users[i], l0[i], l1[i] = 999_999_001, 0.5, 0.5
    users[3] = 999_999_002  # and one with a single tie
    l0[3], l1[3] = 0.5, 0.5
    t = replace(replace(replace(t, "user_id", users), "label_0", l0), "label_1", l1)
    out = make_clean(tmp_path, write_shards(tmp_path / "s", [t]))
    stats = json.loads(out["stats"].read_text())
    assert {999_999_001, 999_999_002} <= set(stats["users_all_ties_ids"])
    assert stats["users_all_ties"] >= 2


def test_reader_streams_bounded_batches_of_projected_columns(world: dict[str, Path]) -> None:
    shards = list_shards(str(world["shards"] / "shard-*.parquet"))
    assert len(shards) == 3
    sizes, firsts = [], []
    for batch in iter_batches(shards, batch_size=64, columns=["ranking_id", "jpg_0"]):
        assert batch.table.column_names == ["ranking_id", "jpg_0"]
        sizes.append(batch.table.num_rows)
        firsts.append((Path(batch.source_file).name, batch.first_row))
    assert max(sizes) <= 64 and sum(sizes) == 900
    assert firsts[:2] == [("shard-00000.parquet", 0), ("shard-00000.parquet", 64)]
    assert np.all(np.array(sizes) > 0)
