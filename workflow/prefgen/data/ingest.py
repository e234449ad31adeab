"""``prefgen ingest``: Pick-a-Pic v2 shards (real or the synthetic world's) -> clean tables.

Runs the reader (``prefgen.data.pickapic``) once over every shard and writes, streaming:
- ``pairs.parquet``: one row per good pair, no image bytes (``ranking_id, user_id, caption,
  image_0_uid, image_1_uid, label_0, label_1, is_tie, created_at``), the table the splits read;
- ``images.parquet``: one row per distinct image (``image_uid, jpg``), written a row group per
  record batch, so image bytes never pile up in memory;
- ``quarantine.parquet``: every rejected row (``source_file, row, ranking_id, reason, detail``);
- ``stats.json``: counts per file and per reason, users, ties, users whose pairs are all ties.
Both data sources take exactly this path (``data.source: synthetic | pickapic``).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from prefgen.core.io import atomic_path, write_json
from prefgen.core.logging import get_logger
from prefgen.data.pickapic import (
    REASONS,
    RowChecker,
    ShardError,
    check_shard,
    iter_batches,
    list_shards,
)

log = get_logger(__name__)

PAIRS_SCHEMA = pa.schema(
    [
        ("ranking_id", pa.int64()),
        ("user_id", pa.int64()),
        ("caption", pa.string()),
        ("image_0_uid", pa.string()),
        ("image_1_uid", pa.string()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("is_tie", pa.bool_()),
        ("created_at", pa.timestamp("ns")),
    ]
)
IMAGES_SCHEMA = pa.schema([("image_uid", pa.string()), ("jpg", pa.binary())])
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("row", pa.int64()),
        ("ranking_id", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


def _describe(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {}
    return {
        "min": int(x.min()),
        "median": float(np.median(x)),
        "p90": float(np.percentile(x, 90)),
        "max": int(x.max()),
        "mean": float(x.mean()),
    }


def ingest(
    source: str | Path,
    pairs_path: str | Path,
    images_path: str | Path,
    quarantine_path: str | Path,
    stats_path: str | Path,
    batch_size: int = 512,
    threads: int = 2,
    data_source: str = "pickapic",
) -> dict[str, Any]:
    """Read, validate and split the shards at ``source`` into the four clean outputs."""
    t0 = time.time()
    shards = list_shards(source)
    for path in shards:  # fail fast, before writing anything, on any bad shard
        check_shard(path)
    total_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    checker = RowChecker(threads=threads)
    quarantine: list[dict[str, Any]] = []
    per_file: dict[str, Counter[str]] = defaultdict(Counter)
    written_images: dict[str, bytes] = {}
    conflicts = 0
    per_user: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # user -> [pairs, ties]
    captions: set[str] = set()
    n_pairs = n_ties = 0

    with contextlib.ExitStack() as stack:
        tmp_pairs = stack.enter_context(atomic_path(pairs_path))
        tmp_images = stack.enter_context(atomic_path(images_path))
        pairs_writer = stack.enter_context(pq.ParquetWriter(tmp_pairs, PAIRS_SCHEMA))
        # JPEG bytes neither compress nor repeat: no dictionary, no compression, no statistics
        images_writer = stack.enter_context(
            pq.ParquetWriter(
                tmp_images,
                IMAGES_SCHEMA,
                use_dictionary=["image_uid"],
                compression={"image_uid": "snappy", "jpg": "none"},
                write_statistics=["image_uid"],
            )
        )
        bar = stack.enter_context(
            tqdm(total=total_rows, desc="ingest", unit="row", mininterval=5.0)
        )
        for batch in iter_batches(shards, batch_size):
            table = batch.table
            verdicts = checker.check(table)
            good = np.array([v is None for v in verdicts])
            rids = table.column("ranking_id").to_pylist()
            for i, v in enumerate(verdicts):
                per_file[batch.source_file]["rows"] += 1
                if v is not None:
                    per_file[batch.source_file][v[0]] += 1
                    quarantine.append(
                        {
                            "source_file": batch.source_file,
                            "row": batch.first_row + i,
                            "ranking_id": rids[i],
                            "reason": v[0],
                            "detail": v[1],
                        }
                    )
            if not good.any():
                bar.update(table.num_rows)
                continue
            kept = table if good.all() else table.filter(pa.array(good))
            l0 = pc.cast(kept.column("label_0"), pa.float64())
            l1 = pc.cast(kept.column("label_1"), pa.float64())
            is_tie = np.abs(l0.to_numpy() - l1.to_numpy()) < 1e-6
            pairs_writer.write_table(
                pa.table(
                    {
                        "ranking_id": pc.cast(kept.column("ranking_id"), pa.int64()),
                        "user_id": pc.cast(kept.column("user_id"), pa.int64()),
                        "caption": pc.cast(kept.column("caption"), pa.string()),
                        "image_0_uid": pc.cast(kept.column("image_0_uid"), pa.string()),
                        "image_1_uid": pc.cast(kept.column("image_1_uid"), pa.string()),
                        "label_0": l0,
                        "label_1": l1,
                        "is_tie": pa.array(is_tie),
                        "created_at": pc.cast(kept.column("created_at"), pa.timestamp("ns")),
                    },
                    schema=PAIRS_SCHEMA,
                )
            )
            # new images, as arrow slices of the batch (no Python copies of the bytes)
            kept_rows = np.flatnonzero(good)
            new_uids, new_jpgs = [], []
            for side in ("0", "1"):
                uids = kept.column(f"image_{side}_uid").to_pylist()
                take = []
                for j, uid in enumerate(uids):
                    digest = checker.digests[(int(kept_rows[j]), side)]
                    if uid in written_images:
                        conflicts += written_images[uid] != digest
                        continue
                    written_images[uid] = digest
                    new_uids.append(uid)
                    take.append(j)
                if take:
                    new_jpgs.append(pc.take(kept.column(f"jpg_{side}"), pa.array(take)))
            if new_uids:
                jpg = pa.chunked_array(
                    [c.cast(pa.binary()) for arr in new_jpgs for c in arr.chunks], pa.binary()
                )
                images_writer.write_table(
                    pa.table(
                        {"image_uid": pa.array(new_uids, pa.string()), "jpg": jpg},
                        schema=IMAGES_SCHEMA,
                    )
                )
            users = kept.column("user_id").to_pylist()
            for u, t in zip(users, is_tie.tolist(), strict=True):
                per_user[u][0] += 1
                per_user[u][1] += int(t)
            captions.update(kept.column("caption").to_pylist())
            n_pairs += kept.num_rows
            n_ties += int(is_tie.sum())
            bar.update(table.num_rows)

    with atomic_path(quarantine_path) as tmp:
        pq.write_table(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA), tmp)

    counts = np.array([v[0] for v in per_user.values()], dtype=np.int64)
    all_ties = sorted(u for u, (n, t) in per_user.items() if n == t)
    reasons = Counter(q["reason"] for q in quarantine)
    stats: dict[str, Any] = {
        "source": data_source,
        "shards": len(shards),
        "rows_read": total_rows,
        "pairs": n_pairs,
        "quarantined": len(quarantine),
        "quarantine_reasons": {r: reasons.get(r, 0) for r in REASONS},
        "users": len(per_user),
        "ties": n_ties,
        "tie_share": n_ties / n_pairs if n_pairs else 0.0,
        "prompts": len(captions),
        "images": len(written_images),
        "image_uid_conflicts": conflicts,
        "users_all_ties": len(all_ties),
        "users_all_ties_ids": all_ties[:50],
        "pairs_per_user": _describe(counts),
        "per_file": {Path(f).name: dict(c) for f, c in sorted(per_file.items())},
    }
    write_json(stats, stats_path)
    log.info(
        "ingest: %d rows from %d shard(s) -> %d pairs, %d images, %d quarantined %s; "
        "%d users (%d with only ties), tie share %.3f, %.1fs",
        total_rows,
        len(shards),
        n_pairs,
        len(written_images),
        len(quarantine),
        {r: c for r, c in reasons.items()},
        len(per_user),
        len(all_ties),
        stats["tie_share"],
        time.time() - t0,  # logged, not in stats.json: the same input gives the same bytes
    )
    if conflicts:
        log.warning(
            "ingest: %d image uids appeared with different bytes; kept the first", conflicts
        )
    if all_ties:
        log.warning(
            "ingest: %d user(s) have only ties (no preference to learn from): %s",
            len(all_ties),
            all_ties[:10],
        )
    if n_pairs == 0:
        raise ShardError(f"{source}: no usable pairs after quarantine ({dict(reasons)})")
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shards",
        default=None,
        help="directory, file or glob of Pick-a-Pic v2 shards (default: data.path)",
    )
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--quarantine", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--threads", type=int, default=2)


def run(args: argparse.Namespace) -> None:
    data = args.params["data"]
    source = args.shards or data.get("path")
    if not source:
        raise ShardError("ingest: no shards given (--shards) and data.path is not set")
    ingest(
        source,
        args.pairs,
        args.images,
        args.quarantine,
        args.stats,
        batch_size=int(data["batch_size"]),
        threads=args.threads,
        data_source=data["source"],
    )
