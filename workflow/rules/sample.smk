# Sampling (issue 5): every method (base = the frozen foundation, and each adapter method at the
# checkpoints of sample.steps) generates the evaluation set's (user, unseen prompt, seed) rows,
# with the same seeds across methods so comparisons are paired.


rule sample:
    input:
        unpack(sample_inputs),
        eval_set=rules.eval_set.output.eval_set,
    output:
        index=f"{RUN}/samples/{{method}}/index.parquet",
    log:
        f"{LOGS}/sample/{{method}}.log",
    wildcard_constraints:
        method="|".join(["base", *adapter_methods()]),
    conda:
        "../../envs/core.yaml"
    priority: PRIORITY_CHAIN
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=1,
    params:
        cfg=stage_params(sample=config["sample"]),
        foundation=foundation_model,
        adapter=adapter_arg,
        embeddings=embedding_arg,
    shell:
        "prefgen sample --params {params.cfg:q} --method {wildcards.method}"
        " --foundation {params.foundation:q} --eval-set {input.eval_set}"
        " {params.adapter} {params.embeddings} --out {output.index}"
        " --threads {threads} > {log} 2>&1"
