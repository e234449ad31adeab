"""The Slurm profile against a real Slurm: the rehearsal of the paper path runs through it.

`tests/cluster/slurm.sh` starts a one-node Slurm (partitions `cpu` and `gpu`, one GPU GRES);
`make slurm-profile` links the profile into a temporary HOME, so the run is exactly what a user
types from the repo root: `prefgen rehearsal-assets --config config/rehearsal.yaml`, then
`snakemake --profile slurm all --configfile config/rehearsal.yaml`. The rehearsal keeps every
branch key of config/paper.yaml (Pick-a-Pic shards, pretrained open_clip, SDXL, LLaVA-OneVision
and IDEFICS2 folders, bf16 trainer in two `accelerate launch` processes, external judges) with
tiny random-weight models in the real formats, so this is the paper DAG's own jobs on Slurm.
While it runs, a background thread records every job from Slurm's own view
(`scontrol show job -o`), and the tests check what each job asked Slurm for: `train_adapter` the
GPU partition and a GPU, every CPU rule the CPU partition and no GPU, and every job exactly the
CPUs, memory, time limit and GPUs that config/rehearsal.yaml's `resources:` declares for its rule.
Then the paper-only branches are checked to have run (no world, no trained CLIP or foundation,
PPD's greedy profile, external judges), and one adapter trained in two processes is retrained in
one and compared.
(The controller's job record is read rather than `sacct`: the test cluster has no accounting
database, and `sacct --completion` over a job completion log reports only names and time
limits. `MinMemoryNode`, `TimeLimit`, `NumCPUs` and `TresPerJob` are the values `sacct` shows as
ReqMem, Timelimit, ReqCPUS and the GPU part of ReqTRES.) The captured table is written to
logs/test_slurm/jobs.md and printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from prefgen.core.io import load_tensors, tensor_metadata

from tests.conftest import NO_JUDGES_ENV, REPO, VENV_BIN, judges_python, snakemake
from tests.workflow_copy import copy_workflow

pytestmark = pytest.mark.slurm

CLUSTER = REPO / "tests" / "cluster" / "slurm.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"
CONFIG = "config/rehearsal.yaml"
REHEARSAL = REPO / CONFIG
TABLE = REPO / "logs" / "test_slurm" / "jobs.md"
# Seconds; the rehearsal DAG through Slurm takes minutes on 2 free cores (more on a busy machine).
RUN_TIMEOUT = int(os.environ.get("PREFGEN_SLURM_TIMEOUT", "3600"))
# Rules that never need a GPU at any scale; the profile must keep them on the CPU
# partition. (clip, foundation and encode are scale-dependent and follow their rule's `gpu`.)
CPU_RULES = {
    "ingest",
    "split_pipe",
    "split_ppd",
    "split_lpp",
    "eval_set",
    "fit_pasta",
    "fit_lambda",
    "preference_accuracy",
    "user_embeddings",
    "evaluate",
    "bundle",
}
# Fields of `scontrol show job` that carry a job's GPU/GRES request.
GRES_FIELDS = ("TresPerJob", "TresPerNode", "TresPerTask", "TresPerSocket", "Gres")


def parse_scontrol_jobs(text: str) -> list[dict[str, str]]:
    """Parse `scontrol show job -o` (one job per line, `Key=Value` tokens) into dicts.

    A token without `=` continues the previous value (a value with spaces, e.g. a command).
    """
    jobs = []
    for line in text.splitlines():
        if not line.startswith("JobId="):
            continue
        record: dict[str, str] = {}
        last = None
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep:
                record[key] = value
                last = key
            elif last is not None:
                record[last] += " " + token
        jobs.append(record)
    return jobs


def rule_of(comment: str) -> tuple[str, str]:
    """Rule and wildcards from the job comment the executor plugin sets:
    `rule_<name>` or `rule_<name>_wildcards_<values>`."""
    if not comment.startswith("rule_"):
        raise ValueError(f"job comment {comment!r} is not `rule_<name>[_wildcards_<w>]`")
    name, _, wildcards = comment.removeprefix("rule_").partition("_wildcards_")
    return name, wildcards


@dataclass
class SlurmJob:
    """One Slurm job as Slurm last reported it."""

    record: dict[str, str]

    @property
    def job_id(self) -> int:
        return int(self.record["JobId"])

    @property
    def rule(self) -> str:
        return rule_of(self.record.get("Comment", ""))[0]

    @property
    def wildcards(self) -> str:
        return rule_of(self.record.get("Comment", ""))[1]

    @property
    def partition(self) -> str:
        return self.record["Partition"]

    @property
    def gres(self) -> str:
        """The GPU/GRES request as Slurm recorded it (`-` when none)."""
        parts = [
            f"{k}={self.record[k]}"
            for k in GRES_FIELDS
            if self.record.get(k) not in (None, "", "(null)", "N/A")
        ]
        return " ".join(parts) or "-"

    @property
    def asks_for_gpu(self) -> bool:
        return "gpu" in self.gres

    @property
    def state(self) -> str:
        return self.record["JobState"]

    def time(self, key: str) -> datetime:
        return datetime.fromisoformat(self.record[key])


def scontrol_jobs() -> list[dict[str, str]]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=30
    )
    return parse_scontrol_jobs(out.stdout) if out.returncode == 0 else []


class JobRecorder(threading.Thread):
    """Polls Slurm once a second and keeps the latest record of every job run from `workdir`."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(daemon=True)
        self.workdir = str(workdir.resolve())
        self.jobs: dict[int, dict[str, str]] = {}
        self.polls = 0
        self._halt = threading.Event()

    def poll(self) -> None:
        for record in scontrol_jobs():
            if record.get("WorkDir") == self.workdir:
                self.jobs[int(record["JobId"])] = record
        self.polls += 1

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(1.0)

    def finish(self) -> list[SlurmJob]:
        self._halt.set()
        self.join(timeout=60)
        self.poll()  # finished jobs stay visible for MinJobAge (600 s) on the test cluster
        return [SlurmJob(r) for _, r in sorted(self.jobs.items())]


