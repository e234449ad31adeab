# User embeddings: one vector per user, embeddings/<name>.safetensors
# (user_ids, emb), read by the adapter methods of train.methods that name them.


rule user_embeddings:
    input:
        pasta=f"{RUN}/user_model/pasta.safetensors",
        pasta_meta=f"{RUN}/user_model/pasta.json",
        lambdas=f"{RUN}/user_model/lambda.parquet",
    output:
        emb=f"{RUN}/embeddings/pipe.safetensors",
    log:
        f"{LOGS}/user_embeddings/user_embeddings.log",
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_CHAIN
    threads: scale_threads("user_embeddings")
    resources:
        **scale_resources("user_embeddings"),
    params:
        cfg=stage_params(),
    shell:
        "prefgen user-embeddings --params {params.cfg:q} --pasta {input.pasta}"
        " --lambdas {input.lambdas} --out {output.emb} > {log} 2>&1"


# PPD: few-shot VLM user embeddings and the user-classification probe (PPD Fig. 2).


# The stand-in VLM's instruction tuning on training users' PPD prompts (mini/smoke only).
rule vlm_pretrain:
    input:
        train=rules.split_ppd.output.train,
        images=rules.ingest.output.images,
        clip=vlm_clip_input(),
    output:
        model=directory(f"{RUN}/models/vlm_stand_in"),
    log:
        f"{LOGS}/vlm_pretrain/vlm_pretrain.log",
    conda:
        "../../envs/vlm.yaml"
    priority: PRIORITY_CHAIN
    threads: scale_threads("vlm_pretrain")
    resources:
        **scale_resources("vlm_pretrain"),
    params:
        cfg=stage_params(
            seed=config["seed"],
            vlm=config["vlm"],
            ppd={"embedding": config["ppd"]["embedding"]},
        ),
        clip=vlm_clip_arg,
    shell:
        "prefgen vlm-pretrain --params {params.cfg:q} --train {input.train:q}"
        " --images {input.images:q} {params.clip} --out-dir {output.model:q}"
        " --threads {threads} > {log} 2>&1"


rule vlm_embeddings:
    input:
        train=rules.split_ppd.output.train,
        support=rules.split_ppd.output.support,
        images=rules.ingest.output.images,
        clip=vlm_clip_input(),
        stand_in=vlm_stand_in_input(),
    output:
        emb=f"{RUN}/embeddings/ppd.safetensors",
        shots=f"{RUN}/embeddings/ppd_shots.parquet",
        stats=f"{RUN}/embeddings/ppd_stats.json",
    log:
        f"{LOGS}/vlm_embeddings/vlm_embeddings.log",
    conda:
        "../../envs/vlm.yaml"
    priority: PRIORITY_CHAIN
    threads: scale_threads("vlm_embeddings")
    resources:
        **scale_resources("vlm_embeddings"),
    params:
        cfg=stage_params(
            seed=config["seed"],
            vlm=config["vlm"],
            ppd={"embedding": config["ppd"]["embedding"]},
        ),
        clip=vlm_clip_arg,
        stand_in=vlm_stand_in_arg,
    shell:
        "prefgen vlm-embeddings --params {params.cfg:q} --train {input.train:q}"
        " --support {input.support:q} --images {input.images:q} {params.clip} {params.stand_in}"
        " --out {output.emb:q} --shots {output.shots:q} --stats {output.stats:q} > {log} 2>&1"


rule user_embedding_probe:
    input:
        train=rules.split_ppd.output.train,
        images=rules.ingest.output.images,
        clip=vlm_clip_input(),
        stand_in=vlm_stand_in_input(),
        features=rules.features.output.images,
        pasta=f"{RUN}/user_model/pasta.safetensors",
        pasta_meta=f"{RUN}/user_model/pasta.json",
    output:
        table=report(
            f"{RUN}/tables/user_embedding_probe.csv",
            caption="../report/embeddings_user_embedding_probe.rst",
            category="user embeddings",
        ),
        md=f"{RUN}/tables/user_embedding_probe.md",
        tex=f"{RUN}/tables/user_embedding_probe.tex",
        draws=f"{RUN}/embeddings/probe_draws.parquet",
    log:
        f"{LOGS}/user_embedding_probe/user_embedding_probe.log",
    conda:
        "../../envs/vlm.yaml"
    threads: scale_threads("user_embedding_probe")
    resources:
        **scale_resources("user_embedding_probe"),
    params:
        cfg=stage_params(
            seed=config["seed"],
            vlm=config["vlm"],
            ppd=config["ppd"],
            **{"lambda": config["lambda"]},
        ),
        clip=vlm_clip_arg,
        stand_in=vlm_stand_in_arg,
        stem=lambda wildcards, output: os.path.splitext(output.table)[0],
        features=features_dir,
    shell:
        "prefgen user-embedding-probe --params {params.cfg:q} --train {input.train:q}"
        " --images {input.images:q} {params.clip} {params.stand_in} --features {params.features:q}"
        " --pasta {input.pasta:q} --out {params.stem:q} --draws {output.draws:q} > {log} 2>&1"
