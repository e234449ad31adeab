"""``prefgen bundle``: turn ``results/<run_name>/`` into the paper's artifact bundle.

Writes ``README.md`` (what every file is, the headline win rates, how to verify) and then
``MANIFEST.json`` (:mod:`prefgen.evaluation.manifest`; the README is hashed like every other
file). It runs last: its inputs are all the workflow's final targets. ``report.html`` is written
after it by ``snakemake --report`` (``make run``) and is deliberately not hashed.
"""

from __future__ import annotations

import argparse
import fnmatch
import time
from pathlib import Path
from typing import Any

import pandas as pd

from prefgen.core.io import atomic_path, write_json
from prefgen.core.logging import get_logger
from prefgen.evaluation.manifest import (
    MEASURED,
    NOT_HASHED,
    build_manifest,
    matches,
    scan,
    verify_manifest,
)

log = get_logger(__name__)

__all__ = ["verify_manifest", "describe", "readme_text"]

#: (glob on the path relative to the run dir, what it is); the first match describes a file
DESCRIPTIONS: list[tuple[str, str]] = [
    (
        "tables/win_rates_per_seed.*",
        "the win rates per training-seed replicate, two-way "
        "(users x prompts) CIs: the spread between seeds",
    ),
    (
        "tables/win_rates.*",
        "seed-paired win rates of each method pair per judge and user group: "
        "mean over training seeds, three-way (seeds x users x prompts) "
        "bootstrap CIs and a verdict (PIPE Table 1)",
    ),
    (
        "tables/budgets.*",
        "training budget per trained method and seed: trainable parameters, "
        "optimizer steps, examples seen (fixed by the config)",
    ),
    (
        "tables/wall_seconds.*",
        "measured wall seconds of each training job, per method and seed (differs between runs)",
    ),
    (
        "tables/checkpoint_metrics.*",
        "mean score of every judge per method and checkpoint (PIPE Fig. 2 as numbers)",
    ),
    (
        "tables/best_checkpoints.*",
        "checkpoint compared per method and training seed (picked by "
        "the PIPE judge) and the oracle's view of it",
    ),
    ("tables/judge_agreement.*", "how often each judge orders an image pair like the oracle"),
    (
        "tables/preference_accuracy.*",
        "preference-prediction accuracy of PIPE, population, "
        "oracle (and LPP) on held-out pairs (PIPE §3.2)",
    ),
    (
        "tables/user_model_recovery.*",
        "synthetic world: learned user types matched to the planted "
        "ones, fitted λ against the true λ*",
    ),
    (
        "tables/user_model_ceiling.*",
        "synthetic world: PIPE accuracy with φ fitted to the planted "
        "type rewards, and with those rewards themselves (where the "
        "gap to the oracle is lost)",
    ),
    ("tables/*", "result table (csv = full precision; md and tex rounded)"),
    (
        "figures/checkpoint_curves.png",
        "judge scores against training step per method (PIPE Fig. 2)",
    ),
    (
        "figures/samples_user_*.png",
        "sample grid for one test user per user type: rows = methods, "
        "columns = prompts (PIPE Fig. 3)",
    ),
    ("figures/*", "figure"),
    (
        "samples/*/index.parquet",
        "index of generated images (method, training seed, step, user, prompt, seed, path)",
    ),
    (
        "samples/*",
        "generated images (PNG), per method and training seed; same sampling seeds "
        "across methods and training seeds, so they pair up",
    ),
    ("scores/external/*", "per-image scores of the paper-scale judges and their environment"),
    ("scores/*", "per-image judge scores (samples index + one column per judge)"),
    (
        "adapters/*",
        "adapter checkpoints (safetensors, adapter weights only; IP-Adapter "
        "methods also as ip_adapter.safetensors for diffusers' load_ip_adapter)",
    ),
    ("embeddings/*", "per-user embeddings fed to the adapters"),
    ("user_model/*", "PASTA user-type reward heads, population model, per-user lambda"),
    ("models/*", "models trained inside the workflow (stand-ins at mini/smoke scale)"),
    ("features/*", "frozen CLIP embeddings of images and captions"),
    ("splits/*", "train/test splits and the evaluation set (users x unseen prompts x seeds)"),
    ("data/truth/*", "the synthetic world's ground truth: planted types, users' true lambda"),
    ("data/*", "input preference data"),
    ("cache/*", "derived caches (VAE latents, text-encoder states)"),
]
#: folders summarised as one README row (with a file count) instead of one row per file
MAX_LISTED = 8


def describe(rel: str) -> str:
    for pattern, text in DESCRIPTIONS:
        if fnmatch.fnmatchcase(rel, pattern):
            return text
    return "(no description: add a pattern to prefgen.evaluation.bundle.DESCRIPTIONS)"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def file_rows(run_dir: Path, files: list[str]) -> list[tuple[str, str, str]]:
    """(path or folder, size, description): groups of more than MAX_LISTED files sharing a
    description and a top folder are summarised as ``folder/ (N files)``."""
    groups: dict[tuple[str, str], list[str]] = {}
    for rel in files:
        top = rel.split("/")[0] if "/" in rel else ""
        groups.setdefault((top, describe(rel)), []).append(rel)
    rows = []
    for (top, text), rels in groups.items():
        sizes = [(run_dir / r).stat().st_size for r in rels]
        if len(rels) <= MAX_LISTED:
            rows += [(r, _size(s), text) for r, s in zip(rels, sizes, strict=True)]
        else:
            rows.append((f"{top}/ ({len(rels)} files)", _size(sum(sizes)), text))
    return rows


