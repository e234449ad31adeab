"""`make run` is the command users type first; its Snakemake lines must parse and plan.

A target placed after ``--configfile`` is read as a second config file by Snakemake 9 and
`make run` failed at once (found by hand, not by the suite): this dry-runs the exact command
lines `make -n run` prints, on the smoke config, in a scratch copy.
"""

from __future__ import annotations

import os
import subprocess

from tests.workflow_copy import REPO, copy_workflow


def make_lines(target: str, config: str) -> list[str]:
    out = subprocess.run(
        ["make", "-n", target, f"CONFIG={config}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in out.stdout.splitlines() if "bin/snakemake" in line]


def test_make_run_plans_the_whole_dag(tmp_path) -> None:
    lines = make_lines("run", "config/smoke.yaml")
    assert len(lines) == 2, lines  # the run, then the report
    work = copy_workflow(tmp_path / "wf")
    (work / ".venv").symlink_to(REPO / ".venv")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        f"{lines[0]} --dry-run --quiet rules",
        shell=True,
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train_adapter" in proc.stdout and "bundle" in proc.stdout, proc.stdout[-2000:]


def test_make_run_lines_end_with_the_config_file() -> None:
    """The report line cannot be dry-run (it needs a finished run; the e2e test builds a
    report), so both lines are checked for the shape that parses: target first, config last."""
    for line in make_lines("run", "config/smoke.yaml"):
        words = line.split()
        assert words[1] == "all", line
        assert words[-2:] == ["--configfile", "config/smoke.yaml"], line


def test_fast_tier_is_the_full_suite_minus_registered_markers() -> None:
    """`make test-fast` runs `make test`'s pytest, narrowed only by markers pyproject registers
    (an unregistered or misspelt marker would deselect nothing and the tier would stay slow)."""
    import re
    import tomllib

    def pytest_line(target: str) -> str:
        out = subprocess.run(
            ["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=True
        )
        lines = [line for line in out.stdout.splitlines() if "bin/pytest" in line]
        assert len(lines) == 1, out.stdout
        return lines[0]

    full, fast = pytest_line("test"), pytest_line("test-fast")
    assert fast.startswith(full + " -m "), (full, fast)
    expression = fast.removeprefix(full + " -m ").strip("\"'")
    deselected = set(re.findall(r"not (\w+)", expression))
    assert deselected == {"slow", "e2e", "slurm"}, expression
    registered = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"
    ]["markers"]
    assert deselected <= {m.split(":")[0] for m in registered}
