# prefgen: personalized text-to-image generation (PIPE and baselines), raw preferences to tables.
# Table of contents only: config, schema validation, one rules file per stage, `rule all`.
import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


# Checked before validation, so no job starts on a config YAML read differently than written:
# every YAML the workflow reads has no key twice (YAML would silently keep the last).
sys.path.insert(0, os.path.join(workflow.basedir, "workflow"))
from prefgen.core.config import check_cross_keys, check_unique_keys

check_unique_keys(
    [
        *workflow.configfiles,
        *sorted(Path(workflow.basedir, "workflow", "profiles").rglob("*.yaml")),
    ]
)


validate(config, schema="workflow/schemas/config.schema.yaml")
# Values that contradict each other (both keys named), before any job starts.
check_cross_keys(
    config, source="config from " + ", ".join(map(str, workflow.configfiles))
)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/user_model.smk"
include: "workflow/rules/embeddings.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/premier.smk"
include: "workflow/rules/lpp.smk"
include: "workflow/rules/audit.smk"


rule all:
    input:
        all_targets(),
    default_target: True
