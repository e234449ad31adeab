# User model (PIPE §2-3.2): the CLIP model whose frozen encoders feed everything
# (`clip`), its embeddings of the PIPE split's images and captions (`features`), PASTA's K user
# types and the K=1 population model fitted by EM over users (`fit_pasta`; the `_lpp` variants
# are refitted without the LPP episodes' labels for the LPP table), every user's type
# weights lambda_u in one batched regression (`fit_lambda`), the preference-accuracy table
# (`preference_accuracy`) and, on the synthetic world, recovery of the planted truth.


rule clip:
    input:
        images=rules.ingest.output.images,
        pairs=rules.ingest.output.pairs,
        unseen_prompts=rules.split_pipe.output.unseen_prompts,
    output:
        model=directory(f"{RUN}/models/clip"),
        table=report(
            f"{RUN}/tables/clip_retrieval.csv",
            caption="../report/user_model_clip.rst",
            category="user model",
        ),
        md=f"{RUN}/tables/clip_retrieval.md",
        tex=f"{RUN}/tables/clip_retrieval.tex",
    log:
        f"{LOGS}/clip/clip.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(seed=config["seed"], clip=config["clip"]),
    priority: PRIORITY_CHAIN
    threads: scale_threads("clip")
    resources:
        **scale_resources("clip"),
    shell:
        "prefgen clip --params {params.cfg:q} --images {input.images} --pairs {input.pairs}"
        " --exclude-prompts {input.unseen_prompts} --out-dir {output.model}"
        " --table {output.table} --threads {threads} > {log} 2>&1"


rule features:
    input:
        clip=rules.clip.output.model,
        images=rules.ingest.output.images,
        train=rules.split_pipe.output.train,
        test=rules.split_pipe.output.test,
        support=rules.split_ppd.output.support,
    output:
        images=f"{RUN}/features/images.safetensors",
        image_index=f"{RUN}/features/images.parquet",
        captions=f"{RUN}/features/captions.safetensors",
        caption_index=f"{RUN}/features/captions.parquet",
    log:
        f"{LOGS}/features/features.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(features=config["features"]),
        out=lambda wildcards, output: os.path.dirname(output.images),
    priority: PRIORITY_CHAIN
    threads: scale_threads("features")
    resources:
        **scale_resources("features"),
    shell:
        "prefgen features --params {params.cfg:q} --clip-dir {input.clip}"
        " --images {input.images} --splits {input.train} {input.test} {input.support}"
        " --out-dir {params.out} --threads {threads} > {log} 2>&1"


rule fit_pasta:
    input:
        features=rules.features.output,
        train=pasta_train,
    output:
        model=f"{RUN}/user_model/{{variant}}.safetensors",
        meta=f"{RUN}/user_model/{{variant}}.json",
        em=report(
            f"{RUN}/user_model/{{variant}}_em.csv",
            caption="../report/user_model_em.rst",
            category="user model",
        ),
    log:
        f"{LOGS}/fit_pasta/{{variant}}.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=pasta_params,
        features=features_dir,
        kind=lambda wildcards: pasta_kind(wildcards.variant),
    wildcard_constraints:
        variant="pasta|population|pasta_lpp|population_lpp",
    priority: PRIORITY_CHAIN
    threads: scale_threads("fit_pasta")
    resources:
        **scale_resources("fit_pasta"),
    shell:
        "prefgen fit-pasta --params {params.cfg:q} --features {params.features}"
        " --train {input.train} --variant {params.kind} --model {output.model}"
        " --em-log {output.em} --threads {threads} > {log} 2>&1"


rule fit_lambda:
    input:
        features=rules.features.output,
        model=f"{RUN}/user_model/pasta.safetensors",
        train=rules.split_pipe.output.train,
        support=rules.split_ppd.output.support,
    output:
        lambdas=f"{RUN}/user_model/lambda.parquet",
        summary=f"{RUN}/user_model/lambda.json",
    log:
        f"{LOGS}/fit_lambda/fit_lambda.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(**{"lambda": config["lambda"]}),
        features=features_dir,
    priority: PRIORITY_CHAIN
    threads: scale_threads("fit_lambda")
    resources:
        **scale_resources("fit_lambda"),
    shell:
        "prefgen fit-lambda --params {params.cfg:q} --features {params.features}"
        " --model {input.model} --train {input.train} --support {input.support}"
        " --out {output.lambdas}"
        " --summary {output.summary} --threads {threads} > {log} 2>&1"


