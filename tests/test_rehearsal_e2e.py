"""The paper config's code paths end to end: `all` on config/rehearsal.yaml in a workflow copy.

`prefgen rehearsal-assets` first writes the tiny random-weight models (SDXL pipeline folder,
LLaVA-OneVision and IDEFICS2 checkpoint folders, an open_clip architecture + weights file, the
aesthetic head, a PickScore CLIP folder, ImageReward's checkpoint and BLIP's tokenizer in a hub
cache) and the Pick-a-Pic shards at the paths the config names; then Snakemake runs every rule the
paper config plans, through the same loaders. The external judges run in the judges environment
(``PREFGEN_JUDGES_PYTHON``), as ImageReward's package only installs there.
docs/paper_scale.md ("Rehearsal") lists what this executes and what it cannot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefgen.core.io import tensor_metadata

from tests.conftest import NO_JUDGES_ENV, judges_python, snakemake
from tests.workflow_copy import REPO, copy_workflow

pytestmark = pytest.mark.e2e

CONFIG = "config/rehearsal.yaml"


@pytest.fixture(scope="module")
def rehearsal_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = dict(os.environ)
    external = yaml.safe_load((REPO / CONFIG).read_text())["judge"]["external"]["judges"]
    if "imagereward" in external:
        python = judges_python()
        if python is None:
            pytest.skip(NO_JUDGES_ENV)
        env["PREFGEN_JUDGES_PYTHON"] = python
    work = copy_workflow(tmp_path_factory.mktemp("rehearsal"))
    proc = subprocess.run(
        [sys.executable, "-m", "prefgen.cli", "rehearsal-assets", "--config", CONFIG],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # ImageReward's BLIP ViT-L scores ~300 images: about 10 CPU-minutes of the run
    snakemake("--cores", "2", "all", "--configfile", CONFIG, cwd=work, timeout=4500, env=env)
    return work


def test_rehearsal_runs_all_through_the_paper_loaders(rehearsal_run: Path) -> None:
    config = yaml.safe_load((rehearsal_run / CONFIG).read_text())
    run = rehearsal_run / "results" / config["run_name"]
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
    # the paper-only branches really ran: no world, no trained CLIP, no foundation rule
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
    # the adapters trained with the paper's recipe
    final = json.loads((run / "adapters" / "pipe" / "seed0" / "final.json").read_text())
    assert final["complete"]
    # external judges scored every sample of every compared model
    for model in ("base", "pipe/seed0"):
        scores = pd.read_parquet(run / "scores" / "external" / f"{model}.parquet")
        assert set(config["judge"]["external"]["judges"]) <= set(scores.columns)
        assert scores[config["judge"]["external"]["judges"]].notna().all().all()
    readme = (run / "README.md").read_text()
    assert "Rehearsal" in readme and "(scale `rehearsal`)" in readme
