# Evaluation and the artifact bundle (issue 6): judges score every sample, `evaluate` turns the
# scores into the win-rate / checkpoint / agreement tables and figures, `bundle` writes the run's
# README.md and MANIFEST.json. `make run` then writes report.html with `snakemake --report`.


def eval_methods():
    """Methods compared by `evaluate`: every method named in evaluate.pairs, first-seen order."""
    methods = []
    for pair in config["evaluate"]["pairs"]:
        methods += [m for m in pair if m not in methods]
    return methods


def external_judges_on():
    """The paper-scale judges (envs/judges.yaml) run only when the config lists some."""
    return bool(config["judge"]["external"]["judges"])


def all_judges():
    return config["judge"]["core"]["judges"] + config["judge"]["external"]["judges"]


def grid_types():
    """One sample grid per user type: the world's planted types, or the learned PASTA types."""
    if config["evaluate"]["grid"]["types_from"] == "truth":
        return int(config["world"]["n_types"])
    return int(config["pasta"]["n_types"])


def truth_inputs(needed):
    """The synthetic world's truth files, when a judge or the grids need them."""
    return [rules.world.output.world_json, rules.world.output.users] if needed else []


def truth_arg(needed):
    return f"--truth {RUN}/data/truth" if needed else ""


ORACLE_JUDGED = "oracle" in config["judge"]["core"]["judges"]
GRID_FROM_TRUTH = config["evaluate"]["grid"]["types_from"] == "truth"


def evaluate_targets():
    """The evaluation tables and the bundle index, for `all_targets()`."""
    return [
        f"{RUN}/tables/win_rates.csv",
        f"{RUN}/tables/checkpoint_metrics.csv",
        f"{RUN}/tables/judge_agreement.csv",
        f"{RUN}/figures/checkpoint_curves.png",
        f"{RUN}/MANIFEST.json",
        f"{RUN}/README.md",
    ]


def bundle_inputs(wildcards):
    """Every final target except the bundle's own files: the bundle runs last."""
    own = {f"{RUN}/MANIFEST.json", f"{RUN}/README.md"}
    return [t for t in all_targets() if str(t) not in own]


rule judge:
    input:
        index=rules.sample.output.index,
        user_model=[
            f"{RUN}/models/clip",
            f"{RUN}/user_model/pasta.safetensors",
            f"{RUN}/user_model/population.safetensors",
            f"{RUN}/user_model/lambda.parquet",
        ],
        truth=truth_inputs(ORACLE_JUDGED),
    output:
        scores=f"{RUN}/scores/{{method}}.parquet",
    log:
        f"{LOGS}/judge/{{method}}.log",
    wildcard_constraints:
        method="[A-Za-z0-9_]+",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cfg=stage_params(judge=config["judge"]["core"]),
        run_dir=RUN,
        truth=truth_arg(ORACLE_JUDGED),
    shell:
        "prefgen judge --params {params.cfg:q} --index {input.index} --run-dir {params.run_dir}"
        " {params.truth} --out {output.scores} > {log} 2>&1"


# The paper-scale judges need packages that conflict with the core env (envs/judges.yaml): with
# `--sdm conda` Snakemake builds that env; locally `make judges-env` builds .venv-judges and the
# Makefile exports PREFGEN_JUDGES_PYTHON. prefgen is not installed there: workflow/ goes on
# PYTHONPATH (the workflow runs from the repository root).
rule judge_external:
    input:
        index=rules.sample.output.index,
    output:
        scores=f"{RUN}/scores/external/{{method}}.parquet",
        env=f"{RUN}/scores/external/{{method}}.json",
    log:
        f"{LOGS}/judge_external/{{method}}.log",
    wildcard_constraints:
        method="[A-Za-z0-9_]+",
    conda:
        "../../envs/judges.yaml"
    threads: 4
    resources:
        mem_mb=32000,
        runtime=240,
        gpu=1,
    params:
        cfg=stage_params(judge=config["judge"]["external"]),
        run_dir=RUN,
    shell:
        "PYTHONPATH=workflow${{PYTHONPATH:+:$PYTHONPATH}} ${{PREFGEN_JUDGES_PYTHON:-python}}"
        " -m prefgen.cli judge-external --params {params.cfg:q} --index {input.index}"
        " --run-dir {params.run_dir} --out {output.scores} --env-out {output.env} > {log} 2>&1"