rule preference_accuracy:
    input:
        unpack(oracle_inputs),
        features=rules.features.output,
        pasta=f"{RUN}/user_model/pasta.safetensors",
        population=f"{RUN}/user_model/population.safetensors",
        lambdas=rules.fit_lambda.output.lambdas,
        lambda_summary=rules.fit_lambda.output.summary,
        train=rules.split_pipe.output.train,
        test=rules.split_pipe.output.test,
    output:
        table=report(
            f"{RUN}/tables/preference_accuracy.csv",
            caption="../report/user_model_accuracy.rst",
            category="user model",
        ),
        md=f"{RUN}/tables/preference_accuracy.md",
        tex=f"{RUN}/tables/preference_accuracy.tex",
        figure=report(
            f"{RUN}/figures/accuracy_vs_history.png",
            caption="../report/user_model_history.rst",
            category="user model",
        ),
        summary=f"{RUN}/user_model/preference_accuracy.json",
    log:
        f"{LOGS}/preference_accuracy/preference_accuracy.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(
            seed=config["seed"],
            scale=config["scale"],
            preference_accuracy={
                k: v
                for k, v in config["preference_accuracy"].items()
                if k not in ("recovery_min_pairs", "ceiling")
            },
        ),
        features=features_dir,
        oracle=oracle_args,
    threads: scale_threads("preference_accuracy")
    resources:
        **scale_resources("preference_accuracy"),
    shell:
        "prefgen preference-accuracy --params {params.cfg:q} --features {params.features}"
        " --pasta {input.pasta} --population {input.population} --lambdas {input.lambdas}"
        " --lambda-summary {input.lambda_summary} --train {input.train} --test {input.test}"
        " {params.oracle} --table {output.table} --figure {output.figure}"
        " --summary {output.summary} > {log} 2>&1"


rule user_model_recovery:
    input:
        features=rules.features.output,
        pasta=f"{RUN}/user_model/pasta.safetensors",
        lambdas=rules.fit_lambda.output.lambdas,
        test=rules.split_pipe.output.test,
        truth=rules.world.output.world_json,
        users=rules.world.output.users,
        images=rules.ingest.output.images,
    output:
        table=report(
            f"{RUN}/tables/user_model_recovery.csv",
            caption="../report/user_model_recovery.rst",
            category="user model",
        ),
    log:
        f"{LOGS}/user_model_recovery/user_model_recovery.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(
            preference_accuracy={
                "recovery_min_pairs": config["preference_accuracy"][
                    "recovery_min_pairs"
                ]
            }
        ),
        features=features_dir,
        truth=lambda wildcards, input: os.path.dirname(input.truth),
    threads: scale_threads("user_model_recovery")
    resources:
        **scale_resources("user_model_recovery"),
    shell:
        "prefgen user-model-recovery --params {params.cfg:q} --features {params.features}"
        " --pasta {input.pasta} --lambdas {input.lambdas} --test {input.test}"
        " --truth {params.truth} --images {input.images} --table {output.table} > {log} 2>&1"


rule user_model_ceiling:
    input:
        features=rules.features.output,
        train=rules.split_pipe.output.train,
        test=rules.split_pipe.output.test,
        truth=rules.world.output.world_json,
        users=rules.world.output.users,
        images=rules.ingest.output.images,
        accuracy=rules.preference_accuracy.output.table,
    output:
        table=report(
            f"{RUN}/tables/user_model_ceiling.csv",
            caption="../report/user_model_ceiling.rst",
            category="user model",
        ),
        md=f"{RUN}/tables/user_model_ceiling.md",
        tex=f"{RUN}/tables/user_model_ceiling.tex",
    log:
        f"{LOGS}/user_model_ceiling/user_model_ceiling.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(
            seed=config["seed"],
            pasta={"interaction": config["pasta"]["interaction"]},
            preference_accuracy={
                k: v
                for k, v in config["preference_accuracy"].items()
                if k != "recovery_min_pairs"
            },
            **{"lambda": config["lambda"]},
        ),
        features=features_dir,
        truth=lambda wildcards, input: os.path.dirname(input.truth),
    threads: scale_threads("user_model_ceiling")
    resources:
        **scale_resources("user_model_ceiling"),
    shell:
        "prefgen user-model-ceiling --params {params.cfg:q} --features {params.features}"
        " --train {input.train} --test {input.test} --truth {params.truth}"
        " --images {input.images} --accuracy {input.accuracy} --table {output.table}"
        " --threads {threads} > {log} 2>&1"
