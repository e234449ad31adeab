#!/usr/bin/env bash
# Completes hpsv2 in the judges env. hpsv2 1.2.0 as published on PyPI (wheel and sdist) lacks
# hpsv2/src/open_clip/bpe_simple_vocab_16e6.txt.gz, the BPE vocabulary its tokenizer opens, so
# every `hpsv2.score` call raises FileNotFoundError before any model is built. The file is the
# CLIP vocabulary that open_clip_torch (pinned in the same env) ships; this copies it in, after
# checking it is that exact file. `snakemake --sdm conda` runs this once inside the new env;
# `make judges-env` runs it with .venv-judges first on PATH.
set -euo pipefail
python - <<'PY'
import hashlib
import importlib.util
import shutil
from pathlib import Path

VOCAB = "bpe_simple_vocab_16e6.txt.gz"
MD5 = "933b7abbbbde62c36f02f0e6ccde464f"  # open_clip's and OpenAI CLIP's vocabulary file
source = Path(importlib.util.find_spec("open_clip").origin).parent / VOCAB
target = Path(importlib.util.find_spec("hpsv2").origin).parent / "src" / "open_clip" / VOCAB
digest = hashlib.md5(source.read_bytes()).hexdigest()
if digest != MD5:
    raise SystemExit(f"post-deploy: {source} has md5 {digest}, expected {MD5}")
if not target.exists():
    shutil.copyfile(source, target)
    print(f"post-deploy: copied {source} -> {target}")
PY