rule evaluate:
    input:
        scores=expand(f"{RUN}/scores/{{method}}.parquet", method=eval_methods()),
        external=(
            expand(f"{RUN}/scores/external/{{method}}.parquet", method=eval_methods())
            if external_judges_on()
            else []
        ),
        truth=truth_inputs(GRID_FROM_TRUTH),
        lambdas=[] if GRID_FROM_TRUTH else f"{RUN}/user_model/lambda.parquet",
    output:
        win_rates=report(
            f"{RUN}/tables/win_rates.csv",
            caption="../report/evaluate_win_rates.rst",
            category="Evaluation",
            subcategory="Tables",
        ),
        win_rates_other=multiext(f"{RUN}/tables/win_rates", ".md", ".tex"),
        checkpoint_metrics=report(
            f"{RUN}/tables/checkpoint_metrics.csv",
            caption="../report/evaluate_checkpoint_metrics.rst",
            category="Evaluation",
            subcategory="Tables",
        ),
        checkpoint_metrics_other=multiext(
            f"{RUN}/tables/checkpoint_metrics", ".md", ".tex"
        ),
        best_checkpoints=report(
            f"{RUN}/tables/best_checkpoints.csv",
            caption="../report/evaluate_best_checkpoints.rst",
            category="Evaluation",
            subcategory="Tables",
        ),
        best_checkpoints_other=multiext(f"{RUN}/tables/best_checkpoints", ".md", ".tex"),
        agreement=report(
            f"{RUN}/tables/judge_agreement.csv",
            caption="../report/evaluate_judge_agreement.rst",
            category="Evaluation",
            subcategory="Tables",
        ),
        agreement_other=multiext(f"{RUN}/tables/judge_agreement", ".md", ".tex"),
        curves=report(
            f"{RUN}/figures/checkpoint_curves.png",
            caption="../report/evaluate_checkpoint_curves.rst",
            category="Evaluation",
            subcategory="Figures",
        ),
        grids=[
            report(
                f"{RUN}/figures/samples_user_type{k}.png",
                caption="../report/evaluate_sample_grids.rst",
                category="Evaluation",
                subcategory="Samples",
            )
            for k in range(grid_types())
        ],
    log:
        f"{LOGS}/evaluate/evaluate.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=stage_params(
            evaluate=config["evaluate"],
            judges=all_judges(),
            scale=config["scale"],
            seed=config["seed"],
            grid_types=grid_types(),
        ),
        run_dir=RUN,
        truth=truth_arg(GRID_FROM_TRUTH),
        lambdas="" if GRID_FROM_TRUTH else f"--lambdas {RUN}/user_model/lambda.parquet",
    shell:
        "prefgen evaluate --params {params.cfg:q} --scores {input.scores}"
        " --external {input.external} --run-dir {params.run_dir} {params.truth}"
        " {params.lambdas} --tables {params.run_dir}/tables --figures {params.run_dir}/figures"
        " > {log} 2>&1"


rule bundle:
    input:
        bundle_inputs,
    output:
        manifest=report(
            f"{RUN}/MANIFEST.json",
            caption="../report/evaluate_manifest.rst",
            category="Bundle",
        ),
        readme=report(
            f"{RUN}/README.md",
            caption="../report/evaluate_readme.rst",
            category="Bundle",
        ),
    log:
        f"{LOGS}/bundle/bundle.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg=stage_params(config=config),
        run_dir=RUN,
    shell:
        "prefgen bundle --params {params.cfg:q} --run-dir {params.run_dir}"
        " --readme {output.readme} --manifest {output.manifest} > {log} 2>&1"
