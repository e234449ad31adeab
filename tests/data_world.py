"""Shared helpers for the data-stage tests: the smoke world, built once per test module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefgen.core.config import load_config
from prefgen.core.io import write_json, write_parquet
from prefgen.data.ingest import ingest
from prefgen.data.world import build_world, write_shards

REPO = Path(__file__).resolve().parents[1]


def smoke_config() -> dict[str, Any]:
    return load_config(REPO / "config" / "smoke.yaml")


def world_params(config: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """``{"seed", "world"}`` as the world rule passes them, with world keys overridden."""
    config = config or smoke_config()
    world = {**config["world"], **overrides}
    return {"seed": config["seed"], "world": world}


def make_world(root: Path, params: dict[str, Any]) -> dict[str, Path]:
    """Build a world under ``root`` exactly as the `world` rule does; return its paths."""
    table, meta, users = build_world(params)
    paths = {
        "shards": root / "data" / "world",
        "world_json": root / "data" / "truth" / "world.json",
        "users": root / "data" / "truth" / "users.parquet",
        "truth": root / "data" / "truth",
    }
    write_shards(table, paths["shards"], int(params["world"]["rows_per_shard"]))
    write_parquet(users, paths["users"])
    write_json(meta, paths["world_json"])
    return paths


def make_clean(root: Path, shards: Path | str, batch_size: int = 256) -> dict[str, Path]:
    """Run the reader over ``shards`` into ``root/clean``; return the output paths."""
    clean = root / "clean"
    paths = {k: clean / f"{k}.parquet" for k in ("pairs", "images", "quarantine")}
    paths["stats"] = clean / "stats.json"
    ingest(
        shards,
        paths["pairs"],
        paths["images"],
        paths["quarantine"],
        paths["stats"],
        batch_size=batch_size,
        threads=1,
        data_source="synthetic",
    )
    return paths