def headline(run_dir: Path) -> str:
    path = run_dir / "tables" / "win_rates.csv"
    if not path.exists():
        return "_tables/win_rates.csv is not in this bundle._"
    wins = pd.read_csv(path)
    wins = wins[wins["users"] == "all"]
    cols = [
        "method",
        "opponent",
        "judge",
        "n_seeds",
        "n",
        "win_rate",
        "ci_low",
        "ci_high",
        "verdict",
    ]
    return wins[cols].round(3).to_markdown(index=False)


HEADLINE_NOTE = (
    "win_rate is the mean over the n_seeds training seeds of each seed's win rate (n "
    "comparisons in all); the CI resamples training seeds, users and prompts. verdict: "
    "**shown** = the CI excludes 0.5 in the method's favour, **reversed** = it excludes 0.5 "
    "against the method, **not shown** = the CI contains 0.5 (no claim either way). Per-seed "
    "win rates: `tables/win_rates_per_seed.md`; training budgets: `tables/budgets.md`, and "
    "the measured wall seconds of each training job: `tables/wall_seconds.md`. To hold these "
    "verdicts against a re-run (another machine, other training seeds): `prefgen "
    "compare-verdicts <this folder> <the other run folder>` lists every comparison whose verdict "
    "differs and exits 1 only if one run shows what the other reverses."
)


def readme_text(
    run_dir: Path, config: dict[str, Any], files: list[str], excluded: list[str], exclude: list[str]
) -> str:
    scale = config.get("scale")
    name = config.get("run_name")
    stand_in = (
        ""
        if scale == "paper"
        else f"\n> **Stand-ins.** Scale `{scale}`: every model here is a small stand-in trained "
        "inside the workflow on the synthetic world; the `oracle` judge is the users' "
        "true reward. Numbers show the pipeline works, not the papers' results.\n"
    )
    if scale == "rehearsal":
        stand_in = (
            "\n> **Rehearsal.** Scale `rehearsal`: the paper's code paths run on random-weight "
            "stand-ins of its models, written in their real formats by `prefgen "
            "rehearsal-assets`, and on synthetic Pick-a-Pic shards. The numbers mean nothing; "
            "the run shows that the paper configuration executes.\n"
        )
    lines = [
        f"# Artifact bundle: run `{name}` (scale `{scale}`)",
        "",
        "Written by the `bundle` rule of the prefgen workflow (PIPE and baselines). "
        "`MANIFEST.json` holds the resolved config, the git commit, package versions and the "
        "sha256 of every file listed below; check the bundle with",
        "",
        "```bash",
        f"python -m prefgen.evaluation.manifest verify results/{name}",
        "```",
        "",
        "`report.html` (from `snakemake --report`, written after this bundle) shows the tables and "
        "figures with their captions; it is not hashed (it embeds the hashed files).",
        stand_in,
        "## Headline: win rates (all users)",
        "",
        headline(run_dir),
        "",
        HEADLINE_NOTE,
        "",
        "Full table with seen/unseen users: `tables/win_rates.md`. Checkpoints compared: "
        "`tables/best_checkpoints.md`.",
        "",
        "## Files",
        "",
        "| path | size | what |",
        "|---|---|---|",
        "| `README.md` | - | this file |",
    ]
    # measured files get no size: theirs changes between runs, and this README is hashed
    measured = [f for f in files if matches(f, MEASURED)]
    steady = [f for f in files if f not in measured]
    lines += [f"| `{p}` | {s} | {t} |" for p, s, t in file_rows(run_dir, steady)]
    lines += [f"| `{p}` | measured | {describe(p)} |" for p in measured]
    lines += [
        "",
        "Measured, so they differ between two runs of the same config (hashed, and listed under "
        "`measured` in `MANIFEST.json`): "
        + "; ".join(f"`{k}` ({v})" for k, v in MEASURED.items())
        + ". Every other table is the same bytes for the same config and code.",
        "Not hashed: " + "; ".join(f"`{k}` ({v})" for k, v in NOT_HASHED.items()) + ".",
        f"Excluded from the manifest by `bundle.exclude` ({len(excluded)} files): "
        + ", ".join(f"`{p}`" for p in exclude)
        + ".",
        "",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="results/<run_name>/")
    parser.add_argument("--readme", required=True, help="README.md to write (in the run dir)")
    parser.add_argument("--manifest", required=True, help="MANIFEST.json to write")


def run(args: argparse.Namespace) -> None:
    t0 = time.time()
    config = args.params["config"]
    exclude = list(config["bundle"]["exclude"])
    run_dir = Path(args.run_dir)
    readme = Path(args.readme)
    files, excluded = scan(run_dir, exclude)
    files = [f for f in files if f != readme.relative_to(run_dir).as_posix()]
    with atomic_path(readme) as tmp:
        tmp.write_text(readme_text(run_dir, config, files, excluded, exclude))
    manifest = build_manifest(run_dir, config, exclude)
    write_json(manifest, args.manifest)
    log.info(
        "bundle: %d files (%.1f MiB) hashed, %d excluded, in %.1fs",
        manifest["n_files"],
        manifest["bytes"] / 2**20,
        manifest["excluded"]["n_files"],
        time.time() - t0,
    )
