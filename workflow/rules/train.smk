# Generation (issue 5): the stand-in foundation (mini/smoke), the encoded training cache, and the
# one Diffusion-DPO adapter trainer (wildcard `method`, one entry of train.methods each).


def adapter_methods():
    """Adapter methods the run trains and samples (keys of train.methods)."""
    return list(config["train"]["methods"])


def generation_targets():
    """Final generation outputs for `all_targets()`: samples of base and every adapter method."""
    targets = [f"{RUN}/samples/{m}/index.parquet" for m in ["base", *adapter_methods()]]
    if not config["foundation"]["pretrained"]:
        targets.append(f"{RUN}/tables/foundation_quality.csv")
    return targets


def foundation_model():
    """What the generation rules load: the trained stand-in's folder, or the pretrained id."""
    return config["foundation"]["pretrained"] or f"{RUN}/models/foundation"


def foundation_input(wildcards):
    """The foundation as a rule input (nothing to wait for when it is a pretrained id)."""
    if config["foundation"]["pretrained"]:
        return {}
    return {"foundation": rules.foundation.output.model}


def method_embedding(wildcards):
    """The user-embedding file a method reads (embeddings/<name>.safetensors), if any."""
    name = config["train"]["methods"][wildcards.method].get("embedding")
    return {"embeddings": f"{RUN}/embeddings/{name}.safetensors"} if name else {}


def embedding_arg(wildcards, input):
    return f"--embeddings {input.embeddings}" if "embeddings" in input.keys() else ""


def train_params(wildcards):
    """train_adapter's config subset: the shared trainer keys and this method's entry only."""
    shared = {k: v for k, v in config["train"].items() if k != "methods"}
    method = {wildcards.method: config["train"]["methods"][wildcards.method]}
    return stage_params(seed=config["seed"], train={**shared, "methods": method})


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
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
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
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=1,
    params:
        cfg=stage_params(encode=config["encode"]),
        foundation=foundation_model(),
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
        final=f"{RUN}/adapters/{{method}}/final.json",
    log:
        f"{LOGS}/train_adapter/{{method}}.log",
    wildcard_constraints:
        method="|".join(adapter_methods()) or "none",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=1,
    params:
        cfg=train_params,
        foundation=foundation_model(),
        embeddings=embedding_arg,
    shell:
        "prefgen train-adapter --params {params.cfg:q} --method {wildcards.method}"
        " --foundation {params.foundation:q} --encoded {input.encoded}"
        " --image-index {input.image_index} --caption-index {input.caption_index}"
        " --pairs {input.pairs} --holdout {input.holdout} {params.embeddings}"
        " --out {output.final} --threads {threads} > {log} 2>&1"
