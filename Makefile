# Two commands a user needs: `make run` and `make test`. Both create .venv when absent and are
# idempotent: the install step is a stamp file that is only redone when pyproject.toml changes.
# `make test` and `make rehearsal` also build the judges venv (.venv-judges, below): the rehearsal
# runs ImageReward's package, which only installs there.
# `make test-fast` is the quick tier of `make test` for development (no slow, e2e or slurm tests).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prefgen-installed
JUDGES_VENV := .venv-judges
JUDGES_STAMP := $(JUDGES_VENV)/.prefgen-judges-installed
CONFIG ?= config/config.yaml
CORES ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Rules call `prefgen ...`: the venv's bin must be on PATH for Snakemake's shell jobs.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install run rehearsal test test-fast lint format slurm-profile judges-env clean-smoke kill-matrix

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The target comes before --configfile: Snakemake 9 reads every word after it as a config file.
run: $(STAMP)
	$(VENV)/bin/snakemake all --cores $(CORES) --configfile $(CONFIG)
	$(VENV)/bin/snakemake all --cores $(CORES) --report results/$$($(PY) -m prefgen.core.config run-name $(CONFIG))/report.html --configfile $(CONFIG)

# The paper config's code paths on two CPU cores: tiny random-weight models in the paper models'
# real formats and synthetic Pick-a-Pic shards (written once, nothing downloaded), then `all`.
# ImageReward's checkpoint is written, and the external judges run, by the judges venv's python.
rehearsal: $(STAMP) $(JUDGES_STAMP)
	$(VENV)/bin/prefgen rehearsal-assets --config config/rehearsal.yaml
	$(VENV)/bin/snakemake all --cores $(CORES) --configfile config/rehearsal.yaml

test: $(STAMP) $(JUDGES_STAMP)
	$(VENV)/bin/pytest -q

# Unit and small integration tests: the markers are registered in pyproject.toml.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow and not e2e and not slurm"

# Kill anywhere, rerun, same result: one uninterrupted smoke run, then per long rule a copy of it
# in which one job is SIGKILLed at a seeded random moment and the run redone
# (tests/faults/kill_matrix.py; table in docs/reliability.md). Heavy: about an hour on 2 cores.
KILL_SEED ?= 0
kill-matrix: $(STAMP)
	nice -n 10 $(PY) -m tests.faults.kill_matrix --root results/kill-matrix --seed $(KILL_SEED) \
		--modes job node ckpt --node-rules train_adapter evaluate

lint: $(STAMP)
	$(VENV)/bin/ruff check workflow tests bench
	$(VENV)/bin/ruff format --check workflow tests bench
	$(VENV)/bin/snakefmt --no-sort --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint --configfile config/smoke.yaml

format: $(STAMP)
	$(VENV)/bin/ruff format workflow tests bench
	$(VENV)/bin/snakefmt --no-sort Snakefile workflow/rules

# Links the repo's Slurm profile where Snakemake looks for `--profile slurm`.
slurm-profile:
	mkdir -p $(HOME)/.config/snakemake
	ln -sfn $(CURDIR)/workflow/profiles/slurm $(HOME)/.config/snakemake/slurm
	@echo "linked $(HOME)/.config/snakemake/slurm -> $(CURDIR)/workflow/profiles/slurm"

# The paper-scale external judges (ImageReward, HPSv2, LAION aesthetic, PickScore) in a second
# venv: their pins (timm==0.6.13, protobuf<4, transformers 4.x) conflict with the core venv. The
# package list is the pip section of envs/judges.yaml (one source for conda and venv). prefgen is
# not installed into it: the `judge_external` rule runs it with workflow/ on PYTHONPATH and this
# interpreter (PREFGEN_JUDGES_PYTHON, exported below whenever the venv exists). Installing
# downloads no model weights; the judges fetch theirs at paper scale, on the cluster.
ifneq ($(wildcard $(JUDGES_VENV)/bin/python),)
export PREFGEN_JUDGES_PYTHON := $(CURDIR)/$(JUDGES_VENV)/bin/python
endif
# The targets that build the venv first export its python even when it did not exist yet.
test rehearsal: export PREFGEN_JUDGES_PYTHON := $(CURDIR)/$(JUDGES_VENV)/bin/python

$(JUDGES_STAMP): envs/judges.yaml envs/judges.post-deploy.sh $(STAMP)
	test -x $(JUDGES_VENV)/bin/python || python3 -m venv $(JUDGES_VENV)
	$(JUDGES_VENV)/bin/python -m pip install -q --upgrade pip
	$(PY) -m prefgen.evaluation.external_judges requirements envs/judges.yaml > $(JUDGES_VENV)/requirements.txt
	$(JUDGES_VENV)/bin/python -m pip install -q -r $(JUDGES_VENV)/requirements.txt
	PATH=$(CURDIR)/$(JUDGES_VENV)/bin:$$PATH bash envs/judges.post-deploy.sh
	PYTHONPATH=workflow $(JUDGES_VENV)/bin/python -m prefgen.evaluation.external_judges check
	touch $@

judges-env: $(JUDGES_STAMP)
