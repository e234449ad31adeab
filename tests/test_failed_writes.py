"""Writes that fail part-way leave nothing Snakemake would take as complete, and say where.

Each case runs in a child process: a file-size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ``
ignored so the write fails with EFBIG instead of killing the process) makes the write stop
half-way; a read-only folder refuses it from the start. Running as root, the child drops the
capabilities that let root write anywhere (``setpriv``), so the folder's mode is what counts.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO

ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'workflow'}{os.pathsep}{REPO}"}
#: Bytes a child may write to any one file: far less than each writer below produces.
LIMIT = 20_000

LIMITED = """\
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from prefgen.core.io import OutputWriteError
out = sys.argv[1]
try:
{body}
except OutputWriteError as exc:
    print(exc)
    sys.exit(3)
"""

WRITERS = {
    "write_parquet": (
        "out/table.parquet",
        """\
import numpy as np, pandas as pd
from prefgen.core.io import write_parquet
write_parquet(pd.DataFrame({"x": np.random.default_rng(0).random(50_000)}), out)""",
    ),
    "write_json": (
        "out/stats.json",
        """\
from prefgen.core.io import write_json
write_json({"x": list(range(50_000))}, out)""",
    ),
    "save_tensors": (
        "out/weights.safetensors",
        """\
import torch
from prefgen.core.io import save_tensors
save_tensors({"w": torch.rand(50_000)}, out, metadata={"step": "1"})""",
    ),
    "atomic_dir": (
        "out/model",
        """\
from prefgen.core.io import atomic_dir
with atomic_dir(out) as tmp:
    (tmp / "small.json").write_text("{}")
    (tmp / "weights.bin").write_bytes(bytes(100_000))""",
    ),
}


def run_limited(body: str, out: Path) -> subprocess.CompletedProcess[str]:
    script = LIMITED.format(limit=LIMIT, body=textwrap.indent(body, "    "))
    return subprocess.run(
        [sys.executable, "-c", script, str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


def unprivileged(cmd: list[str]) -> list[str]:
    """``cmd`` without root's right to write into folders whose mode forbids it."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root without setpriv: cannot make a folder unwritable")
    caps = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]


@pytest.mark.parametrize("writer", list(WRITERS))
def test_write_stopped_half_way_leaves_nothing_and_names_the_path(
    writer: str, tmp_path: Path
) -> None:
    rel, body = WRITERS[writer]
    out = tmp_path / rel
    proc = run_limited(body, out)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"{out}: could not be written" in proc.stdout
    assert "File too large" in proc.stdout
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], "no temporary left beside the output"


def test_failed_rewrite_keeps_the_previous_complete_version(tmp_path: Path) -> None:
    from prefgen.core.io import write_json

    out = tmp_path / "out" / "stats.json"
    write_json({"version": 1}, out)
    proc = run_limited(WRITERS["write_json"][1], out)
    assert proc.returncode == 3 and f"{out}: could not be written" in proc.stdout
    assert json.loads(out.read_text()) == {"version": 1}
    assert [p.name for p in out.parent.iterdir()] == ["stats.json"]


def _read_only_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    return path


def test_read_only_folder_is_named_and_left_empty(tmp_path: Path) -> None:
    folder = _read_only_dir(tmp_path / "ro")
    out = folder / "table.parquet"
    script = LIMITED.replace("resource.setrlimit", "# no size limit: ").format(
        limit=LIMIT, body=textwrap.indent(WRITERS["write_parquet"][1], "    ")
    )
    proc = subprocess.run(
        unprivileged([sys.executable, "-c", script, str(out)]),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"{out}: could not be written" in proc.stdout and "Permission denied" in proc.stdout
    assert list(folder.iterdir()) == []


def _pairs(path: Path) -> Path:
    """A small clean pairs table: 12 users x 24 non-tie pairs over 40 captions."""
    gen = np.random.default_rng(0)
    n = 12 * 24
    label0 = (gen.random(n) < 0.5).astype(float)
    pd.DataFrame(
        {
            "ranking_id": np.arange(n, dtype=np.int64),
            "user_id": np.repeat(np.arange(1, 13, dtype=np.int64), 24),
            "caption": [f"caption {i % 40}" for i in range(n)],
            "image_0_uid": [f"a{i}" for i in range(n)],
            "image_1_uid": [f"b{i}" for i in range(n)],
            "label_0": label0,
            "label_1": 1.0 - label0,
            "is_tie": np.zeros(n, dtype=bool),
        }
    ).to_parquet(path)
    return path


def test_split_command_into_read_only_folder_exits_non_zero_naming_the_path(
    tmp_path: Path,
) -> None:
    pairs = _pairs(tmp_path / "pairs.parquet")
    folder = _read_only_dir(tmp_path / "results")
    out = folder / "splits" / "pipe"
    params = {
        "seed": 0,
        "pipe": {"test_fraction": 0.2},
        "held_out": {"prompts": 2, "user_fraction": 0.0, "min_pairs": 4, "support_pairs": 4},
    }
    cmd = [
        sys.executable,
        "-m",
        "prefgen.cli",
        "split-pipe",
        "--params",
        json.dumps(params),
        "--pairs",
        str(pairs),
        "--out",
        str(out),
    ]
    proc = subprocess.run(unprivileged(cmd), capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("prefgen split-pipe: ")
    assert str(out / "train.parquet") in proc.stderr and "Permission denied" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(folder.iterdir()) == []
    # the same command into a writable folder succeeds: the failure above was the folder
    ok = tmp_path / "writable" / "splits" / "pipe"
    cmd[cmd.index(str(out))] = str(ok)
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p.name for p in ok.iterdir()} >= {"train.parquet", "test.parquet", "stats.json"}
