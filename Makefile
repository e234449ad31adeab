# Two commands a user needs: `make run` and `make test`. Both create .venv when absent and are
# idempotent: the install step is a stamp file that is only redone when pyproject.toml changes.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prefgen-installed
CONFIG ?= config/config.yaml
CORES ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test lint format slurm-profile judges-env clean-smoke

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --configfile $(CONFIG) all
	$(VENV)/bin/snakemake --cores $(CORES) --configfile $(CONFIG) --report results/$$($(PY) -m prefgen.core.config run-name $(CONFIG))/report.html all

test: $(STAMP)
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check workflow tests bench
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint --configfile config/smoke.yaml

format: $(STAMP)
	$(VENV)/bin/ruff format workflow tests bench
	$(VENV)/bin/snakefmt Snakefile workflow/rules

# Links the repo's Slurm profile where Snakemake looks for `--profile slurm`.
slurm-profile:
	mkdir -p $(HOME)/.config/snakemake
	ln -sfn $(CURDIR)/workflow/profiles/slurm $(HOME)/.config/snakemake/slurm
	@echo "linked $(HOME)/.config/snakemake/slurm -> $(CURDIR)/workflow/profiles/slurm"
