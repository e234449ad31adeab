"""prefgen: personalized text-to-image generation (PIPE and its baselines) as one workflow.

The package mirrors the Snakemake DAG: one sub-package per stage family, each rule calling one
``prefgen <stage>`` command defined in :mod:`prefgen.cli`.
"""

__version__ = "0.1.0"
