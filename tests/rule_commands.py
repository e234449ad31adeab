"""Run stages exactly as their rules do, without a Python start-up per job.

`snakemake --dry-run --printshellcmds` prints every planned job's shell command: the rule's own
`--params` subset and arguments, so a test never keeps a hand-made copy of them that can drift.
Each command is one `prefgen` call with its log redirect; the redirect is dropped and the call
runs in this process, in the workflow folder the paths are relative to.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

from tests.conftest import snakemake

PREFIX = "Shell command: "
LOG_REDIRECT = re.compile(r"\s+>\s*(\S+)\s+2>&1$")


def planned_commands(root: Path, targets: list[str], configfile: str) -> list[list[str]]:
    """``prefgen`` argument lists of the jobs that make ``targets``, in an order that respects
    the DAG (the dry run's own scheduling order)."""
    proc = snakemake(
        "--dry-run",
        "--printshellcmds",
        "--cores",
        "1",
        *targets,
        "--configfile",
        configfile,
        cwd=root,
    )
    commands = []
    for line in proc.stdout.splitlines():
        if not line.startswith(PREFIX):
            continue
        command, redirected = LOG_REDIRECT.subn("", line.removeprefix(PREFIX))
        argv = shlex.split(command)
        # anything else (a pipe, a second command, a multi-line shell) is not a rule this
        # helper can run in-process: say so rather than run part of it
        if redirected != 1 or argv[0] != "prefgen" or {"|", "&&", ";", ">"} & set(argv):
            raise AssertionError(f"not a single prefgen call with a log redirect: {line}")
        commands.append(argv[1:])
    if not commands:
        raise AssertionError(f"the dry run planned no job for {targets}:\n{proc.stdout[-3000:]}")
    return commands


def run_rules(root: Path, targets: list[str], configfile: str) -> list[str]:
    """Make ``targets`` in the workflow copy ``root`` by running the rules' commands in this
    process; return the commands' names in the order they ran."""
    from prefgen.cli import main

    ran = []
    with contextlib.chdir(root):
        for argv in planned_commands(root, targets, configfile):
            code = main(argv)
            assert code == 0, f"prefgen {shlex.join(argv)} exited with {code}"
            ran.append(argv[0])
    return ran
