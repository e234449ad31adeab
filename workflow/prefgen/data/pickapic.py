"""The Pick-a-Pic v2 reader: lazy, validating, quarantining. Used for real shards and the world.

Pick-a-Pic v2 is ~1M pairs with two JPEGs each, hundreds of GB: it never fits in memory, and
some of its rows are unusable (unlabelled, identical images, broken files). This reader
- finds the shards (a directory, a file or a glob) and checks each one's schema up front: a
  missing column or a wrong type is an error naming the file and the column, a shard with no
  rows is an error naming the file;
- streams record batches with pyarrow (column projection; only ``batch_size`` rows of image
  bytes are in memory at any time);
- checks every row and routes bad ones to a quarantine list with a reason instead of dropping
  them silently: missing user, labels that are neither a preference (1,0)/(0,1) nor a tie
  (0.5,0.5), unlabelled rows, identical images, missing caption or image uid, undecodable
  JPEG, duplicate ranking_id, an image whose header claims more than ``MAX_IMAGE_PIXELS``
  pixels (refused from the header alone, before any decoding could exhaust memory).

Each distinct image blob is decoded once (a uid seen again with the same bytes is not decoded
again), in a small thread pool (PIL releases the GIL while decoding).
"""

from __future__ import annotations

import glob
import hashlib
import io
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from prefgen.core.config import InputError
from prefgen.core.logging import get_logger
from prefgen.data.pickapic_schema import PICKAPIC_V2_COLUMNS, PICKAPIC_V2_SCHEMA

log = get_logger(__name__)

#: Columns the reader needs; the other v2 columns are checked for presence but never read.
READ_COLUMNS: tuple[str, ...] = (
    "ranking_id",
    "user_id",
    "caption",
    "created_at",
    "has_label",
    "are_different",
    "image_0_uid",
    "image_1_uid",
    "jpg_0",
    "jpg_1",
    "label_0",
    "label_1",
)

#: Quarantine reasons, in the order they are checked (a row gets the first that applies).
REASONS: tuple[str, ...] = (
    "missing_ranking_id",
    "duplicate_ranking_id",
    "missing_user",
    "missing_caption",
    "missing_image_uid",
    "identical_images",
    "unlabelled",
    "inconsistent_labels",
    "undecodable_jpeg",
    "oversized_image",
)

#: Largest image (width x height, from its header) the reader decodes. Pick-a-Pic's images are
#: at most about 1024 x 1024; a header claiming more is a broken or hostile file, and decoding
#: it could take gigabytes. PIL's own limit (``Image.MAX_IMAGE_PIXELS``, ~89M) is far larger.
MAX_IMAGE_PIXELS = 4096 * 4096

_LABEL_TOL = 1e-6


class ShardError(InputError):
    """A shard that cannot be read as Pick-a-Pic v2; the message names the file (and column)."""


def _type_ok(expected: pa.DataType, found: pa.DataType) -> bool:
    """Accept the encodings real shards use for each logical type (e.g. large_string, int32)."""
    if found == expected:
        return True
    if pa.types.is_string(expected):
        return pa.types.is_string(found) or pa.types.is_large_string(found)
    if pa.types.is_binary(expected):
        return pa.types.is_binary(found) or pa.types.is_large_binary(found)
    if pa.types.is_floating(expected):  # labels: any number
        return pa.types.is_floating(found) or pa.types.is_integer(found)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(found)
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(found) or pa.types.is_date(found)
    if pa.types.is_boolean(expected):
        return pa.types.is_boolean(found)
    return False


def list_shards(source: str | Path) -> list[Path]:
    """The parquet shards behind a directory, a single file or a glob, sorted by name."""
    src = str(source)
    path = Path(src)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(src, recursive=True) if Path(p).is_file())
    if not files:
        raise ShardError(
            f"{src}: no parquet shards found (expected a directory of *.parquet, "
            "a parquet file or a glob)"
        )
    return files


