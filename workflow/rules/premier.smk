# Premier baseline: learnable user embeddings and a preference adapter that modulates
# the text tokens, trained by the shared trainer (`prefgen train-adapter`, conditioning
# `premier`, denoising objective + dispersion loss), then stage 2 (held-out users as combinations
# of training users) before sampling. Premier is not a key of train.methods: its sampler reads
# the stage-2 checkpoints, so it has its own train/sample rules around the same commands. Like
# the adapter methods, Premier is trained once per entry of train.seeds (wildcard `seed`: the
# initial user embeddings, the adapters' initialisation, the data order and the stage-2 fits);
# the history and ablation tables analyse the first seed only.


rule premier_init:
    input:
        pairs=rules.split_pipe.output.train,
        holdout=rules.split_ppd.output.test_unseen,
    output:
        emb=f"{RUN}/embeddings/{{variant}}_init/seed{{seed}}.safetensors",
    log:
        f"{LOGS}/premier_init/{{variant}}/seed{{seed}}.log",
    wildcard_constraints:
        variant="|".join(PREMIER_VARIANTS),
        seed=SEED_PATTERN,
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_CHAIN
    threads: scale_threads("premier_init")
    resources:
        **scale_resources("premier_init"),
    params:
        cfg=premier_init_params,
    shell:
        "prefgen premier-init --params {params.cfg:q} --pairs {input.pairs}"
        " --holdout {input.holdout} --out {output.emb} > {log} 2>&1"


rule train_premier:
    input:
        unpack(foundation_input),
        embeddings=rules.premier_init.output.emb,
        encoded=rules.encode.output.latents,
        image_index=rules.encode.output.image_index,
        caption_index=rules.encode.output.caption_index,
        pairs=rules.split_pipe.output.train,
        holdout=rules.split_ppd.output.test_unseen,
    output:
        final=f"{RUN}/adapters/{{variant}}/seed{{seed}}/final.json",
    log:
        f"{LOGS}/train_premier/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/train_premier/{{variant}}/seed{{seed}}.tsv"
    wildcard_constraints:
        variant="|".join(PREMIER_VARIANTS),
        seed=SEED_PATTERN,
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_CHAIN
    threads: scale_threads("train_premier")
    resources:
        **scale_resources("train_premier"),
    params:
        cfg=premier_train_params,
        foundation=foundation_model,
        log_dir=f"{LOGS}/tensorboard",
    shell:
        "prefgen train-adapter --params {params.cfg:q} --method premier"
        " --foundation {params.foundation:q} --encoded {input.encoded}"
        " --image-index {input.image_index} --caption-index {input.caption_index}"
        " --pairs {input.pairs} --holdout {input.holdout} --embeddings {input.embeddings}"
        " --out {output.final} --log-dir {params.log_dir} --threads {threads}"
        " > {log} 2>&1"


rule premier_new_users:
    input:
        unpack(foundation_input),
        adapter=f"{RUN}/adapters/premier/seed{{seed}}/final.json",
        init=f"{RUN}/embeddings/premier_init/seed{{seed}}.safetensors",
        pairs=rules.split_ppd.output.support,
        images=rules.ingest.output.images,
        eval_set=rules.eval_set.output.eval_set,
    output:
        final=f"{RUN}/adapters/premier_stage2/seed{{seed}}/final.json",
        emb=f"{RUN}/embeddings/premier/seed{{seed}}.safetensors",
    log:
        f"{LOGS}/premier_new_users/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/premier_new_users/seed{{seed}}.tsv"
    wildcard_constraints:
        seed=SEED_PATTERN,
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_CHAIN
    threads: scale_threads("premier_new_users")
    resources:
        **scale_resources("premier_new_users"),
    params:
        cfg=premier_new_users_params,
        foundation=foundation_model,
    shell:
        "prefgen premier-new-users --params {params.cfg:q} --foundation {params.foundation:q}"
        " --adapter {input.adapter} --init {input.init} --pairs {input.pairs}"
        " --images {input.images} --eval-set {input.eval_set} --out {output.final}"
        " --embeddings {output.emb} --threads {threads} > {log} 2>&1"


