# LPP baseline: a VLM preference predictor with latent preference prototypes, trained per variant
# (full, without prototypes, without L_aux), evaluated by top-K accuracy on the split_lpp
# episodes against PIPE's user model refitted without the episodes' labels (fit_pasta's `_lpp`
# variants), and its prototypes analysed (LPP Fig. 3 in kind).


rule train_lpp:
    input:
        references=rules.split_lpp.output.references,
        train_items=rules.split_lpp.output.train_items,
        images=rules.ingest.output.images,
        clip=lpp_clip_input(),
    output:
        model=directory(f"{RUN}/models/lpp/{{variant}}"),
    log:
        f"{LOGS}/train_lpp/{{variant}}.log",
    wildcard_constraints:
        variant="lpp|lpp_no_prototypes|lpp_no_aux",
    conda:
        "../../envs/vlm.yaml"
    threads: scale_threads("train_lpp")
    resources:
        **scale_resources("train_lpp"),
    params:
        cfg=lpp_train_params,
    shell:
        "prefgen train-lpp --params {params.cfg:q} --references {input.references:q}"
        " --train-items {input.train_items:q} --images {input.images:q} --clip {input.clip:q}"
        " --out {output.model:q} --threads {threads} > {log} 2>&1"


rule lpp_evaluate:
    input:
        episodes=rules.split_lpp.output.episodes,
        references=rules.split_lpp.output.references,
        images=rules.ingest.output.images,
        models=expand(
            f"{RUN}/models/lpp/{{variant}}", variant=config["lpp"]["variants"]
        ),
        clip=f"{RUN}/models/clip",
        pasta=f"{RUN}/user_model/pasta_lpp.safetensors",
        pasta_meta=f"{RUN}/user_model/pasta_lpp.json",
        population=f"{RUN}/user_model/population_lpp.safetensors",
        population_meta=f"{RUN}/user_model/population_lpp.json",
        truth=truth_inputs(SYNTHETIC),
    output:
        table=report(
            f"{RUN}/tables/preference_prediction_topk.csv",
            caption="../report/lpp_preference_prediction_topk.rst",
            category="LPP",
        ),
        other=multiext(f"{RUN}/tables/preference_prediction_topk", ".md", ".tex"),
        hits=f"{RUN}/lpp/episode_hits.parquet",
    log:
        f"{LOGS}/lpp_evaluate/lpp_evaluate.log",
    conda:
        "../../envs/vlm.yaml"
    threads: scale_threads("lpp_evaluate")
    resources:
        **scale_resources("lpp_evaluate"),
    params:
        cfg=stage_params(
            seed=config["seed"],
            scale=config["scale"],
            lpp={"evaluate": config["lpp"]["evaluate"]},
            **{"lambda": config["lambda"]},
        ),
        stem=lambda wildcards, output: os.path.splitext(output.table)[0],
        truth=truth_arg,
    shell:
        "prefgen lpp-evaluate --params {params.cfg:q} --episodes {input.episodes:q}"
        " --references {input.references:q} --images {input.images:q} --models {input.models:q}"
        " --clip {input.clip:q} --pasta {input.pasta:q} --population {input.population:q}"
        " {params.truth} --table {params.stem:q} --hits {output.hits:q} --threads {threads}"
        " > {log} 2>&1"


rule lpp_prototypes:
    input:
        model=f"{RUN}/models/lpp/lpp",
        episodes=rules.split_lpp.output.episodes,
        references=rules.split_lpp.output.references,
        images=rules.ingest.output.images,
        clip=lpp_clip_input(),
        truth=[rules.world.output.world_json] if SYNTHETIC else [],
        truth_users=truth_users(),
    output:
        table=report(
            f"{RUN}/tables/lpp_prototypes.csv",
            caption="../report/lpp_prototypes_table.rst",
            category="LPP",
        ),
        other=multiext(f"{RUN}/tables/lpp_prototypes", ".md", ".tex"),
        patterns=f"{RUN}/lpp/prototype_patterns.parquet",
        figure=report(
            f"{RUN}/figures/lpp_prototypes.png",
            caption="../report/lpp_prototypes_figure.rst",
            category="LPP",
        ),
    log:
        f"{LOGS}/lpp_prototypes/lpp_prototypes.log",
    conda:
        "../../envs/vlm.yaml"
    threads: scale_threads("lpp_prototypes")
    resources:
        **scale_resources("lpp_prototypes"),
    params:
        cfg=stage_params(
            seed=config["seed"], lpp={"prototypes": config["lpp"]["prototypes"]}
        ),
        stem=lambda wildcards, output: os.path.splitext(output.table)[0],
        truth=truth_users_arg,
    shell:
        "prefgen lpp-prototypes --params {params.cfg:q} --model {input.model:q}"
        " --episodes {input.episodes:q} --references {input.references:q}"
        " --images {input.images:q} --clip {input.clip:q} {params.truth} --table {params.stem:q}"
        " --patterns {output.patterns:q} --figure {output.figure:q} --threads {threads}"
        " > {log} 2>&1"
