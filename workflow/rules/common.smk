# Helpers shared by every rules file: output root, per-rule config subsets, the final targets.
import json
import os

RUN = f"results/{config['run_name']}"
LOGS = f"logs/{config['run_name']}"


def stage_params(**subsets):
    """The exact config subset a rule depends on, as one JSON string.

    Snakemake stores params with each output and reruns a rule when they change
    (`--rerun-triggers params`), so passing exactly this subset makes a changed key invalidate
    exactly the rules that read it. Keys are sorted so the string is stable.
    """
    return json.dumps(subsets, sort_keys=True)


def all_targets():
    """Everything `rule all` asks for; each stage family appends its final outputs."""
    targets = []
    targets += data_targets()
    targets += user_model_targets()
    targets += generation_targets()
    targets += evaluate_targets()
    targets += ppd_targets()
    targets += lpp_targets()
    targets += premier_targets()
    return targets
