"""Atomic file writes and the table formats every stage shares.

Snakemake treats an existing output as done. A rule killed half-way must therefore never leave
a partial file at the output path: everything is written to a temporary sibling and renamed
into place (rename is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd


class OutputWriteError(OSError):
    """An output that could not be written (disk full, file too large, read-only folder).

    The message names the final path; nothing is left at that path, so Snakemake reruns the job.
    """


#: errnos that mean "this output cannot be written here" (too large, disk or quota full,
#: read-only or forbidden folder, device error); other OSErrors inside a write block (a missing
#: input, say) pass through as they are.
WRITE_ERRNOS = frozenset(
    {errno.EFBIG, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def _write_failed(target: Path, exc: BaseException) -> OutputWriteError:
    if isinstance(exc, OutputWriteError):
        return exc
    return OutputWriteError(
        f"{target}: could not be written ({exc}); nothing was left at this path"
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A failed write (an :class:`OSError` of ``WRITE_ERRNOS``: a full disk, a file-size limit, a
    read-only folder) is raised as :class:`OutputWriteError` naming ``path``; any other
    exception passes through unchanged.
    Either way the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _write_failed(target, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600; a handed-on bundle needs the usual mode
            tmp_path.chmod(0o666 & ~_umask())
        os.replace(tmp_path, target)
    except OSError as exc:
        if isinstance(exc, OutputWriteError) or exc.errno in WRITE_ERRNOS:
            raise _write_failed(target, exc) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only on success.

    Failed writes are raised as :class:`OutputWriteError` naming ``path``, as in
    :func:`atomic_path`.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise _write_failed(target, exc) from exc
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        if isinstance(exc, OutputWriteError) or exc.errno in WRITE_ERRNOS:
            raise _write_failed(target, exc) from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a DataFrame to parquet atomically, without the pandas index."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON atomically with sorted keys, so identical content gives identical bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


#: Words that mark a metadata key as a wall-clock value (a run time, a date, a file's mtime):
#: such a value differs on every run, so a weight file holding it could never be byte-identical.
WALL_CLOCK_WORDS = ("time", "seconds", "elapsed", "duration", "date", "wall", "clock")


def save_tensors(
    tensors: dict[str, Any], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Save a dict of torch tensors as safetensors, atomically and byte-deterministically.

    The same tensors and metadata always give the same bytes, whatever the dict orders:
    safetensors orders the tensors itself, but it keeps the metadata in a hash map whose order
    changes from call to call, so the header is rewritten with the metadata keys sorted. Keys
    that name a wall-clock value (``WALL_CLOCK_WORDS``) are refused: run times go to a json or
    log beside the weights. Never pickles.
    """
    from safetensors.torch import save_file

    metadata = dict(metadata or {})
    for key in metadata:
        words = key.lower().replace("-", "_").split("_")
        if any(word in WALL_CLOCK_WORDS for word in words):
            raise ValueError(
                f"{path}: safetensors metadata key '{key}' is a wall-clock value; "
                "weight files must be reproducible, write it to a json or log "
                "beside them"
            )
        if not isinstance(metadata[key], str):
            raise TypeError(
                f"{path}: safetensors metadata '{key}' must be a string, got "
                f"{type(metadata[key]).__name__}"
            )
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(contiguous, str(tmp), metadata=metadata or None)
        except Exception as exc:  # safetensors reports I/O errors as its own SafetensorError
            if "I/O error" not in str(exc):
                raise
            raise _write_failed(Path(path), exc) from exc
        _sort_safetensors_metadata(tmp)


def _sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors header in place with its ``__metadata__`` keys sorted.

    The header is 8 bytes of little-endian length, then that many bytes of JSON padded with
    spaces; tensor offsets count from the end of the header, so a header of the same length
    leaves the data untouched. Sorting only reorders keys, so the compact JSON has the same length.
    """
    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        meta = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            raise RuntimeError(
                f"{path}: sorted safetensors header is {len(text)} bytes, longer "
                f"than the {size} written; cannot rewrite it in place"
            )
        fh.seek(8)
        fh.write(text + b" " * (size - len(text)))


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tensors of a safetensors file; a truncated or corrupt file is a ``ValueError``
    naming it (a missing one is ``FileNotFoundError``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise ValueError(
            f"{path}: not a complete safetensors file ({exc}); delete it and rerun "
            "the rule that writes it"
        ) from exc


def tensor_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file (empty if it has none)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a complete safetensors file ({exc})") from exc


def check_state_shapes(module: Any, state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Raise ``ValueError`` naming ``path`` and the first tensor of ``state`` whose shape differs
    from ``module``'s (a checkpoint written under another config), before loading it."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for name, tensor in sorted(state.items()):
        if name in expected and tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, the "
                f"model built from its config expects {expected[name]}; the file "
                "was written under another config"
            )


def write_table(
    df: pd.DataFrame, stem: str | os.PathLike[str], caption: str = "", float_digits: int = 4
) -> list[Path]:
    """Write one result table as ``stem.csv``, ``stem.md`` and ``stem.tex``.

    The CSV keeps full precision (it is the machine-readable contract); the Markdown and LaTeX
    versions are rounded for reading. ``caption`` goes under the Markdown table and into the
    LaTeX caption, so stand-in results are labelled wherever the table is shown.
    """
    stem = Path(stem)
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    with atomic_path(paths[0]) as tmp:
        df.to_csv(tmp, index=False)
    rounded = df.copy()
    for col in rounded.select_dtypes("float").columns:
        rounded[col] = rounded[col].round(float_digits)
    with atomic_path(paths[1]) as tmp:
        text = rounded.to_markdown(index=False)
        if caption:
            text += f"\n\n{caption}\n"
        tmp.write_text(text + "\n")
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(
            rounded.to_latex(
                index=False, caption=caption or None, float_format=f"%.{float_digits}f", escape=True
            )
        )
    return paths