@dataclass
class SlurmRun:
    """What one `snakemake --profile slurm all` run did, from Snakemake's and Slurm's side."""

    root: Path
    returncode: int
    output: str
    seconds: float
    planned: dict[str, int]
    local_rules: set[str]
    jobs: list[SlurmJob] = field(default_factory=list)

    def by_rule(self) -> dict[str, list[SlurmJob]]:
        out: dict[str, list[SlurmJob]] = {}
        for job in self.jobs:
            out.setdefault(job.rule, []).append(job)
        return out


def rehearsal_config() -> dict:
    return yaml.safe_load(REHEARSAL.read_text())


def rehearsal_amounts() -> dict[str, dict[str, int]]:
    """config/rehearsal.yaml's `resources:`: rule -> threads, mem_mb, runtime (min), gpu."""
    return rehearsal_config()["resources"]


def gpu_rules() -> set[str]:
    """Rules whose rehearsal amounts ask for a GPU: the ones that must reach a GPU."""
    return {rule for rule, a in rehearsal_amounts().items() if a["gpu"] > 0}


def slurm_minutes(limit: str) -> int:
    """A Slurm time limit (`MM:SS`, `HH:MM:SS`, `D-HH:MM:SS`) in whole minutes."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def slurm_mb(memory: str) -> int:
    """Slurm's `MinMemoryNode` (`4000M`, `2G`, `1T`) in MB as sbatch --mem counts them."""
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}
    number, unit = memory[:-1], memory[-1]
    if unit not in units:
        return int(memory)
    return round(float(number) * units[unit])