def check_shard(path: str | Path) -> pq.ParquetFile:
    """Open one shard and validate its schema and row count; raise :class:`ShardError` if bad."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardError(f"{path}: not a readable parquet file: {exc}") from exc
    schema = pf.schema_arrow
    missing = [c for c in PICKAPIC_V2_COLUMNS if c not in schema.names]
    if missing:
        raise ShardError(
            f"{path}: missing Pick-a-Pic v2 column(s) {missing}; "
            f"expected all of {list(PICKAPIC_V2_COLUMNS)}"
        )
    for name in PICKAPIC_V2_COLUMNS:
        expected = PICKAPIC_V2_SCHEMA.field(name).type
        found = schema.field(name).type
        if not _type_ok(expected, found):
            raise ShardError(f"{path}: column '{name}' has type {found}, expected {expected}")
    if pf.metadata.num_rows == 0:
        raise ShardError(f"{path}: shard has zero rows (a truncated download?)")
    return pf


@dataclass
class Batch:
    """A record batch with where it came from (for error messages and the quarantine)."""

    source_file: str
    first_row: int
    table: pa.Table


def rows_per_batch(pf: pq.ParquetFile, batch_size: int, max_batch_mb: float) -> int:
    """Rows per batch: ``batch_size``, fewer if the shard's rows are big (image bytes vary
    from kilobytes in the mini world to megabytes in Pick-a-Pic), so a batch stays under
    about ``max_batch_mb`` megabytes whatever the images."""
    meta = pf.metadata
    raw = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    per_row = max(raw / max(meta.num_rows, 1), 1.0)
    return max(1, min(batch_size, int(max_batch_mb * 1e6 / per_row)))


def iter_batches(
    shards: Sequence[str | Path],
    batch_size: int,
    columns: Sequence[str] = READ_COLUMNS,
    max_batch_mb: float = 64.0,
) -> Iterator[Batch]:
    """Stream record batches of ``columns`` from every shard (all validated before reading).

    No pre-buffering: pyarrow then holds one row group's column chunks and one batch at a
    time, so memory is bounded by the shards' row-group size and ``max_batch_mb``, never by
    the size of the data set.
    """
    for path in shards:
        check_shard(path)
    for path in shards:
        pf = pq.ParquetFile(path, pre_buffer=False)
        rows = rows_per_batch(pf, batch_size, max_batch_mb)
        start = 0
        batches = pf.iter_batches(batch_size=rows, columns=list(columns), use_threads=False)
        while True:
            try:
                rb = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as exc:  # a page corrupt past a sound footer
                raise ShardError(
                    f"{path}: unreadable after row {start} (a corrupt or truncated page?): {exc}"
                ) from exc
            yield Batch(str(path), start, pa.Table.from_batches([rb]))
            start += rb.num_rows
        pf.close()


def image_problem(data: bytes | pa.Buffer | None) -> tuple[str, str] | None:
    """None if ``data`` decodes as an image, else ``(reason, detail)``: ``oversized_image`` if
    its header claims more than ``MAX_IMAGE_PIXELS`` pixels (checked before decoding), else
    ``undecodable_jpeg`` (decoded in full, so truncation shows)."""
    if data is None or len(memoryview(data)) == 0:
        return ("undecodable_jpeg", "no image bytes")
    try:
        with Image.open(io.BytesIO(memoryview(data))) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                return (
                    "oversized_image",
                    f"header claims {width} x {height} = "
                    f"{width * height} pixels, more than MAX_IMAGE_PIXELS = "
                    f"{MAX_IMAGE_PIXELS}; not decoded",
                )
            if img.format == "JPEG":  # decode at 1/8 scale: every byte is still parsed
                img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
    except Image.DecompressionBombError as exc:  # PIL's own header check, past 2x its limit
        return ("oversized_image", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        return ("undecodable_jpeg", f"{type(exc).__name__}: {exc}")
    return None


def _digest(data: bytes | pa.Buffer) -> bytes:
    return hashlib.blake2b(data, digest_size=12).digest()


@dataclass
class RowChecker:
    """Checks rows batch by batch, remembering what it has seen (ranking ids, decoded blobs)."""

    threads: int = 2
    seen_rankings: set[int] = field(default_factory=set)
    good_blobs: dict[str, bytes] = field(default_factory=dict)  # uid -> digest of good bytes
    bad_blobs: dict[bytes, tuple[str, str]] = field(default_factory=dict)  # digest -> problem

    def check(self, table: pa.Table) -> list[tuple[str, str] | None]:
        """Per row: None if good, else (reason, detail)."""
        n = table.num_rows
        col = {
            c: table.column(c).to_pylist()
            for c in table.column_names
            if c not in ("jpg_0", "jpg_1")
        }
        out: list[tuple[str, str] | None] = [None] * n

        def flag(i: int, reason: str, detail: str) -> None:
            if out[i] is None:
                out[i] = (reason, detail)

        for i in range(n):
            rid = col["ranking_id"][i]
            if rid is None:
                flag(i, "missing_ranking_id", "ranking_id is null")
            elif rid in self.seen_rankings:
                flag(i, "duplicate_ranking_id", f"ranking_id {rid} seen before")
            else:
                self.seen_rankings.add(rid)
            if col["user_id"][i] is None:
                flag(i, "missing_user", "user_id is null")
            if not col["caption"][i]:
                flag(i, "missing_caption", "caption is null or empty")
            u0, u1 = col["image_0_uid"][i], col["image_1_uid"][i]
            if not u0 or not u1:
                flag(i, "missing_image_uid", "image_0_uid or image_1_uid is null or empty")
            elif u0 == u1 or col["are_different"][i] is False:
                flag(
                    i,
                    "identical_images",
                    f"image_0_uid == image_1_uid or are_different is false ({u0})",
                )
            if col["has_label"][i] is False:
                flag(i, "unlabelled", "has_label is false")
            l0, l1 = col["label_0"][i], col["label_1"][i]
            if not _labels_ok(l0, l1):
                flag(
                    i,
                    "inconsistent_labels",
                    f"(label_0, label_1) = ({l0}, {l1}); expected (1,0), (0,1) or (0.5,0.5)",
                )
        self._check_images(table, out, flag)
        return out

    def _check_images(
        self,
        table: pa.Table,
        out: list[tuple[str, str] | None],
        flag: Callable[[int, str, str], None],
    ) -> None:
        """Decode every blob not validated before (same uid + same bytes = already checked).

        Blobs are read as zero-copy arrow buffers, so checking a batch never holds a second
        copy of its image bytes. ``self.digests[(row, side)]`` keeps each blob's digest for the
        caller (to spot a uid that comes back with different bytes).
        """
        todo: dict[bytes, pa.Buffer] = {}
        cells = []
        self.digests: dict[tuple[int, str], bytes] = {}
        for side in ("0", "1"):
            uids = table.column(f"image_{side}_uid").to_pylist()
            col = table.column(f"jpg_{side}")
            blobs = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
            for i, uid in enumerate(uids):
                if out[i] is not None:
                    continue
                buf = blobs[i].as_buffer() if blobs[i].is_valid else None
                if buf is None or buf.size == 0:
                    flag(i, "undecodable_jpeg", f"jpg_{side}: no image bytes")
                    continue
                dig = _digest(buf)
                cells.append((i, side, uid, dig))
                if self.good_blobs.get(uid) != dig and dig not in self.bad_blobs:
                    todo[dig] = buf
        if todo:
            keys = list(todo)
            if self.threads > 1 and len(keys) > 8:
                with ThreadPoolExecutor(self.threads) as pool:
                    errors = list(pool.map(image_problem, (todo[k] for k in keys)))
            else:
                errors = [image_problem(todo[k]) for k in keys]
            for k, err in zip(keys, errors, strict=True):
                if err is not None:
                    self.bad_blobs[k] = err
        for i, side, _uid, dig in cells:
            if dig in self.bad_blobs:
                reason, detail = self.bad_blobs[dig]
                flag(i, reason, f"jpg_{side}: {detail}")
        for i, side, uid, dig in cells:
            if out[i] is None:
                self.good_blobs.setdefault(uid, dig)
                self.digests[(i, side)] = dig


def _labels_ok(l0: float | None, l1: float | None) -> bool:
    if l0 is None or l1 is None or np.isnan(l0) or np.isnan(l1):
        return False
    for a, b in ((1.0, 0.0), (0.0, 1.0), (0.5, 0.5)):
        if abs(l0 - a) < _LABEL_TOL and abs(l1 - b) < _LABEL_TOL:
            return True
    return False
