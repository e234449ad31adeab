"""Kill anywhere, rerun, same result: the fault-injection harness behind ``make kill-matrix``.

One uninterrupted reference run of ``all`` on ``config/smoke.yaml`` in a copy of the workflow;
then, per case (a rule, and how it dies), a copy of that finished folder (sources, results,
logs, benchmarks and Snakemake's ``.snakemake`` metadata, mtimes kept) in which one job of the
rule is forced to run again (``--forcerun <one of its outputs>``):

1. the harness starts the case's ``snakemake`` command, waits for the job's shell to appear
   (a child of Snakemake whose command line is the job's, as recorded in the reference's
   metadata), sleeps a seeded random fraction of the job's reference duration (Snakemake's
   metadata: ``starttime``/``endtime``) and SIGKILLs
   - ``job``: the job's whole process tree (its shell and the ``prefgen`` process under it),
     what a pre-empted Slurm job gets; Snakemake stays alive, sees the job fail, removes its
     outputs and exits non-zero;
   - ``node``: Snakemake's process group, Snakemake and every job with it, as on a node death;
     Snakemake's lock and incomplete-output markers stay behind;
   - ``ckpt`` (trainers): the job's process tree once its first checkpoint is on disk plus a
     seeded fraction of a second, so the rerun's resume is exercised (a smoke trainer spends
     most of its job loading, and a moment drawn over the whole job falls before any checkpoint);
2. it reruns what the README tells a user to run after such a stop: the same command; after a
   ``node`` kill first ``snakemake --unlock`` and then the same command with
   ``--rerun-incomplete`` (README "When a run is killed"). The same command keeps its
   ``--forcerun``: in the copy every file after the killed job is still there from the
   reference, and Snakemake does not remake a missing file whose consumers are present, so
   without it the rerun would leave the killed job's outputs missing and the tables untested
   (in a real first run those consumers do not exist yet, so the plain command remakes them);
3. it compares every table in ``tables/`` with the reference's, byte for byte, except the files
   the manifest declares measured (``prefgen.evaluation.manifest.MEASURED``: wall seconds), and
   checks the rerun's bundle with ``manifest verify``.

Scope per rule: ``dependants`` reruns the forced job and every job downstream of it (target
``all``; the tables are recomputed and compared); ``outputs`` reruns the forced job alone
(its outputs are compared byte for byte with the reference's; the tables cannot change if
they are identical). The upstream rules whose dependants are the whole DAG run with
``outputs`` by default (``DEFAULT_SCOPE``) to keep the matrix within a few times one run.
Cases run cheapest first (``--rules`` order, default ``RULES``), so a stopped matrix has its
table so far in ``root/matrix.md``.

Reported per case: kill moment (seconds into the job, and for trainers the checkpoints on disk,
so the step it had passed), what the rerun resumed from (a checkpoint step, from the
trainer's ``resuming from`` log line, or scratch), whether the compared files are identical,
and the time lost: seconds the killed job had run + the rerun job's seconds - the reference
job's seconds (the job's cost of the kill; Snakemake's restart is listed apart).

Run: ``python -m tests.faults.kill_matrix --root results/kill-matrix`` (``make kill-matrix``);
``--rules`` and ``--modes`` choose the cases, ``--seed`` the kill moments.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from tests.workflow_copy import copy_workflow

VENV_BIN = Path(sys.executable).parent
CONFIG = "config/smoke.yaml"
#: the long-running rules of the matrix (names as in workflow/rules/*.smk), cheapest case first
RULES = [
    "evaluate",
    "judge",
    "sample",
    "train_adapter",
    "train_premier",
    "train_lpp",
    "fit_pasta",
    "world",
    "ingest",
    "clip",
    "features",
    "foundation",
    "encode",
]
#: the job of a rule to force, by a substring of its output path (else the rule's longest job):
#: one with few dependants, so a case reruns a small part of the DAG
PREFERRED_JOB = {
    "fit_pasta": "user_model/population_lpp.",
    "train_adapter": "adapters/pipe/seed1/",
    "train_premier": "adapters/premier_no_dispersion/seed0/",
    "train_lpp": "models/lpp/lpp_no_aux",
    "sample": "samples/pipe/seed1/",
    "judge": "scores/pipe/seed1.",
}
#: rules whose dependants are (nearly) the whole DAG: rerun the forced job alone
DEFAULT_SCOPE = {
    r: "outputs" for r in ("world", "ingest", "clip", "features", "foundation", "encode")
}
#: rules whose jobs write checkpoints and resume from the last one (prefgen.generation.train)
TRAINERS = ("train_adapter", "train_premier")
#: copies tried per case when the job ends before its kill moment (each halves the moment)
MAX_TRIES = 3
RESUMED = re.compile(r"resuming from \S*checkpoint-(\d+) \(step (\d+)\)")


@dataclass
class Job:
    rule: str
    shellcmd: str
    outputs: list[str]
    log: str
    seconds: float


@dataclass
class Case:
    rule: str
    mode: str
    scope: str
    seed: int
    forced: str
    reference_seconds: float
    kill_fraction: float
    killed: bool = False
    kill_seconds: float | None = None
    checkpoints_at_kill: list[int] = field(default_factory=list)
    attempt_exit: int | None = None
    rerun_exit: int | None = None
    resumed_from: str = "-"
    rerun_job_seconds: float | None = None
    time_lost: float | None = None
    attempt_wall: float | None = None
    rerun_wall: float | None = None
    compared: int = 0
    differing: list[str] = field(default_factory=list)
    identical: bool | None = None
    manifest_problems: list[str] = field(default_factory=list)
    #: files outside tables/ (and the measured ones) whose bytes differ: for the record
    other_differing: list[str] = field(default_factory=list)
    note: str = ""


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def snakemake_cmd(*args: str) -> list[str]:
    return [str(VENV_BIN / "snakemake"), *args, "--cores", "2", "--configfile", CONFIG]


def run_name(workdir: Path) -> str:
    import yaml

    return yaml.safe_load((workdir / CONFIG).read_text())["run_name"]


def reference(root: Path, log) -> Path:
    """The uninterrupted run: sources copied (again) into ``root/reference`` and ``all`` run
    there; an earlier reference folder is brought up to date rather than rerun."""
    ref = root / "reference"
    for name in ("workflow", "config", "envs"):
        shutil.rmtree(ref / name, ignore_errors=True)
    copy_workflow(ref)
    t0 = time.time()
    proc = subprocess.run(
        snakemake_cmd("all"), cwd=ref, env=env(), capture_output=True, text=True, check=False
    )
    (root / "reference.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed: see {root / 'reference.log'}")
    log(f"reference: all done in {ref} ({time.time() - t0:.0f}s)")
    return ref


def metadata_jobs(workdir: Path) -> list[Job]:
    """Every job Snakemake recorded in ``.snakemake/metadata`` (one record per output file)."""
    jobs: dict[str, Job] = {}
    folder = workdir / ".snakemake" / "metadata"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        # long names are split into folders, each part but the last prefixed with '@'
        parts = path.relative_to(folder).parts
        try:
            rec = json.loads(path.read_text())
            out = base64.urlsafe_b64decode("".join(x.lstrip("@") for x in parts)).decode()
        except (ValueError, UnicodeDecodeError):
            continue
        cmd = rec.get("shellcmd") or ""
        if not cmd or rec.get("incomplete"):
            continue
        job = jobs.setdefault(
            cmd,
            Job(
                rule=rec["rule"],
                shellcmd=cmd,
                outputs=[],
                log=(rec.get("log") or [""])[0],
                seconds=float(rec["endtime"]) - float(rec["starttime"]),
            ),
        )
        job.outputs.append(out)
    return list(jobs.values())


def pick_job(jobs: list[Job], rule: str) -> Job:
    mine = [j for j in jobs if j.rule == rule]
    if not mine:
        raise SystemExit(f"rule '{rule}': no job in the reference run's metadata")
    want = PREFERRED_JOB.get(rule)
    if want:
        chosen = [j for j in mine if any(want in o for o in j.outputs)]
        if chosen:
            return chosen[0]
    return max(mine, key=lambda j: j.seconds)


def job_processes(snake: psutil.Process, shellcmd: str) -> list[psutil.Process]:
    """The job's shell (a child of Snakemake running ``shellcmd``) and everything under it."""
    try:
        children = snake.children(recursive=False)
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            cmd = child.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cmd and cmd[-1].rstrip().endswith(shellcmd.strip()):
            try:
                return [child, *child.children(recursive=True)]
            except psutil.NoSuchProcess:
                return []
    return []


