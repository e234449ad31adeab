"""Shared test setup: offline hubs, repo root, a workflow copy for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workflow_copy import copy_workflow

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Rules call `prefgen ...`; make the venv's entry points visible to Snakemake's shell jobs.
os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def judges_python() -> str | None:
    """The judges environment's python: ``PREFGEN_JUDGES_PYTHON`` (``make test`` exports it after
    building ``.venv-judges``), else this checkout's ``.venv-judges`` if built; None without one."""
    given = os.environ.get("PREFGEN_JUDGES_PYTHON")
    if given:
        return given
    local = REPO / ".venv-judges" / "bin" / "python"
    return str(local) if local.exists() else None


NO_JUDGES_ENV = (
    "no judges environment (.venv-judges, where ImageReward's package is installed): "
    "run `make judges-env`, or `make test`, which builds it"
)


def snakemake(
    *args: str,
    cwd: Path = REPO,
    check: bool = True,
    timeout: int = 1800,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the venv's snakemake from ``cwd`` and return the finished process (text output)."""
    cmd = [str(VENV_BIN / "snakemake"), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        tail = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed:\n{tail}")
    return proc


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def workdir_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the workflow's sources in a temp dir, so tests never touch the user's results/."""
    return copy_workflow(tmp_path_factory.mktemp("wf"))


@pytest.fixture(scope="session")
def smoke_run(workdir_copy: Path) -> Path:
    """Run `all` on the smoke config in a copy of the workflow; return the copy's root."""
    snakemake(
        "--cores", "2", "all", "--configfile", "config/smoke.yaml", cwd=workdir_copy, timeout=3000
    )
    return workdir_copy


@pytest.fixture(scope="session")
def smoke_results(request: pytest.FixtureRequest) -> Path:
    """``results/smoke/`` of a finished smoke run, only read: this test run's own ``smoke_run``,
    or, when ``PREFGEN_SMOKE_RESULTS`` names one, a finished run made earlier with
    ``snakemake all --configfile config/smoke.yaml`` from this checkout (saves re-running it)."""
    given = os.environ.get("PREFGEN_SMOKE_RESULTS")
    if given:
        path = Path(given)
        if not (path / "MANIFEST.json").is_file():
            raise AssertionError(
                f"PREFGEN_SMOKE_RESULTS={given}: not a finished smoke run (no MANIFEST.json)"
            )
        return path
    return request.getfixturevalue("smoke_run") / "results" / "smoke"


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models on one torch thread: two threads only spin on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
