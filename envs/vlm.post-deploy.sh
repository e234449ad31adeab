#!/usr/bin/env bash
# Installs prefgen itself into this conda env (snakemake --sdm conda runs this once, inside the
# freshly created env, from the directory snakemake runs in). A `-e ../` line in the env's pip
# list cannot do it: snakemake builds the env from a copy of the YAML under .snakemake/conda/,
# so `../` resolves to .snakemake/, not the repo. Here the repo is found from the working
# directory (the repo root or a folder below it), and installed editable without dependencies:
# the env file already pins them, and rule jobs then run the checked-out code.
set -euo pipefail
root="$PWD"
until [ -f "$root/pyproject.toml" ] && grep -q '^name = "prefgen"' "$root/pyproject.toml"; do
    if [ "$root" = "/" ]; then
        echo "post-deploy: no prefgen pyproject.toml in $PWD or above; run snakemake from the repo" >&2
        exit 1
    fi
    root="$(dirname "$root")"
done
python -m pip install --no-deps -e "$root"
