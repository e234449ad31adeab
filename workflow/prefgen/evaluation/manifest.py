"""``MANIFEST.json``: what a run's artifact bundle contains and how to check it was not altered.

The manifest records the resolved config, the code version (git commit and whether the work tree
had uncommitted changes), the versions of the key packages, and the sha256 and size of every
file in ``results/<run_name>/`` except:

- the files matched by ``bundle.exclude`` (recorded, with their count and total size): by
  default the raw and cleaned input data (``data/world``, ``data/clean``: at paper scale a copy
  of Pick-a-Pic, regenerable from the source or, for the synthetic world, from the seed) and
  ``cache/`` (VAE latents and text states, derived and large);
- ``MANIFEST.json`` itself, and ``report.html``, which ``snakemake --report`` writes after the
  bundle rule (it embeds the tables and figures listed here, so hashing them covers its content);
- hidden files (temporary files of atomic writes, Snakemake's timestamps).

Files matched by ``MEASURED`` are hashed like the rest but declared measured (the manifest's
``measured`` key lists them with the reason): their bytes differ between two runs of the same
config, so the byte-identity promise (docs/reliability.md) covers every other file of
``tables/``. ``measured_files(manifest)`` names them.

``verify_manifest(run_dir)`` recomputes every hash and lists each discrepancy (an empty list
means the bundle is intact): ``python -m prefgen.evaluation.manifest verify results/mini``.
Patterns are ``fnmatch`` globs on paths relative to the run directory (``*`` crosses folders).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import platform
import subprocess
import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

MANIFEST_NAME = "MANIFEST.json"
#: files in the run directory that are deliberately not hashed, and why
NOT_HASHED = {
    MANIFEST_NAME: "this file (a file cannot contain its own hash)",
    "report.html": "written by `snakemake --report` after the bundle rule; it embeds the tables "
    "and figures hashed here",
}
#: files hashed but declared measured: they differ between two runs of the same config
MEASURED = {
    "tables/wall_seconds.*": "wall seconds of the training jobs (Snakemake benchmark files): "
    "a measurement of this run on this machine, not a result",
}
#: the packages whose versions decide the numbers (core environment)
KEY_PACKAGES = [
    "prefgen",
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "tokenizers",
    "accelerate",
    "open_clip_torch",
    "peft",
    "safetensors",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "pillow",
    "matplotlib",
    "snakemake",
]
CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions(names: Iterable[str] = KEY_PACKAGES) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_info(cwd: str | Path = ".") -> dict[str, Any]:
    """``{"commit": sha | "unknown", "dirty": bool | None}`` for the workflow's work tree."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": "unknown", "dirty": None, "note": "not a git work tree, or no commit yet"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def is_hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def matches(rel: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, pat) for pat in patterns)


def scan(run_dir: str | Path, exclude: Iterable[str]) -> tuple[list[str], list[str]]:
    """(files to hash, files excluded by pattern), as sorted paths relative to ``run_dir``."""
    run_dir = Path(run_dir)
    exclude = list(exclude)
    included, excluded = [], []
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(run_dir).as_posix()
        if is_hidden(rel) or rel in NOT_HASHED:
            continue
        (excluded if matches(rel, exclude) else included).append(rel)
    return included, excluded


def build_manifest(
    run_dir: str | Path, config: dict[str, Any], exclude: list[str], cwd: str | Path = "."
) -> dict[str, Any]:
    """The manifest as a dict (``write_json`` it to ``MANIFEST.json``)."""
    run_dir = Path(run_dir)
    included, excluded = scan(run_dir, exclude)
    files = [
        {"path": rel, "bytes": (run_dir / rel).stat().st_size, "sha256": sha256_file(run_dir / rel)}
        for rel in included
    ]
    return {
        "format": "prefgen-manifest/1",
        "run_name": config.get("run_name"),
        "scale": config.get("scale"),
        "config": config,
        "code": {**git_info(cwd), "prefgen": package_versions(["prefgen"])["prefgen"]},
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": package_versions(),
        "excluded": {
            "patterns": exclude,
            "n_files": len(excluded),
            "bytes": sum((run_dir / rel).stat().st_size for rel in excluded),
            "why": "input data (regenerable from the source or the seed) and derived "
            "caches: large, and not results",
        },
        "not_hashed": {**NOT_HASHED, ".*": "hidden files (temporary and Snakemake bookkeeping)"},
        "measured": {
            "patterns": MEASURED,
            "files": [rel for rel in included if matches(rel, MEASURED)],
            "why": "measured on this run (wall time): they differ between two runs of the same "
            "config; every other table is the same bytes for the same config and code",
        },
        "n_files": len(files),
        "bytes": sum(f["bytes"] for f in files),
        "files": files,
    }


def measured_files(manifest: dict[str, Any]) -> list[str]:
    """The files a manifest declares measured (an older manifest without the key: none)."""
    return list(manifest.get("measured", {}).get("files", []))


def verify_manifest(run_dir: str | Path) -> list[str]:
    """Every discrepancy between ``run_dir`` and its ``MANIFEST.json`` (empty list: intact):
    listed files missing or changed (size or sha256), and files present but not listed."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_NAME
    if not path.exists():
        return [f"{path}: missing"]
    try:
        manifest = json.loads(path.read_text())
        listed = {f["path"]: f for f in manifest["files"]}
        exclude = list(manifest["excluded"]["patterns"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return [f"{path}: not a prefgen manifest ({exc})"]
    problems = []
    for rel, entry in listed.items():
        file = run_dir / rel
        if not file.is_file():
            problems.append(f"missing: {rel}")
        elif file.stat().st_size != entry["bytes"]:
            problems.append(
                f"size differs: {rel} ({file.stat().st_size} bytes, manifest {entry['bytes']})"
            )
        elif sha256_file(file) != entry["sha256"]:
            problems.append(f"sha256 differs: {rel}")
    included, _ = scan(run_dir, exclude)
    problems += [f"not in manifest: {rel}" for rel in included if rel not in listed]
    return problems


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "verify":
        raise SystemExit("usage: python -m prefgen.evaluation.manifest verify RUN_DIR")
    problems = verify_manifest(argv[1])
    for problem in problems:
        print(problem)
    print(f"{argv[1]}: {'intact' if not problems else f'{len(problems)} problem(s)'}")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