rule sample_premier:
    input:
        unpack(foundation_input),
        adapter=rules.premier_new_users.output.final,
        init=f"{RUN}/embeddings/premier_init/seed{{seed}}.safetensors",
        eval_set=rules.eval_set.output.eval_set,
    output:
        index=f"{RUN}/samples/premier/seed{{seed}}/index.parquet",
    log:
        f"{LOGS}/sample/premier/seed{{seed}}.log",
    wildcard_constraints:
        seed=SEED_PATTERN,
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_CHAIN
    threads: scale_threads("sample_premier")
    resources:
        **scale_resources("sample_premier"),
    params:
        cfg=stage_params(sample=config["sample"]),
        foundation=foundation_model,
    shell:
        "prefgen sample --params {params.cfg:q} --method premier --train-seed {wildcards.seed}"
        " --foundation {params.foundation:q} --eval-set {input.eval_set}"
        " --adapter {input.adapter} --embeddings {input.init} --out {output.index}"
        " --threads {threads} > {log} 2>&1"


rule premier_history:
    input:
        unpack(foundation_input),
        adapter=f"{RUN}/adapters/premier/seed{FIRST_SEED}/final.json",
        init=f"{RUN}/embeddings/premier_init/seed{FIRST_SEED}.safetensors",
        pairs=rules.split_ppd.output.test_unseen,
        images=rules.ingest.output.images,
        eval_set=rules.eval_set.output.eval_set,
        truth=truth_inputs(SYNTHETIC),
    output:
        table=report(
            f"{RUN}/tables/premier_history.csv",
            caption="../report/premier_history.rst",
            category="Premier",
        ),
        other=multiext(f"{RUN}/tables/premier_history", ".md", ".tex"),
    log:
        f"{LOGS}/premier_history/premier_history.log",
    conda:
        "../../envs/core.yaml"
    threads: scale_threads("premier_history")
    resources:
        **scale_resources("premier_history"),
    params:
        cfg=stage_params(
            seed=config["seed"],
            scale=config["scale"],
            premier={
                "history": config["premier"]["history"],
                "init_std": config["premier"]["init_std"],
            },
            evaluate={k: config["evaluate"][k] for k in ("bootstrap", "confidence")},
            sample=config["sample"],
        ),
        foundation=foundation_model,
        truth=truth_arg,
    shell:
        "prefgen premier-history --params {params.cfg:q} --foundation {params.foundation:q}"
        " --adapter {input.adapter} --init {input.init} --pairs {input.pairs}"
        " --images {input.images} --eval-set {input.eval_set} {params.truth}"
        " --out {output.table} --threads {threads} > {log} 2>&1"


rule premier_ablation:
    input:
        unpack(foundation_input),
        premier=f"{RUN}/adapters/premier/seed{FIRST_SEED}/final.json",
        no_dispersion=f"{RUN}/adapters/premier_no_dispersion/seed{FIRST_SEED}/final.json",
        init=f"{RUN}/embeddings/premier_init/seed{FIRST_SEED}.safetensors",
        eval_set=rules.eval_set.output.eval_set,
        user_model=[
            f"{RUN}/models/clip",
            f"{RUN}/user_model/pasta.safetensors",
            f"{RUN}/user_model/population.safetensors",
            f"{RUN}/user_model/lambda.parquet",
        ],
        truth=truth_inputs(SYNTHETIC),
    output:
        table=report(
            f"{RUN}/tables/premier_ablation.csv",
            caption="../report/premier_ablation.rst",
            category="Premier",
        ),
        other=multiext(f"{RUN}/tables/premier_ablation", ".md", ".tex"),
    log:
        f"{LOGS}/premier_ablation/premier_ablation.log",
    conda:
        "../../envs/core.yaml"
    threads: scale_threads("premier_ablation")
    resources:
        **scale_resources("premier_ablation"),
    params:
        cfg=stage_params(
            seed=config["seed"],
            scale=config["scale"],
            premier={"ablation": config["premier"]["ablation"]},
            evaluate={k: config["evaluate"][k] for k in ("bootstrap", "confidence")},
            sample=config["sample"],
        ),
        foundation=foundation_model,
        run_dir=run_root("table", depth=2),
        truth=truth_arg,
    shell:
        "prefgen premier-ablation --params {params.cfg:q} --foundation {params.foundation:q}"
        " --premier {input.premier} --no-dispersion {input.no_dispersion} --init {input.init}"
        " --eval-set {input.eval_set} --run-dir {params.run_dir} {params.truth}"
        " --out {output.table} --threads {threads} > {log} 2>&1"
