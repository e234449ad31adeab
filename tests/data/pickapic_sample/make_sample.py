"""Regenerate the committed Pick-a-Pic v2 sample (tests/data/pickapic_sample/*.parquet).

The sample lets `snakemake -n all --configfile config/paper.yaml` plan the paper DAG offline
(data.source: pickapic needs shards that exist). Its content comes from the synthetic world
generator (a stand-in: rendered scenes, model_0/model_1 = "prefgen-synthetic-renderer"), but its
files are exactly the Pick-a-Pic v2 layout: the 18 v2 columns in the hub's order and dtypes
(prefgen.data.pickapic_schema), real JPEG bytes in jpg_0/jpg_1, ties and multi-pair sessions.
Run from the repo root: `.venv/bin/python tests/data/pickapic_sample/make_sample.py`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from prefgen.data.pickapic_schema import PICKAPIC_V2_SCHEMA
from prefgen.data.world import build_world

HERE = Path(__file__).parent
ROWS_PER_SHARD = 160

PARAMS = {
    "seed": 2024,
    "world": {
        "image_size": 32,
        "n_users": 40,
        "n_pairs": 320,
        "n_prompts": 60,
        "prompt_zipf": 0.8,
        "style_word_rate": 0.5,
        "n_types": 4,
        "dirichlet_alpha": 0.3,
        "pure_user_share": 0.2,
        "temperature": 1.0,
        "tie_share": 0.10,
        "wrong_colour_rate": 0.2,
        "pairs_per_user": {"sigma": 1.2, "min": 1, "max": 60},
        "pairs_per_session": {"mean": 3.0, "max": 8},
        "jpeg_quality": 85,
        "rows_per_shard": ROWS_PER_SHARD,
    },
}


def main() -> None:
    """Write train-0000{0,1}-of-00002.parquet (the hub's shard naming) next to this script."""
    table, _, _ = build_world(PARAMS)
    if not table.schema.equals(PICKAPIC_V2_SCHEMA):
        raise SystemExit(f"world table does not match the v2 schema:\n{table.schema}")
    n_shards = -(-table.num_rows // ROWS_PER_SHARD)
    for i in range(n_shards):
        part = table.slice(i * ROWS_PER_SHARD, ROWS_PER_SHARD)
        path = HERE / f"train-{i:05d}-of-{n_shards:05d}.parquet"
        pq.write_table(part, path, compression="snappy")
        print(f"{path}: {part.num_rows} rows, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
