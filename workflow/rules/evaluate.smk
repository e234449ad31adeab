# Evaluation and the artifact bundle: judges score every sample, `evaluate` turns the
# scores into the win-rate / checkpoint / agreement tables and figures, `budgets` states what each
# trained method was given, `bundle` writes the run's README.md and MANIFEST.json. `make run`
# then writes report.html with `snakemake --report`. A sampled model (wildcard `model`) is `base`
# or `<method>/seed<k>`, one training seed of a trained method.


rule judge:
    input:
        index=f"{RUN}/samples/{{model}}/index.parquet",
        user_model=[
            f"{RUN}/models/clip",
            f"{RUN}/user_model/pasta.safetensors",
            f"{RUN}/user_model/population.safetensors",
            f"{RUN}/user_model/lambda.parquet",
        ],
        truth=truth_inputs(ORACLE_JUDGED),
    output:
        scores=f"{RUN}/scores/{{model}}.parquet",
    log:
        f"{LOGS}/judge/{{model}}.log",
    wildcard_constraints:
        model=MODEL_PATTERN,
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_CHAIN
    threads: scale_threads("judge")
    resources:
        **scale_resources("judge"),
    params:
        cfg=stage_params(judge=config["judge"]["core"]),
        run_dir=model_run_root("scores", depth=2),
        truth=truth_arg,
    shell:
        "prefgen judge --params {params.cfg:q} --index {input.index} --run-dir {params.run_dir}"
        " {params.truth} --out {output.scores} > {log} 2>&1"


# The paper-scale judges need packages that conflict with the core env (envs/judges.yaml): with
# `--sdm conda` Snakemake builds that env; locally `make judges-env` builds .venv-judges and the
# Makefile exports PREFGEN_JUDGES_PYTHON. prefgen is not installed there: workflow/ goes on
# PYTHONPATH (the workflow runs from the repository root).
rule judge_external:
    input:
        index=f"{RUN}/samples/{{model}}/index.parquet",
    output:
        scores=f"{RUN}/scores/external/{{model}}.parquet",
        env=f"{RUN}/scores/external/{{model}}.json",
    log:
        f"{LOGS}/judge_external/{{model}}.log",
    wildcard_constraints:
        model=MODEL_PATTERN,
    conda:
        "../../envs/judges.yaml"
    threads: scale_threads("judge_external")
    resources:
        **scale_resources("judge_external"),
    params:
        cfg=stage_params(judge=config["judge"]["external"]),
        run_dir=model_run_root("scores", depth=3),
    shell:
        "PYTHONPATH=workflow${{PYTHONPATH:+:$PYTHONPATH}} ${{PREFGEN_JUDGES_PYTHON:-python}}"
        " -m prefgen.cli judge-external --params {params.cfg:q} --index {input.index}"
        " --run-dir {params.run_dir} --out {output.scores} --env-out {output.env} > {log} 2>&1"


rule evaluate:
    input:
        scores=expand(f"{RUN}/scores/{{model}}.parquet", model=eval_models()),
        external=(
            expand(f"{RUN}/scores/external/{{model}}.parquet", model=eval_models())
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
        per_seed=report(
            f"{RUN}/tables/win_rates_per_seed.csv",
            caption="../report/evaluate_win_rates_per_seed.rst",
            category="Evaluation",
            subcategory="Tables",
        ),
        per_seed_other=multiext(f"{RUN}/tables/win_rates_per_seed", ".md", ".tex"),
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
        by_type=report(
            f"{RUN}/tables/scores_by_user_type.csv",
            caption="../report/evaluate_scores_by_user_type.rst",
            category="Evaluation",
            subcategory="Tables",
        ),
        by_type_other=multiext(f"{RUN}/tables/scores_by_user_type", ".md", ".tex"),
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
    conda:
        "../../envs/core.yaml"
    threads: scale_threads("evaluate")
    resources:
        **scale_resources("evaluate"),
    params:
        cfg=stage_params(
            evaluate=config["evaluate"],
            judges=all_judges(),
            scale=config["scale"],
            seed=config["seed"],
            grid_types=grid_types(),
        ),
        run_dir=run_root("win_rates", depth=2),
        truth=truth_arg,
        lambdas=lambdas_arg,
        tables=lambda wildcards, output: os.path.dirname(output.win_rates),
        figures=lambda wildcards, output: os.path.dirname(output.curves),
    shell:
        "prefgen evaluate --params {params.cfg:q} --scores {input.scores}"
        " --external {input.external} --run-dir {params.run_dir} {params.truth}"
        " {params.lambdas} --tables {params.tables} --figures {params.figures}"
        " > {log} 2>&1"


rule budgets:
    input:
        unpack(budget_inputs),
    output:
        table=report(
            f"{RUN}/tables/budgets.csv",
            caption="../report/evaluate_budgets.rst",
            category="Evaluation",
            subcategory="Tables",
        ),
        other=multiext(f"{RUN}/tables/budgets", ".md", ".tex"),
    log:
        f"{LOGS}/budgets/budgets.log",
    conda:
        "../../envs/core.yaml"
    threads: scale_threads("budgets")
    resources:
        **scale_resources("budgets"),
    params:
        cfg=stage_params(train_seeds=TRAIN_SEEDS),
        models=budget_models,
    shell:
        "prefgen budgets --params {params.cfg:q} {params.models} --out {output.table}"
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
    conda:
        "../../envs/core.yaml"
    threads: scale_threads("bundle")
    resources:
        **scale_resources("bundle"),
    params:
        cfg=stage_params(config=config),
        run_dir=run_root("manifest", depth=1),
    shell:
        "prefgen bundle --params {params.cfg:q} --run-dir {params.run_dir}"
        " --readme {output.readme} --manifest {output.manifest} > {log} 2>&1"
