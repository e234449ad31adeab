# Generation: the stand-in foundation (mini/smoke), the encoded training cache, and the
# one Diffusion-DPO adapter trainer (wildcards `method`, one entry of train.methods each, and
# `seed`, one entry of train.seeds: independent initialisation and data order per seed).


rule foundation:
    input:
        images=rules.ingest.output.images,
        pairs=rules.split_pipe.output.train,
    output:
        model=directory(f"{RUN}/models/foundation"),
        quality=report(
            f"{RUN}/tables/foundation_quality.csv",
            caption="../report/generation_foundation.rst",
            category="generation",
        ),
    log:
        f"{LOGS}/foundation/foundation.log",
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_LONGEST
    threads: scale_threads("foundation")
    resources:
        **scale_resources("foundation"),
    params:
        cfg=stage_params(seed=config["seed"], foundation=config["foundation"]),
    shell:
        "prefgen foundation --params {params.cfg:q} --images {input.images}"
        " --pairs {input.pairs} --out {output.model} --quality {output.quality}"
        " --threads {threads} > {log} 2>&1"


rule encode:
    input:
        unpack(foundation_input),
        images=rules.ingest.output.images,
        pairs=rules.split_pipe.output.train,
        holdout=rules.split_ppd.output.test_unseen,
    output:
        latents=f"{RUN}/cache/encoded/train.safetensors",
        image_index=f"{RUN}/cache/encoded/images.parquet",
        caption_index=f"{RUN}/cache/encoded/captions.parquet",
    log:
        f"{LOGS}/encode/encode.log",
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_LONGEST
    threads: scale_threads("encode")
    resources:
        **scale_resources("encode"),
    params:
        cfg=stage_params(encode=config["encode"]),
        foundation=foundation_model,
    shell:
        "prefgen encode --params {params.cfg:q} --foundation {params.foundation:q}"
        " --images {input.images} --pairs {input.pairs} --holdout {input.holdout}"
        " --out {output.latents} --image-index {output.image_index}"
        " --caption-index {output.caption_index} --threads {threads} > {log} 2>&1"


rule train_adapter:
    input:
        unpack(foundation_input),
        unpack(method_embedding),
        encoded=rules.encode.output.latents,
        image_index=rules.encode.output.image_index,
        caption_index=rules.encode.output.caption_index,
        pairs=rules.split_pipe.output.train,
        holdout=rules.split_ppd.output.test_unseen,
    output:
        final=f"{RUN}/adapters/{{method}}/seed{{seed}}/final.json",
    log:
        f"{LOGS}/train_adapter/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/train_adapter/{{method}}/seed{{seed}}.tsv"
    wildcard_constraints:
        method="|".join(adapter_methods()) or "none",
        seed=SEED_PATTERN,
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_CHAIN
    threads: scale_threads("train_adapter")
    resources:
        **scale_resources("train_adapter"),
    params:
        cfg=train_params,
        foundation=foundation_model,
        embeddings=embedding_arg,
        log_dir=f"{LOGS}/tensorboard",
        launch=train_launcher,
        process_threads=lambda wildcards, threads: process_threads(threads),
    shell:
        "{params.launch} train-adapter --params {params.cfg:q} --method {wildcards.method}"
        " --foundation {params.foundation:q} --encoded {input.encoded}"
        " --image-index {input.image_index} --caption-index {input.caption_index}"
        " --pairs {input.pairs} --holdout {input.holdout} {params.embeddings}"
        " --out {output.final} --log-dir {params.log_dir} --threads {params.process_threads}"
        " > {log} 2>&1"