def requested(job: SlurmJob) -> dict[str, int]:
    """What one job asked Slurm for, in the config's units."""
    r = job.record
    gpus = re.search(r"gpu(?::[\w.]+)?[:=](\d+)", job.gres)
    return {
        "threads": int(r.get("CPUs/Task") or r["NumCPUs"]),
        "mem_mb": slurm_mb(r["MinMemoryNode"]),
        "runtime": slurm_minutes(r["TimeLimit"]),
        "gpu": int(gpus.group(1)) if gpus else 0,
    }


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's "Job stats" table."""
    counts: dict[str, int] = {}
    in_table = False
    for line in output.splitlines():
        if line.startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
                counts[parts[0]] = int(parts[1])
            elif parts and parts[0] == "total":
                in_table = False
    return counts


def local_rules(output: str) -> set[str]:
    """Rules Snakemake ran on the submit host itself (`localrule <name>:` in its log)."""
    return {
        line.split()[1].rstrip(":") for line in output.splitlines() if line.startswith("localrule ")
    }


def job_table(run: SlurmRun) -> str:
    """The captured jobs as a Markdown table (job -> partition, GPU request, amounts, times)."""
    head = (
        "| job | rule | wildcards | partition | GPU/GRES request | CPUs | mem | time limit "
        "| state | queued s | ran s |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for j in run.jobs:
        r = j.record
        queued = (j.time("StartTime") - j.time("SubmitTime")).total_seconds()
        ran = (j.time("EndTime") - j.time("StartTime")).total_seconds()
        rows.append(
            f"| {j.job_id} | {j.rule} | {j.wildcards or '-'} | {j.partition} | "
            f"{j.gres} | {r.get('NumCPUs')} | {r.get('MinMemoryNode')} | "
            f"{r.get('TimeLimit')} | {j.state} | {queued:.0f} | {ran:.0f} |"
        )
    started = min(j.time("SubmitTime") for j in run.jobs)
    ended = max(j.time("EndTime") for j in run.jobs)
    rows.append("")
    rows.append(
        f"{len(run.jobs)} Slurm jobs; `snakemake --profile slurm all --configfile "
        f"{CONFIG}` took {run.seconds:.0f} s (first submit to last job end "
        f"{(ended - started).total_seconds():.0f} s)."
    )
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """The local Slurm, started by tests/cluster/slurm.sh (and stopped again if this test run
    started it)."""
    running = subprocess.run([str(CLUSTER), "status"], capture_output=True).returncode == 0
    if not running:
        if os.geteuid() != 0:
            pytest.skip("starting the local Slurm needs root (apt-get, daemons)")
        start = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
        assert start.returncode == 0, f"slurm.sh start failed:\n{start.stdout}\n{start.stderr}"
    yield
    if not running:
        subprocess.run([str(CLUSTER), "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def user_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME where `make slurm-profile` has linked the profile, as a user would have it."""
    home = tmp_path_factory.mktemp("home")
    subprocess.run(
        ["make", "-s", "-C", str(REPO), "slurm-profile", f"HOME={home}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return home


def slurm_env(home: Path) -> dict[str, str]:
    """The environment of a user whose HOME holds the linked profile, whose PATH has the
    project's venv first, and who built the judges venv (`make judges-env`; `make test` does):
    ImageReward's package installs only there, and the rehearsal's `judge_external` jobs and
    its ImageReward checkpoint are run and written by that python."""
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
    }
    if "imagereward" in rehearsal_config()["judge"]["external"]["judges"]:
        python = judges_python()
        if python is None:
            pytest.skip(NO_JUDGES_ENV)
        env["PREFGEN_JUDGES_PYTHON"] = python
    return env


@pytest.fixture(scope="session")
def slurm_run(
    slurm_cluster: None, user_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> SlurmRun:
    """`prefgen rehearsal-assets`, then `snakemake --profile slurm all --configfile
    config/rehearsal.yaml`, from a repo-root copy."""
    root = copy_workflow(tmp_path_factory.mktemp("slurm_wf"))
    env = slurm_env(user_home)
    assets = subprocess.run(
        [str(VENV_BIN / "prefgen"), "rehearsal-assets", "--config", CONFIG],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert assets.returncode == 0, assets.stderr[-3000:]
    cmd = [str(VENV_BIN / "snakemake"), "--profile", "slurm", "all", "--configfile", CONFIG]
    dry = subprocess.run(
        [*cmd, "-n"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert dry.returncode == 0, f"dry run failed:\n{dry.stdout[-3000:]}\n{dry.stderr[-3000:]}"
    planned = planned_jobs(dry.stdout + dry.stderr)

    recorder = JobRecorder(root)
    recorder.start()
    began = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the plugin cancels its Slurm jobs on interrupt
        output, _ = proc.communicate(timeout=120)
        output += f"\n[test] killed after {RUN_TIMEOUT} s"
    seconds = time.monotonic() - began
    run = SlurmRun(
        root, proc.returncode, output, seconds, planned, local_rules(output), recorder.finish()
    )
    if run.jobs:
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        TABLE.write_text(job_table(run))
    return run


def test_profile_states_no_amounts() -> None:
    """Amounts depend on the scale, so they live in the config (`resources:`): per-rule
    set-threads/set-resources in the profile would override every scale's alike."""
    profile = yaml.safe_load(PROFILE.read_text())
    assert not {"set-threads", "set-resources"} & set(profile), sorted(profile)


def test_profile_routes_by_the_jobs_gpu_request() -> None:
    """Partitions come from partitions.yaml by fit: nothing may pin a partition for all jobs
    (that turns the selection off), and no GPU rule may be pinned to a partition without GPUs."""
    profile = yaml.safe_load(PROFILE.read_text())
    partitions = yaml.safe_load((PROFILE.parent / profile["slurm-partition-config"]).read_text())
    max_gpu = {name: int(p.get("max_gpu", 0)) for name, p in partitions["partitions"].items()}
    assert max_gpu == {"cpu": 0, "gpu": 1}  # the test cluster's partitions
    assert "slurm_partition" not in profile.get("default-resources", {})
    for rule, res in profile.get("set-resources", {}).items():
        if rule in gpu_rules() and "slurm_partition" in res:
            assert max_gpu.get(res["slurm_partition"], 0) > 0, (rule, res)
    assert "train_adapter" in gpu_rules()
    assert not gpu_rules() & CPU_RULES, gpu_rules() & CPU_RULES


def test_profile_is_linked_where_snakemake_looks(user_home: Path) -> None:
    link = user_home / ".config" / "snakemake" / "slurm"
    assert link.is_symlink() and link.resolve() == PROFILE.parent.resolve()


def test_rehearsal_runs_every_job_through_slurm(slurm_run: SlurmRun) -> None:
    assert slurm_run.returncode == 0, slurm_run.output[-6000:]
    assert slurm_run.jobs, "no Slurm job ran from the workflow copy"
    assert {j.state for j in slurm_run.jobs} == {"COMPLETED"}, job_table(slurm_run)
    # Every job Snakemake planned (except its local rules) ran as exactly one Slurm job.
    expected = {r: n for r, n in slurm_run.planned.items() if r not in slurm_run.local_rules}
    seen = {rule: len(jobs) for rule, jobs in slurm_run.by_rule().items()}
    assert seen == expected


def test_train_adapter_asks_for_the_gpu_partition_and_a_gpu(slurm_run: SlurmRun) -> None:
    adapters = slurm_run.by_rule().get("train_adapter", [])
    assert adapters, f"no train_adapter job reached Slurm: {sorted(slurm_run.by_rule())}"
    for job in adapters:
        assert job.partition == "gpu", (job.job_id, job.partition)
        assert job.asks_for_gpu, (job.job_id, job.gres)


def test_cpu_rules_ask_for_the_cpu_partition_and_no_gpu(slurm_run: SlurmRun) -> None:
    gpu = gpu_rules()
    cpu_jobs = [j for j in slurm_run.jobs if j.rule not in gpu]
    assert {j.rule for j in cpu_jobs} & CPU_RULES, "no CPU rule reached Slurm"
    for job in cpu_jobs:
        assert job.partition == "cpu", (job.rule, job.job_id, job.partition)
        assert not job.asks_for_gpu, (job.rule, job.job_id, job.gres)


def test_every_gpu_rule_asks_for_the_gpu_partition_and_a_gpu(slurm_run: SlurmRun) -> None:
    gpu_jobs = [j for j in slurm_run.jobs if j.rule in gpu_rules()]
    assert gpu_jobs
    for job in gpu_jobs:
        assert job.partition == "gpu" and job.asks_for_gpu, (job.rule, job.job_id, job.gres)


def test_gpu_jobs_never_shared_the_single_gpu(slurm_run: SlurmRun) -> None:
    """The node has one GPU GRES: Slurm must have run GPU jobs one at a time."""
    spans = sorted(
        (j.time("StartTime"), j.time("EndTime"), j.job_id) for j in slurm_run.jobs if j.asks_for_gpu
    )
    assert spans
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:], strict=False):
        assert start_b >= end_a, f"GPU jobs {a} and {b} overlapped"


def test_every_job_asked_slurm_for_its_rehearsal_amounts(slurm_run: SlurmRun) -> None:
    """CPUs, memory, time limit and GPUs as Slurm recorded them equal what config/rehearsal.yaml
    declares for the job's rule (first attempt: the run retried nothing)."""
    amounts = rehearsal_amounts()
    assert slurm_run.jobs
    wrong = []
    for job in slurm_run.jobs:
        want = {k: int(v) for k, v in amounts[job.rule].items()}
        got = requested(job)
        if got != want:
            wrong.append(f"{job.rule}[{job.wildcards}] job {job.job_id}: {got} != {want}")
    assert not wrong, "\n".join(wrong) + "\n" + job_table(slurm_run)


def test_slurm_time_and_memory_parsers() -> None:
    assert [slurm_minutes(t) for t in ("00:30:00", "2:00:00", "1-00:00:00", "05:30")] == [
        30,
        120,
        1440,
        6,
    ]
    assert [slurm_mb(m) for m in ("4000M", "2G", "1T")] == [4000, 2048, 1024**2]


def test_job_table_is_written(slurm_run: SlurmRun, capsys: pytest.CaptureFixture[str]) -> None:
    text = TABLE.read_text()
    assert all(f"| {j.job_id} | {j.rule} |" in text for j in slurm_run.jobs)
    with capsys.disabled():
        print(f"\nSlurm jobs of the rehearsal ({TABLE.relative_to(REPO)}):\n{text}")


# --- the paper-only branches ran ---------------------------------------------------------------
def test_rehearsal_ran_the_paper_loaders(slurm_run: SlurmRun) -> None:
    config = rehearsal_config()
    run = slurm_run.root / "results" / config["run_name"]
    for table in (
        "clip_retrieval",
        "preference_accuracy",
        "user_embedding_probe",
        "win_rates",
        "win_rates_per_seed",
        "checkpoint_metrics",
        "best_checkpoints",
        "judge_agreement",
        "budgets",
        "contamination",
        "premier_history",
        "premier_ablation",
        "preference_prediction_topk",
        "lpp_prototypes",
    ):
        frame = pd.read_csv(run / "tables" / f"{table}.csv")
        assert len(frame) > 0, table
    # no world, no trained CLIP, no foundation rule: the pretrained branches ran
    assert not (run / "data" / "world").exists()
    assert not (run / "models" / "foundation").exists()
    clip = json.loads((run / "models" / "clip" / "open_clip_config.json").read_text())
    assert clip["prefgen"]["source"] == "pretrained" and clip["prefgen"]["history"] == []
    stats = json.loads((run / "data" / "clean" / "stats.json").read_text())
    assert stats["source"] == "pickapic"
    # PPD read its embedding after a greedy profile, from the LLaVA-OneVision checkpoint
    meta = tensor_metadata(run / "embeddings" / "ppd.safetensors")
    assert meta["vlm"] == config["vlm"]["model"] and meta["vlm_stand_in"] == "false"
    ppd = json.loads((run / "embeddings" / "ppd_stats.json").read_text())
    assert ppd["profile_tokens"] == config["ppd"]["embedding"]["profile_tokens"] > 0
    # external judges scored every sample of every compared model, and reached the win rates
    judges = config["judge"]["external"]["judges"]
    for model in ("base", "pipe/seed0"):
        scores = pd.read_parquet(run / "scores" / "external" / f"{model}.parquet")
        assert set(judges) <= set(scores.columns)
        assert scores[judges].notna().all().all()
    win_rates = pd.read_csv(run / "tables" / "win_rates.csv")
    assert set(judges) <= set(win_rates["judge"]), sorted(set(win_rates["judge"]))
    readme = (run / "README.md").read_text()
    assert "Rehearsal" in readme and "(scale `rehearsal`)" in readme


# --- train_adapter under `accelerate launch` -----------------------------------------------------
#: One process against two with the same global batch, bf16 autocast, checkpointing and
#: accumulation: the frozen reference's per-step losses (the same images, noise and timesteps,
#: split over two processes and all-reduced) agree to bf16's rounding, and so do the adapter's.
LOSS_RTOL = 1e-2
CLOSE_SHARE_OF_DRIFT = 0.1
MIN_CLOSE = 0.9


def test_adapters_trained_in_two_processes_match_one(slurm_run: SlurmRun) -> None:
    """Every adapter of the rehearsal trained in `train.processes` = 2 accelerate processes; the
    pipe adapter retrained in one process (train.processes: 1, the same global batch) gives the
    same per-step losses and the same weights within bf16's rounding."""
    config = rehearsal_config()
    assert config["train"]["processes"] == 2
    run = slurm_run.root / "results" / config["run_name"]
    for method in config["train"]["methods"]:
        for seed in config["train"]["seeds"]:
            final = json.loads(
                (run / "adapters" / method / f"seed{seed}" / "final.json").read_text()
            )
            assert final["complete"] and final["processes"] == 2, (method, seed)
    two = run / "adapters" / "pipe" / "seed0"
    kept = slurm_run.root / "two_processes"
    shutil.copytree(two, kept)
    overlay = slurm_run.root / "config" / "_one_process.yaml"
    overlay.write_text(yaml.safe_dump({"train": {"processes": 1}}))
    target = str((two / "final.json").relative_to(slurm_run.root))
    # the conftest helper runs the venv's snakemake locally (no profile) and fails with its output
    snakemake(
        *("--cores", "2", target, "--forcerun", "train_adapter"),
        *("--configfile", CONFIG, str(overlay.relative_to(slurm_run.root))),
        cwd=slurm_run.root,
        timeout=900,
    )
    assert json.loads((two / "final.json").read_text())["processes"] == 1
    steps = config["train"]["steps"]
    one_log = pd.read_parquet(two / f"checkpoint-{steps}" / "train_log.parquet")
    two_log = pd.read_parquet(kept / f"checkpoint-{steps}" / "train_log.parquet")
    for column in ("ref_loss", "model_loss"):
        assert np.allclose(one_log[column], two_log[column], rtol=LOSS_RTOL, atol=0), column
    weights_one = load_tensors(two / f"checkpoint-{steps}" / "adapter.safetensors")
    weights_two = load_tensors(kept / f"checkpoint-{steps}" / "adapter.safetensors")
    assert weights_one.keys() == weights_two.keys()
    diff = torch.cat([(weights_one[k] - weights_two[k]).abs().flatten() for k in weights_one])
    # AdamW moves a coordinate by about lr per step, so two runs that differ (other pairs, other
    # noise, a lost all-reduce) end most coordinates O(lr x steps) apart; the same run split over
    # two processes differs only where bf16 rounding flips the sign of a near-zero gradient
    drift = config["train"]["lr"] * steps
    close = (diff <= CLOSE_SHARE_OF_DRIFT * drift).float().mean().item()
    print(
        f"\nmax |w1 - w2| {diff.max().item():.3g}; share within "
        f"{CLOSE_SHARE_OF_DRIFT} x lr x steps: {close:.4f}"
    )
    assert close >= MIN_CLOSE, close
