"""Job amounts come from the config that chooses the scale, and paper jobs ask for enough.

Every rule reads its threads, mem_mb, runtime and gpu from the config's `resources:` block
(`scale_threads`/`scale_resources` in workflow/rules/common.smk), so one Slurm profile serves
smoke, mini and paper. The paper plan (`snakemake -n` through the Slurm profile) must ask, for
every job, at least the per-job estimate of docs/paper_scale.md ("Per job: what Slurm must
grant"), the one place those estimates live.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, snakemake
from tests.workflow_copy import copy_workflow

CONFIGS = {
    "smoke": REPO / "config" / "smoke.yaml",
    "mini": REPO / "config" / "config.yaml",
    "paper": REPO / "config" / "paper.yaml",
}
PROFILE = REPO / "workflow" / "profiles" / "slurm"
PAPER_DOC = REPO / "docs" / "paper_scale.md"
ESTIMATES_HEADING = "### Per job: what Slurm must grant"
SAMPLE_GLOB = "tests/data/pickapic_sample/*.parquet"
#: Planned but run on the submit host, never as a cluster job.
LOCAL_RULES = {"all"}


def rule_blocks() -> dict[str, str]:
    """Rule name -> its source, from workflow/rules/*.smk."""
    blocks: dict[str, str] = {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        parts = re.split(r"^(?:rule|checkpoint) (\w+):", path.read_text(), flags=re.M)
        blocks.update(zip(parts[1::2], parts[2::2], strict=True))
    return blocks


def job_rules() -> set[str]:
    return set(rule_blocks()) - LOCAL_RULES


@dataclass(frozen=True)
class Estimate:
    """One row of the paper doc's per-job table; None where it says `gap`."""

    gpus: int
    mem_gb: float | None
    hours: float | None


def paper_estimates(text: str | None = None) -> dict[str, Estimate]:
    """The per-job estimate table of docs/paper_scale.md, by rule."""
    text = PAPER_DOC.read_text() if text is None else text
    if ESTIMATES_HEADING not in text:
        raise AssertionError(f"{PAPER_DOC}: no section {ESTIMATES_HEADING!r}")
    section = text.split(ESTIMATES_HEADING, 1)[1].split("\n#", 1)[0]
    rows: dict[str, Estimate] = {}
    in_table = False
    for line in section.splitlines():
        if line.startswith("|---"):
            in_table = True  # rows follow the header's separator
            continue
        if not (in_table and line.startswith("|")):
            in_table = in_table and line.startswith("|")
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rule, gpus, mem, hours = cells[:4]
        if not gpus.isdigit():
            raise AssertionError(f"{PAPER_DOC}: row {rule!r}, column 'GPUs': {gpus!r}")

        def number(cell: str, column: str, rule: str = rule) -> float | None:
            if cell == "gap":
                return None
            try:
                return float(cell)
            except ValueError:
                raise AssertionError(
                    f"{PAPER_DOC}: row {rule!r}, column {column!r}: {cell!r} is neither a "
                    "number nor `gap`"
                ) from None

        assert rule not in rows, f"{PAPER_DOC}: rule {rule!r} has two rows"
        rows[rule] = Estimate(int(gpus), number(mem, "host memory"), number(hours, "wall time"))
    assert rows, f"{PAPER_DOC}: the {ESTIMATES_HEADING!r} table has no rows"
    return rows


@dataclass(frozen=True)
class PlannedJob:
    rule: str
    wildcards: str
    threads: int
    resources: dict[str, str]


def planned_jobs(output: str) -> list[PlannedJob]:
    """Every job of a `snakemake -n` log with its threads (absent = 1) and resources."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, flags=re.M)
        if not rule:
            continue
        threads = re.search(r"^\s+threads: (\d+)$", block, flags=re.M)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, flags=re.M)
        res = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        jobs.append(
            PlannedJob(
                rule.group(1),
                wildcards.group(1) if wildcards else "",
                int(threads.group(1)) if threads else 1,
                resources,
            )
        )
    return jobs


@pytest.fixture(scope="module")
def paper_plan() -> list[PlannedJob]:
    """The paper DAG planned through the Slurm profile, as a user would submit it.

    `--cores` lifts the dry run's default cap of one core, so each job shows the threads it
    would be submitted with (a cluster run has no such cap)."""
    proc = snakemake(
        "-n",
        "--profile",
        str(PROFILE),
        "--cores",
        "1024",
        "all",
        "--configfile",
        str(CONFIGS["paper"]),
        "--config",
        f"data={{path: {SAMPLE_GLOB}}}",
        check=False,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = [j for j in planned_jobs(out) if j.rule not in LOCAL_RULES]
    assert len(jobs) > 30, out[-3000:]
    return jobs


def test_every_rule_reads_its_own_amounts_from_the_config() -> None:
    """No rule states literal amounts: each reads its own config entry (a copied rule that
    still names another rule's entry would silently take that rule's amounts)."""
    wrong = {}
    for rule, block in rule_blocks().items():
        if rule in LOCAL_RULES:
            continue
        threads = re.findall(r"^    threads: (.*)$", block, flags=re.M)
        resources = re.search(r"^    resources:\n((?:        .*\n)+)", block, flags=re.M)
        if threads != [f'scale_threads("{rule}")'] or not resources:
            wrong[rule] = (threads, resources and resources.group(1))
        elif resources.group(1).strip() != f'**scale_resources("{rule}"),':
            wrong[rule] = (threads, resources.group(1))
    assert not wrong, wrong


@pytest.mark.parametrize("scale", sorted(CONFIGS))
def test_each_config_sizes_exactly_the_workflows_rules(scale: str) -> None:
    """A config is overlaid on config/config.yaml, so a rule missing from paper.yaml would run
    with mini's amounts: every shipped config names every job rule, and nothing else."""
    amounts = yaml.safe_load(CONFIGS[scale].read_text())["resources"]
    assert set(amounts) == job_rules(), {
        "missing": sorted(job_rules() - set(amounts)),
        "not a rule": sorted(set(amounts) - job_rules()),
    }


def test_small_scales_fit_a_two_cpu_node() -> None:
    """smoke and mini run on a laptop (2 cores) and on the test cluster's node: no job of theirs
    may ask for more (judge_external runs only at paper scale)."""
    for scale in ("smoke", "mini"):
        amounts = yaml.safe_load(CONFIGS[scale].read_text())["resources"]
        for rule, a in amounts.items():
            if rule == "judge_external":
                continue
            assert a["threads"] <= 2 and a["mem_mb"] <= 4000 and a["gpu"] <= 1, (scale, rule, a)


def test_paper_plan_covers_the_estimate_table(paper_plan: list[PlannedJob]) -> None:
    """Every rule of the paper DAG has an estimate row, and every row is a planned rule."""
    planned = {j.rule for j in paper_plan}
    rows = set(paper_estimates())
    assert planned - rows == set(), f"paper rules without an estimate: {sorted(planned - rows)}"
    assert rows - planned == set(), f"estimate rows for rules not planned: {sorted(rows - planned)}"


def test_every_paper_job_asks_for_at_least_its_estimate(paper_plan: list[PlannedJob]) -> None:
    estimates = paper_estimates()
    config = yaml.safe_load(CONFIGS["paper"].read_text())["resources"]
    short = []
    for job in paper_plan:
        est = estimates[job.rule]
        res = job.resources
        name = f"{job.rule}[{job.wildcards}]"
        mem_mb = int(res["mem_mb"])
        runtime = int(res["runtime"])
        gpus = int(res.get("gpu", 0))
        # what the plan shows is what the paper config declares (no profile override)
        declared = config[job.rule]
        assert (job.threads, mem_mb, runtime, gpus) == (
            declared["threads"],
            declared["mem_mb"],
            declared["runtime"],
            declared["gpu"],
        ), (name, job, declared)
        if gpus != est.gpus:
            short.append(f"{name}: {gpus} GPUs, estimate {est.gpus}")
        if est.mem_gb is not None and mem_mb < math.ceil(est.mem_gb * 1024):
            short.append(f"{name}: mem_mb={mem_mb} < estimate {est.mem_gb} GB")
        if est.hours is not None and runtime < math.ceil(est.hours * 60):
            short.append(f"{name}: runtime={runtime} min < estimate {est.hours} h")
    assert not short, "\n".join(short)


def test_gpu_jobs_ask_for_a_gpu_and_cpu_jobs_for_none(paper_plan: list[PlannedJob]) -> None:
    """The Slurm plugin routes by the `gpu` resource: a CPU job must not carry one at all."""
    estimates = paper_estimates()
    for job in paper_plan:
        if estimates[job.rule].gpus == 0:
            assert "gpu" not in job.resources, job
        else:
            assert job.resources.get("gpu") == str(estimates[job.rule].gpus), job


def test_estimate_parser_rejects_a_malformed_row() -> None:
    text = f"{ESTIMATES_HEADING}\n\n| rule | GPUs | mem | h | from |\n|---|---|---|---|---|\n"
    assert paper_estimates(text + "| encode | 1 | 24 | gap | x |\n")["encode"] == Estimate(
        1, 24.0, None
    )
    with pytest.raises(AssertionError, match="row 'encode', column 'wall time'"):
        paper_estimates(text + "| encode | 1 | 24 | soon | x |\n")


def test_a_rule_without_amounts_is_an_error_naming_it(tmp_path: Path) -> None:
    """A config without a rule's entry stops the plan with the missing key's name."""
    root = copy_workflow(tmp_path / "wf")
    mini = root / "config" / "config.yaml"
    text = mini.read_text()
    entry = re.compile(r"^  train_adapter: .*\n", flags=re.M)
    assert entry.search(text)
    mini.write_text(entry.sub("", text))
    proc = snakemake("-n", "all", cwd=root, check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "resources.train_adapter is missing" in out, out[-3000:]
