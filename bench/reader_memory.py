"""Peak memory of the Pick-a-Pic reader on a ~2 GB shard set, against a naive full read.

Builds a synthetic Pick-a-Pic v2 shard set of ``--gb`` gigabytes in a temporary directory
(large noisy JPEGs, each row with its own image uids, many rows per shard in several row
groups, as the real shards are), then measures in separate processes, in the same run:
- ``reader``: the full ``ingest`` (schema checks, every JPEG decoded, quarantine, streaming
  writes of pairs and images) with ``--batch-size`` rows per batch;
- ``naive``: ``pyarrow.parquet.read_table`` of the whole directory, what a reader that loads
  everything first would hold.
Prints both peak RSS values and their ratio; exits 1 if the reader peaks above ``--limit-gb``.

    .venv/bin/python bench/reader_memory.py            # ~2 GB, a minute or two
    .venv/bin/python bench/reader_memory.py --gb 0.2   # quick look
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from prefgen.data.pickapic_schema import PICKAPIC_V2_SCHEMA


def noisy_jpegs(n: int, side: int, seed: int) -> list[bytes]:
    """``n`` distinct JPEGs of random-looking texture (noise compresses badly, as photos do)."""
    gen = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = gen.integers(0, 256, (side // 4, side // 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((side, side), Image.Resampling.BILINEAR)
        arr = np.asarray(img).astype(np.int16) + gen.integers(-40, 40, (side, side, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def build_shards(dest: Path, gb: float, rows_per_shard: int, row_group: int) -> dict[str, float]:
    """Write shards totalling about ``gb`` GB of image bytes; return the sizes written."""
    blobs = noisy_jpegs(24, 512, seed=0)
    mean_blob = float(np.mean([len(b) for b in blobs]))
    n_rows = int(gb * 1e9 / (2 * mean_blob))
    gen = np.random.default_rng(1)
    row = 0
    shard = 0
    while row < n_rows:
        n = min(rows_per_shard, n_rows - row)
        ids = np.arange(row, row + n)
        pick0, pick1 = gen.integers(0, len(blobs), n), gen.integers(0, len(blobs), n)
        uid0 = [str(uuid.UUID(int=2 * int(i) + 1)) for i in ids]
        uid1 = [str(uuid.UUID(int=2 * int(i) + 2)) for i in ids]
        label0 = gen.choice([1.0, 0.0, 0.5], n, p=[0.45, 0.45, 0.1])
        table = pa.table(
            {
                "are_different": pa.array(np.ones(n, bool)),
                "best_image_uid": pa.array(uid0),
                "caption": pa.array([f"prompt {i % 997}" for i in ids]),
                "created_at": pa.array(
                    np.datetime64("2023-05-01", "ns") + ids.astype("timedelta64[s]"),
                    pa.timestamp("ns"),
                ),
                "has_label": pa.array(np.ones(n, bool)),
                "image_0_uid": pa.array(uid0),
                "image_0_url": pa.array([""] * n),
                "image_1_uid": pa.array(uid1),
                "image_1_url": pa.array([""] * n),
                # trailing bytes after the JPEG end marker make every blob unique (as real
                # images are: no dictionary encoding can shrink the set) and decode the same
                "jpg_0": pa.array(
                    [blobs[k] + u.encode() for k, u in zip(pick0, uid0, strict=True)], pa.binary()
                ),
                "jpg_1": pa.array(
                    [blobs[k] + u.encode() for k, u in zip(pick1, uid1, strict=True)], pa.binary()
                ),
                "label_0": pa.array(label0),
                "label_1": pa.array(1.0 - label0),
                "model_0": pa.array(["bench"] * n),
                "model_1": pa.array(["bench"] * n),
                "ranking_id": pa.array(ids.astype(np.int64)),
                "user_id": pa.array((ids % 400).astype(np.int64)),
                "num_example_per_prompt": pa.array(np.ones(n, np.int64)),
            },
            schema=PICKAPIC_V2_SCHEMA,
        )
        pq.write_table(table, dest / f"shard-{shard:05d}.parquet", row_group_size=row_group)
        del table
        row += n
        shard += 1
    on_disk = sum(p.stat().st_size for p in dest.glob("*.parquet"))
    return {
        "rows": n_rows,
        "shards": shard,
        "image_gb": 2 * n_rows * mean_blob / 1e9,
        "disk_gb": on_disk / 1e9,
        "mean_jpeg_kb": mean_blob / 1e3,
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(mode: str, shards: str, out: str, batch_size: int) -> None:
    """Run one measured workload in this (fresh) process and print its peak RSS as JSON."""
    base = peak_rss_mb()
    t0 = time.time()
    if mode == "reader":
        from prefgen.data.ingest import ingest

        o = Path(out)
        stats = ingest(
            shards,
            o / "pairs.parquet",
            o / "images.parquet",
            o / "quarantine.parquet",
            o / "stats.json",
            batch_size=batch_size,
            threads=2,
            data_source="pickapic",
        )
        rows = stats["pairs"]
    else:
        table = pq.read_table(shards)
        rows = table.num_rows
    print(
        json.dumps(
            {
                "mode": mode,
                "peak_rss_mb": peak_rss_mb(),
                "start_rss_mb": base,
                "rows": rows,
                "seconds": round(time.time() - t0, 1),
            }
        )
    )


def measure(mode: str, shards: Path, out: Path, batch_size: int) -> dict[str, float]:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--shards",
            str(shards),
            "--out",
            str(out),
            "--batch-size",
            str(batch_size),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="image bytes in the shard set")
    ap.add_argument("--batch-size", type=int, default=512, help="reader rows per batch (cap)")
    ap.add_argument("--rows-per-shard", type=int, default=600)
    ap.add_argument("--row-group", type=int, default=100)
    ap.add_argument("--limit-gb", type=float, default=1.5)
    ap.add_argument("--child", choices=["reader", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--shards", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.shards, args.out, args.batch_size)
        return 0
    with tempfile.TemporaryDirectory(prefix="prefgen-bench-") as tmp:
        shards, out = Path(tmp) / "shards", Path(tmp) / "out"
        shards.mkdir()
        out.mkdir()
        t0 = time.time()
        built = build_shards(shards, args.gb, args.rows_per_shard, args.row_group)
        print(
            f"shard set: {built['rows']} rows in {built['shards']} shards, "
            f"{built['image_gb']:.2f} GB of JPEG bytes ({built['mean_jpeg_kb']:.0f} kB each), "
            f"{built['disk_gb']:.2f} GB on disk, built in {time.time() - t0:.0f}s"
        )
        reader = measure("reader", shards, out, args.batch_size)
        naive = measure("naive", shards, out, args.batch_size)
    ratio = reader["peak_rss_mb"] / naive["peak_rss_mb"]
    print(
        f"reader (ingest, batch {args.batch_size}): peak RSS {reader['peak_rss_mb']:.0f} MB "
        f"({reader['rows']} pairs, {reader['seconds']}s)"
    )
    print(
        f"naive  (pyarrow read_table of all)     : peak RSS {naive['peak_rss_mb']:.0f} MB "
        f"({naive['rows']} rows, {naive['seconds']}s)"
    )
    print(f"ratio reader/naive: {ratio:.2f}  (limit for the reader: {args.limit_gb} GB)")
    if reader["peak_rss_mb"] > args.limit_gb * 1024:
        print("FAIL: the reader exceeded the memory limit")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
