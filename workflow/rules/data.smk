# Data: the synthetic world (or real Pick-a-Pic v2 shards), the reader that validates
# and quarantines (`ingest`), the three papers' re-splits and the evaluation set of users x
# unseen prompts every generation method samples.


rule world:
    output:
        shards=directory(f"{RUN}/data/world"),
        world_json=report(
            f"{RUN}/data/truth/world.json",
            caption="../report/data_world.rst",
            category="data",
        ),
        users=f"{RUN}/data/truth/users.parquet",
    log:
        f"{LOGS}/world/world.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(seed=config["seed"], world=config.get("world")),
    threads: scale_threads("world")
    resources:
        **scale_resources("world"),
    shell:
        "prefgen world --params {params.cfg:q} --shards {output.shards}"
        " --world-json {output.world_json} --users {output.users} > {log} 2>&1"


rule ingest:
    input:
        unpack(ingest_inputs),
    output:
        pairs=f"{RUN}/data/clean/pairs.parquet",
        images=f"{RUN}/data/clean/images.parquet",
        quarantine=f"{RUN}/data/clean/quarantine.parquet",
        stats=report(
            f"{RUN}/data/clean/stats.json",
            caption="../report/data_ingest.rst",
            category="data",
        ),
    log:
        f"{LOGS}/ingest/ingest.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(data=config["data"]),
        shards=ingest_shards,
    threads: scale_threads("ingest")
    resources:
        **scale_resources("ingest"),
    shell:
        "prefgen ingest --params {params.cfg:q} --shards {params.shards:q}"
        " --pairs {output.pairs} --images {output.images} --quarantine {output.quarantine}"
        " --stats {output.stats} --threads {threads} > {log} 2>&1"


rule split_pipe:
    input:
        pairs=rules.ingest.output.pairs,
    output:
        train=f"{RUN}/splits/pipe/train.parquet",
        test=f"{RUN}/splits/pipe/test.parquet",
        unseen_prompts=f"{RUN}/splits/pipe/unseen_prompts.parquet",
        stats=report(
            f"{RUN}/splits/pipe/stats.json",
            caption="../report/data_split_pipe.rst",
            category="data",
        ),
    log:
        f"{LOGS}/split_pipe/split_pipe.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(
            seed=config["seed"],
            held_out=config["split"]["held_out"],
            pipe=config["split"]["pipe"],
        ),
        out=lambda wildcards, output: os.path.dirname(output.stats),
    threads: scale_threads("split_pipe")
    resources:
        **scale_resources("split_pipe"),
    shell:
        "prefgen split-pipe --params {params.cfg:q} --pairs {input.pairs} --out {params.out}"
        " > {log} 2>&1"


rule split_ppd:
    input:
        pairs=rules.ingest.output.pairs,
    output:
        train=f"{RUN}/splits/ppd/train.parquet",
        val=f"{RUN}/splits/ppd/val.parquet",
        test_seen=f"{RUN}/splits/ppd/test_seen.parquet",
        test_unseen=f"{RUN}/splits/ppd/test_unseen.parquet",
        support=f"{RUN}/splits/ppd/support.parquet",
        stats=report(
            f"{RUN}/splits/ppd/stats.json",
            caption="../report/data_split_ppd.rst",
            category="data",
        ),
    log:
        f"{LOGS}/split_ppd/split_ppd.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(
            seed=config["seed"],
            held_out=config["split"]["held_out"],
            ppd=config["split"]["ppd"],
        ),
        out=lambda wildcards, output: os.path.dirname(output.stats),
    threads: scale_threads("split_ppd")
    resources:
        **scale_resources("split_ppd"),
    shell:
        "prefgen split-ppd --params {params.cfg:q} --pairs {input.pairs} --out {params.out}"
        " > {log} 2>&1"


rule split_lpp:
    input:
        pairs=rules.ingest.output.pairs,
        pipe_train=rules.split_pipe.output.train,
    output:
        references=f"{RUN}/splits/lpp/references.parquet",
        episodes=f"{RUN}/splits/lpp/episodes.parquet",
        train_items=f"{RUN}/splits/lpp/train_items.parquet",
        user_model_train=f"{RUN}/splits/lpp/user_model_train.parquet",
        stats=report(
            f"{RUN}/splits/lpp/stats.json",
            caption="../report/data_split_lpp.rst",
            category="data",
        ),
    log:
        f"{LOGS}/split_lpp/split_lpp.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(
            seed=config["seed"],
            held_out=config["split"]["held_out"],
            lpp=config["split"]["lpp"],
        ),
        out=lambda wildcards, output: os.path.dirname(output.stats),
    threads: scale_threads("split_lpp")
    resources:
        **scale_resources("split_lpp"),
    shell:
        "prefgen split-lpp --params {params.cfg:q} --pairs {input.pairs}"
        " --pipe-train {input.pipe_train} --out {params.out}"
        " > {log} 2>&1"


rule eval_set:
    input:
        pipe_train=rules.split_pipe.output.train,
        unseen_prompts=rules.split_pipe.output.unseen_prompts,
        ppd_train=rules.split_ppd.output.train,
        support=rules.split_ppd.output.support,
        truth_users=truth_users(),
    output:
        eval_set=f"{RUN}/splits/eval_set.parquet",
    log:
        f"{LOGS}/eval_set/eval_set.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=stage_params(seed=config["seed"], eval_set=config["eval_set"]),
        truth=truth_users_arg,
    priority: PRIORITY_CHAIN
    threads: scale_threads("eval_set")
    resources:
        **scale_resources("eval_set"),
    shell:
        "prefgen eval-set --params {params.cfg:q} --pipe-train {input.pipe_train}"
        " --unseen-prompts {input.unseen_prompts} --ppd-train {input.ppd_train}"
        " --support {input.support} {params.truth}"
        " --out {output.eval_set} > {log} 2>&1"
