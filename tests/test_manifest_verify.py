"""`python -m prefgen.evaluation.manifest verify RUN_DIR`: exit 0 on an intact bundle, non-zero
naming every changed, missing or added file otherwise (manifest built by the module's writer)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefgen.core.io import write_json
from prefgen.evaluation.manifest import MANIFEST_NAME, build_manifest, main

from tests.conftest import REPO

FILES = {
    "tables/win_rates.csv": "method,opponent,win_rate\npipe,base,0.7\n",
    "figures/curves.png": "png",
    "adapters/pipe/checkpoint-10/adapter.safetensors": "w" * 64,
    "cache/encoded/latents.safetensors": "excluded cache",
}
EXCLUDE = ["cache/*"]


def make_bundle(root: Path) -> Path:
    run = root / "run"
    for rel, text in FILES.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    config = {"run_name": "run", "scale": "smoke", "bundle": {"exclude": EXCLUDE}}
    write_json(build_manifest(run, config, EXCLUDE, cwd=root), run / MANIFEST_NAME)
    return run


def verify(run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as done:
        main(["verify", str(run)])
    return int(done.value.code), capsys.readouterr().out.splitlines()


def test_intact_bundle_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_bundle(tmp_path)
    (run / "cache" / "other.bin").write_text("excluded, so not a problem")
    assert verify(run, capsys) == (0, [f"{run}: intact"])


def test_changed_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_bundle(tmp_path)
    (run / "figures" / "curves.png").write_text("PNG")  # same size, other bytes
    assert verify(run, capsys) == (
        1,
        ["sha256 differs: figures/curves.png", f"{run}: 1 problem(s)"],
    )


def test_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_bundle(tmp_path)
    (run / "adapters" / "pipe" / "checkpoint-10" / "adapter.safetensors").unlink()
    assert verify(run, capsys) == (
        1,
        ["missing: adapters/pipe/checkpoint-10/adapter.safetensors", f"{run}: 1 problem(s)"],
    )


def test_added_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_bundle(tmp_path)
    (run / "tables" / "extra.csv").write_text("a\n1\n")
    assert verify(run, capsys) == (1, ["not in manifest: tables/extra.csv", f"{run}: 1 problem(s)"])


def test_module_command_names_each_problem(tmp_path: Path) -> None:
    """The documented command itself, as a user runs it: every problem at once, then clean."""
    run = make_bundle(tmp_path)
    cmd = [sys.executable, "-m", "prefgen.evaluation.manifest", "verify", str(run)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (run / "tables" / "win_rates.csv").write_text("method,opponent,win_rate\npipe,base,0.9\n")
    (run / "figures" / "curves.png").unlink()
    (run / "figures" / "new.png").write_text("new")
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert bad.returncode != 0
    assert set(bad.stdout.splitlines()) == {
        "sha256 differs: tables/win_rates.csv",
        "missing: figures/curves.png",
        "not in manifest: figures/new.png",
        f"{run}: 3 problem(s)",
    }
