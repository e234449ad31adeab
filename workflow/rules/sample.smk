# Sampling: every method (base = the frozen foundation, and each adapter method at the
# checkpoints of sample.steps, once per training seed) generates the evaluation set's (user,
# unseen prompt, seed) rows, with the same sampling seeds across methods and training seeds so
# comparisons are paired. base is sampled once and paired with every training seed.


rule sample_base:
    input:
        unpack(foundation_input),
        eval_set=rules.eval_set.output.eval_set,
    output:
        index=f"{RUN}/samples/base/index.parquet",
    log:
        f"{LOGS}/sample/base.log",
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_CHAIN
    threads: scale_threads("sample_base")
    resources:
        **scale_resources("sample_base"),
    params:
        cfg=stage_params(sample=config["sample"]),
        foundation=foundation_model,
    shell:
        "prefgen sample --params {params.cfg:q} --method base"
        " --foundation {params.foundation:q} --eval-set {input.eval_set}"
        " --out {output.index} --threads {threads} > {log} 2>&1"


rule sample:
    input:
        unpack(sample_inputs),
        eval_set=rules.eval_set.output.eval_set,
    output:
        index=f"{RUN}/samples/{{method}}/seed{{seed}}/index.parquet",
    log:
        f"{LOGS}/sample/{{method}}/seed{{seed}}.log",
    wildcard_constraints:
        method="|".join(adapter_methods()) or "none",
        seed=SEED_PATTERN,
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_CHAIN
    threads: scale_threads("sample")
    resources:
        **scale_resources("sample"),
    params:
        cfg=stage_params(sample=config["sample"]),
        foundation=foundation_model,
        embeddings=embedding_arg,
    shell:
        "prefgen sample --params {params.cfg:q} --method {wildcards.method}"
        " --train-seed {wildcards.seed} --foundation {params.foundation:q}"
        " --eval-set {input.eval_set} --adapter {input.adapter} {params.embeddings}"
        " --out {output.index} --threads {threads} > {log} 2>&1"
