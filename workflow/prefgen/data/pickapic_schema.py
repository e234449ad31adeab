"""The Pick-a-Pic v2 parquet schema: the one contract both the synthetic world and real shards meet.

Kept in its own module so the world writer and the reader share one definition and cannot drift.
"""

from __future__ import annotations

import pyarrow as pa

#: Column -> arrow type, in the order of the Pick-a-Pic v2 shards on the Hugging Face hub.
PICKAPIC_V2_SCHEMA = pa.schema(
    [
        ("are_different", pa.bool_()),
        ("best_image_uid", pa.string()),
        ("caption", pa.string()),
        ("created_at", pa.timestamp("ns")),
        ("has_label", pa.bool_()),
        ("image_0_uid", pa.string()),
        ("image_0_url", pa.string()),
        ("image_1_uid", pa.string()),
        ("image_1_url", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("model_0", pa.string()),
        ("model_1", pa.string()),
        ("ranking_id", pa.int64()),
        ("user_id", pa.int64()),
        ("num_example_per_prompt", pa.int64()),
    ]
)

PICKAPIC_V2_COLUMNS: tuple[str, ...] = tuple(PICKAPIC_V2_SCHEMA.names)