def out_folder(job: Job) -> Path | None:
    """Where a trainer writes its ``checkpoint-*`` folders (the folder of its ``--out``)."""
    m = re.search(r"--out (\S+)", job.shellcmd)
    if not m:
        return None
    out = Path(m.group(1))
    return out.parent if out.suffix else out


def checkpoints(folder: Path | None) -> list[int]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(
        int(p.name.split("-")[1])
        for p in folder.glob("checkpoint-*")
        if p.name.split("-")[1].isdigit() and (p / "state.json").exists()
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digests(base: Path, rels: list[str]) -> dict[str, str]:
    """sha256 of every file at or under each relative path (folders recursed, hidden skipped)."""
    found = {}
    for rel in rels:
        top = base / rel
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for p in files:
            r = p.relative_to(base).as_posix()
            if not any(part.startswith(".") for part in Path(r).parts):
                found[r] = sha(p)
    return found


def compare(ref: Path, case_dir: Path, rels: list[str]) -> tuple[int, list[str]]:
    a, b = tree_digests(ref, rels), tree_digests(case_dir, rels)
    differing = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return len(a.keys() | b.keys()), differing


def table_paths(workdir: Path, run: str) -> list[str]:
    from prefgen.evaluation.manifest import MEASURED, matches

    tables = workdir / "results" / run / "tables"
    return [
        f"results/{run}/tables/{p.name}"
        for p in sorted(tables.iterdir())
        if p.is_file() and not matches(f"tables/{p.name}", MEASURED)
    ]


def attempt(
    case: Case, job: Job, ref: Path, case_dir: Path, command: list[str], forced: str, log_dir: Path
) -> None:
    """Copy the reference, start the forced command, kill the job at its moment (or not, if it
    ended first); fills the kill fields of ``case``."""
    shutil.rmtree(case_dir, ignore_errors=True)
    shutil.copytree(ref, case_dir, symlinks=True)
    if case.rule in TRAINERS and out_folder(job) is not None:
        # the copy holds the reference's checkpoints (undeclared outputs): without them the
        # forced job trains from the start, as the job did the first time
        for old in (case_dir / out_folder(job)).glob("checkpoint-*"):
            shutil.rmtree(old)
    # 1. the interrupted attempt
    t0 = time.time()
    with open(log_dir / f"{case.rule}-{case.mode}.attempt.log", "w") as out:
        snake = subprocess.Popen(
            [*command, "--forcerun", forced],
            cwd=case_dir,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a node kill takes Snakemake and its jobs
        )
        parent = psutil.Process(snake.pid)
        delay = case.kill_fraction * job.seconds
        procs: list[psutil.Process] = []
        while snake.poll() is None and not procs:
            procs = job_processes(parent, job.shellcmd)
            if not procs:
                time.sleep(0.05)
        started = time.time()
        if case.mode == "ckpt":
            # a trainer killed between checkpoints: once its first checkpoint is on disk, a
            # seeded fraction of a second later (steps take ~0.5 s at smoke scale)
            folder = case_dir / out_folder(job)
            while snake.poll() is None and not checkpoints(folder):
                time.sleep(0.01)
            delay = time.time() - started + case.kill_fraction
        while snake.poll() is None and time.time() - started < delay:
            time.sleep(0.02)
        alive = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        if snake.poll() is None and alive:
            case.kill_seconds = round(time.time() - started, 1)
            case.checkpoints_at_kill = (
                checkpoints(case_dir / out_folder(job)) if out_folder(job) else []
            )
            if case.mode == "node":
                os.killpg(snake.pid, signal.SIGKILL)
            else:
                for p in alive:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.send_signal(signal.SIGKILL)
            case.killed = True
        snake.wait()
    case.attempt_exit = snake.returncode
    case.attempt_wall = round(time.time() - t0, 1)


def run_case(ref: Path, root: Path, rule: str, mode: str, scope: str, seed: int, log) -> Case:
    run = run_name(ref)
    job = pick_job(metadata_jobs(ref), rule)
    forced = sorted(job.outputs)[0]
    rng = random.Random(f"{seed}:{rule}:{mode}")
    case = Case(
        rule=rule,
        mode=mode,
        scope=scope,
        seed=seed,
        forced=forced,
        reference_seconds=round(job.seconds, 1),
        kill_fraction=round(rng.uniform(0.1, 0.8), 3),
    )
    case_dir = root / "cases" / f"{rule}-{mode}"
    targets = ["all"] if scope == "dependants" else sorted(job.outputs)
    command = snakemake_cmd(*targets)
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    drawn = case.kill_fraction
    # the job may run faster than in the reference (another load on the machine): a job that
    # ends before its kill moment is tried again on a fresh copy with the moment halved
    for tries in range(MAX_TRIES):
        case.kill_fraction = round(drawn * 0.5**tries, 3)
        attempt(case, job, ref, case_dir, command, forced, log_dir)
        if case.killed:
            break
        log(f"{rule}/{mode}: the job ended before {case.kill_fraction} of its reference time")
    if not case.killed:
        case.note = f"the job ended before the kill moment {MAX_TRIES} times; not killed"
        log(f"{rule}/{mode}: {case.note}")
        return case
    if tries:
        case.note = f"killed on try {tries + 1} (moment halved {tries}x)"

    # 2. the rerun a user would make
    t0 = time.time()
    with open(log_dir / f"{rule}-{mode}.rerun.log", "w") as out:
        extra: list[str] = []
        if mode == "node":
            subprocess.run(
                snakemake_cmd("--unlock"), cwd=case_dir, env=env(), stdout=out, stderr=out
            )
            extra = ["--rerun-incomplete"]
        proc = subprocess.run(
            [*command, "--forcerun", forced, *extra],
            cwd=case_dir,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    case.rerun_exit = proc.returncode
    case.rerun_wall = round(time.time() - t0, 1)
    if proc.returncode != 0:
        case.note = f"rerun failed: see {log_dir / f'{rule}-{mode}.rerun.log'}"
        case.identical = False
        log(f"{rule}/{mode}: {case.note}")
        return case

    # 3. what the rerun resumed from, what it cost, and whether it gave the same bytes
    logfile = case_dir / job.log
    text = logfile.read_text(errors="replace") if logfile.exists() else ""
    m = RESUMED.search(text)
    case.resumed_from = f"checkpoint {m.group(1)}" if m else "scratch"
    again = [j for j in metadata_jobs(case_dir) if j.shellcmd == job.shellcmd]
    if again:
        case.rerun_job_seconds = round(again[0].seconds, 1)
        case.time_lost = round(case.kill_seconds + again[0].seconds - job.seconds, 1)
    if scope == "dependants":
        rels = table_paths(ref, run)
        from prefgen.evaluation.manifest import verify_manifest

        case.manifest_problems = verify_manifest(case_dir / "results" / run)
    else:
        rels = sorted(job.outputs)
    case.compared, case.differing = compare(ref, case_dir, rels)
    if scope == "dependants":
        _, every = compare(ref, case_dir, [f"results/{run}"])
        case.other_differing = [f for f in every if f not in case.differing]
    case.identical = not case.differing and not case.manifest_problems
    log(
        f"{rule}/{mode}: killed at {case.kill_seconds}s of {case.reference_seconds}s, "
        f"resumed from {case.resumed_from}, {case.compared} files compared, "
        f"identical={case.identical}, time lost {case.time_lost}s"
    )
    return case


def yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def markdown(cases: list[Case]) -> str:
    lines = [
        "| rule | kill | scope | forced job's output | kill moment: s into the job "
        "(reference job s) | trainer at kill | resumed from | files compared | identical | "
        "time lost (s) | attempt + rerun wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        if not c.killed:
            moment = f"not killed ({c.note})"
        elif c.mode == "ckpt":
            moment = f"{c.kill_seconds} ({c.reference_seconds}): {c.kill_fraction} s after the "
            moment += "first checkpoint"
        else:
            moment = f"{c.kill_seconds} ({c.reference_seconds}): fraction {c.kill_fraction}"
            if c.note:
                moment += f", {c.note}"
        if c.rule not in TRAINERS or not c.killed:
            trainer = "-"
        elif c.checkpoints_at_kill:
            last = c.checkpoints_at_kill[-1]
            trainer = f"past step {last} (checkpoint {last} written)"
        else:
            trainer = "before the first checkpoint"
        lines.append(
            f"| `{c.rule}` | {c.mode} | {c.scope} | `{c.forced.split('/', 2)[-1]}` | {moment} | "
            f"{trainer} | {c.resumed_from} | {c.compared} | {yes_no(c.identical)} | "
            f"{c.time_lost if c.time_lost is not None else '-'} | "
            f"{c.attempt_wall} + {c.rerun_wall} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="work folder (created)")
    parser.add_argument("--rules", nargs="+", default=RULES)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["job"],
        choices=["job", "node", "ckpt"],
        help="job: the job's process tree; node: Snakemake with its jobs; ckpt: a trainer's "
        "job once its first checkpoint is written (TRAINERS only)",
    )
    parser.add_argument(
        "--node-rules",
        nargs="*",
        default=None,
        help="rules that also get a node kill (default: those of --rules when --modes has node)",
    )
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    parser.add_argument(
        "--scope",
        choices=["default", "dependants", "outputs"],
        default="default",
        help="dependants: rerun the job and everything after it, compare tables/; outputs: "
        "the job alone, compare its outputs; default: DEFAULT_SCOPE per rule",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the finished cases of root/matrix.json (same seed) and run only the others",
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    report = root / "matrix.log"

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(report, "a") as fh:
            fh.write(line + "\n")

    log(f"seed {args.seed}, rules {args.rules}, modes {args.modes}")
    ref = reference(root, log)
    plan = [(r, "job") for r in args.rules if "job" in args.modes]
    node_rules = args.rules if args.node_rules is None else args.node_rules
    plan += [(r, "node") for r in node_rules if "node" in args.modes]
    plan += [(r, "ckpt") for r in args.rules if r in TRAINERS and "ckpt" in args.modes]
    kept = []
    if args.keep and (root / "matrix.json").exists():
        kept = [
            Case(**c)
            for c in json.loads((root / "matrix.json").read_text())
            if c["killed"] and c["seed"] == args.seed
        ]
        done = {(c.rule, c.mode) for c in kept}
        plan = [case for case in plan if case not in done]
        log(f"kept {sorted(done)} from {root / 'matrix.json'}")
    cases = run_matrix(ref, root, plan, args.seed, args.scope, log, kept)
    print(markdown(cases))
    failed = [c for c in cases if c.killed and not c.identical]
    return 1 if failed else 0


def run_matrix(
    ref: Path,
    root: Path,
    plan: list[tuple[str, str]],
    seed: int,
    scope: str = "default",
    log=print,
    kept: list[Case] | None = None,
) -> list[Case]:
    """Run each (rule, mode) case on copies of the finished reference folder ``ref``; the table
    so far (``kept`` cases first) is rewritten after every case (``root/matrix.{md,json}``)."""
    cases: list[Case] = list(kept or [])
    for rule, mode in plan:
        chosen = DEFAULT_SCOPE.get(rule, "dependants") if scope == "default" else scope
        case = run_case(ref, root, rule, mode, chosen, seed, log)
        cases.append(case)
        shutil.rmtree(root / "cases" / f"{rule}-{mode}", ignore_errors=True)
        (root / "matrix.json").write_text(json.dumps([asdict(c) for c in cases], indent=1))
        (root / "matrix.md").write_text(markdown(cases))
    return cases


if __name__ == "__main__":
    raise SystemExit(main())
