# Helpers shared by every rules file: output root, per-rule config subsets, the final targets,
# then every stage's Python helpers (targets, input and params functions), grouped by rules
# file: `snakemake --lint` wants the rules files to hold rules only.
import json
import os

RUN = f"results/{config['run_name']}"
LOGS = f"logs/{config['run_name']}"
# Snakemake `benchmark:` files of the training rules: measured wall time, so outside the results
# bundle (a rerun changes them); tables/wall_seconds reads them.
BENCHMARKS = f"benchmarks/{config['run_name']}"
# Training seeds (train.seeds): every trained generation method is trained, sampled and judged
# once per seed; base (untrained) is sampled once. Upstream stages read config["seed"] only.
TRAIN_SEEDS = [int(s) for s in config["train"]["seeds"]]
FIRST_SEED = TRAIN_SEEDS[0]
SEED_PATTERN = "|".join(map(str, TRAIN_SEEDS))


def stage_params(**subsets):
    """The exact config subset a rule depends on, as one JSON string.

    Snakemake stores params with each output and reruns a rule when they change
    (`--rerun-triggers params`), so passing exactly this subset makes a changed key invalidate
    exactly the rules that read it. Keys are sorted so the string is stable.
    """
    return json.dumps(subsets, sort_keys=True)


# ---- Job amounts (the config's `resources:` block) -------------------------------------
# How much each job asks for comes from the config that chose the scale: `resources:` has one
# entry per rule (threads, mem_mb, runtime in minutes, gpu), so one Slurm profile serves smoke,
# mini and paper. mem_mb and runtime grow with each retry (the profile's `retries`).


def scale_amounts(rule):
    """The config's `resources` entry of `rule`; a clear error names a rule without one."""
    try:
        return config["resources"][rule]
    except KeyError:
        raise ValueError(
            f"config key resources.{rule} is missing: every rule that runs as a job needs its "
            f"threads, mem_mb, runtime and gpu under `resources:` (config from "
            f"{', '.join(map(str, workflow.configfiles))})"
        ) from None


def scale_threads(rule):
    """`threads:` of `rule` at this scale (resources.<rule>.threads)."""
    return int(scale_amounts(rule)["threads"])


def _grows_with_attempt(amount):
    """A resource callable: `amount` on the first attempt, `amount * k` on the k-th."""
    return lambda wildcards, attempt: amount * attempt


def scale_resources(rule):
    """`resources:` of `rule` at this scale: mem_mb and runtime (minutes) times the attempt,
    and `gpu` (GPUs for `sbatch --gpus`) only when the entry asks for one, so CPU jobs carry
    no GPU request at all."""
    amounts = scale_amounts(rule)
    resources = {
        "mem_mb": _grows_with_attempt(int(amounts["mem_mb"])),
        "runtime": _grows_with_attempt(int(amounts["runtime"])),
    }
    if int(amounts["gpu"]) > 0:
        resources["gpu"] = int(amounts["gpu"])
    return resources


# Scheduling priorities. On a 2-core laptop `all` is bound by total work, and the only idle
# time is a serial tail: if a chain that ends in `evaluate` starts late, one core waits for it.
# So the long chains go first (foundation -> encode -> adapters/Premier -> sample -> judge, and
# the user-model and VLM jobs that feed them); the tables nothing else reads (LPP, probe,
# recovery, Premier history/ablation) fill the gaps. On a cluster these only order ready jobs.
# PRIORITY_CHAIN also covers eval_set, a 1-second job every sample waits for (without it,
# sampling started at 636 s of 880).
PRIORITY_LONGEST = 50  # foundation, encode: every generation job waits for them
PRIORITY_CHAIN = 30  # jobs with a long chain of dependants before evaluate


def all_targets():
    """Everything `rule all` asks for; each stage family appends its final outputs."""
    targets = []
    targets += data_targets()
    targets += user_model_targets()
    targets += generation_targets()
    targets += evaluate_targets()
    targets += ppd_targets()
    targets += lpp_targets()
    targets += premier_targets()
    targets += [
        f"{RUN}/tables/contamination.csv",
        f"{RUN}/tables/budgets.csv",
        f"{RUN}/tables/wall_seconds.csv",
    ]
    return targets


# ---- Data (data.smk) ----------------------------------------------------------
SYNTHETIC = config["data"]["source"] == "synthetic"


def data_targets():
    """The data stage's final outputs, for `all_targets()`."""
    return [
        f"{RUN}/data/clean/stats.json",
        f"{RUN}/splits/pipe/stats.json",
        f"{RUN}/splits/ppd/stats.json",
        f"{RUN}/splits/lpp/stats.json",
        f"{RUN}/splits/eval_set.parquet",
    ]


def ingest_shards(wildcards, input):
    """The shards `ingest` reads: the world's (its input, synthetic) or data.path (pickapic)."""
    return str(input.shards) if SYNTHETIC else config["data"]["path"]


def ingest_inputs(wildcards):
    return {"shards": rules.world.output.shards} if SYNTHETIC else {}


def truth_users():
    """The world's users (for stratifying by planted type), when there is a world."""
    return [rules.world.output.users] if SYNTHETIC else []


def truth_users_arg(wildcards, input):
    """--truth-users for the rule's `truth_users` input (nothing when there is no world)."""
    return " ".join(f"--truth-users {path}" for path in input.truth_users)


# ---- User model (user_model.smk) ----------------------------------------------
def user_model_targets():
    """The user-model stage's final outputs, for `all_targets()`."""
    targets = [
        f"{RUN}/tables/clip_retrieval.csv",
        f"{RUN}/user_model/lambda.parquet",
        f"{RUN}/tables/preference_accuracy.csv",
        f"{RUN}/figures/accuracy_vs_history.png",
    ]
    if SYNTHETIC:
        targets.append(f"{RUN}/tables/user_model_recovery.csv")
        targets.append(f"{RUN}/tables/user_model_ceiling.csv")
    return targets


def pasta_kind(variant):
    """The model a fit_pasta variant is: `pasta` (K types) or `population` (K=1); the `_lpp`
    variants are the same models fitted on the LPP table's training set."""
    return variant.removesuffix("_lpp")


def pasta_train(wildcards):
    """PIPE train, or for the `_lpp` variants PIPE train without the LPP episodes' labels."""
    if wildcards.variant.endswith("_lpp"):
        return rules.split_lpp.output.user_model_train
    return rules.split_pipe.output.train


def pasta_params(wildcards):
    """fit_pasta's config subset: the population variant (K=1, one EM run) ignores n_types and
    restarts, so changing them reruns only the `pasta` variant."""
    pasta = dict(config["pasta"])
    if pasta_kind(wildcards.variant) == "population":
        pasta = {k: v for k, v in pasta.items() if k not in ("n_types", "restarts")}
    return stage_params(seed=config["seed"], pasta=pasta)


def oracle_inputs(wildcards):
    """The world's truth and the images the oracle scores (synthetic world only)."""
    if not SYNTHETIC:
        return {}
    return {
        "truth": rules.world.output.world_json,
        "images": rules.ingest.output.images,
    }


def features_dir(wildcards, input):
    """The features/ folder the CLIs read (--features): the parent of the rule's `features`
    input, which is the features rule's outputs or one of them."""
    features = input.features
    first = features if isinstance(features, str) else features[0]
    return os.path.dirname(first)


def oracle_args(wildcards, input):
    if not SYNTHETIC:
        return ""
    return f"--truth {os.path.dirname(input.truth)} --images {input.images}"


# ---- User embeddings and PPD (embeddings.smk) ---------------------------------
def ppd_targets():
    """PPD's final outputs for `all_targets()` (its embedding is pulled in by train_adapter)."""
    return [f"{RUN}/tables/user_embedding_probe.csv"]


def vlm_clip_input():
    """models/clip/ when the stand-in VLM's vision tower is initialised from it, else nothing."""
    vlm = config["vlm"]
    if vlm["model"] == "stand-in" and vlm["stand_in"]["vision_init"] == "clip":
        return rules.clip.output.model
    return []


def vlm_clip_arg(wildcards, input):
    """The --clip option for the stand-in's CLIP-initialised vision tower (empty otherwise)."""
    return f"--clip '{input.clip}'" if input.clip else ""


def vlm_pretrained():
    """True when PPD's stand-in VLM is instruction-tuned by the rule vlm_pretrain."""
    vlm = config["vlm"]
    return vlm["model"] == "stand-in" and vlm["pretrain"]["steps"] > 0


def vlm_stand_in_input():
    """models/vlm_stand_in/ (the pre-trained stand-in's weights) when vlm_pretrain runs."""
    return f"{RUN}/models/vlm_stand_in" if vlm_pretrained() else []


def vlm_stand_in_arg(wildcards, input):
    """The --vlm-stand-in option for the pre-trained stand-in (empty otherwise)."""
    return f"--vlm-stand-in '{input.stand_in}'" if input.stand_in else ""


# ---- Generation: foundation, encoding, adapter training (train.smk) -----------
def adapter_methods():
    """Adapter methods the run trains and samples (keys of train.methods)."""
    return list(config["train"]["methods"])


def trained_models(method):
    """The sampled models of a trained method, one per training seed: `<method>/seed<k>`."""
    return [f"{method}/seed{s}" for s in TRAIN_SEEDS]


def sampled_models(methods):
    """`base` (sampled once) and every training seed of each other method in `methods`."""
    models = []
    for m in methods:
        models += ["base"] if m == "base" else trained_models(m)
    return models


def generation_targets():
    """Final generation outputs for `all_targets()`: samples of base and of every adapter
    method's training seeds."""
    targets = [
        f"{RUN}/samples/{m}/index.parquet"
        for m in sampled_models(["base", *adapter_methods()])
    ]
    if not config["foundation"]["pretrained"]:
        targets.append(f"{RUN}/tables/foundation_quality.csv")
    return targets


def foundation_model(wildcards, input):
    """What the generation rules load: the trained stand-in's folder (their `foundation` input,
    see foundation_input) or the pretrained id."""
    if "foundation" in input.keys():
        return str(input.foundation)
    return config["foundation"]["pretrained"]


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


def shared_train_keys():
    """The trainer keys every train_adapter and train_premier job reads: `train` without the
    method table, the seed list and the process count (a launcher setting, train_launcher).
    """
    left_out = ("methods", "seeds", "processes")
    return {k: v for k, v in config["train"].items() if k not in left_out}


def train_params(wildcards):
    """train_adapter's config subset: the shared trainer keys, this method's entry only and the
    training seed (the list train.seeds is left out: adding a seed retrains nothing else; the
    process count is the launcher's, see train_launcher).
    """
    shared = shared_train_keys()
    method = {wildcards.method: config["train"]["methods"][wildcards.method]}
    return stage_params(
        seed=config["seed"],
        train_seed=int(wildcards.seed),
        train={**shared, "methods": method},
    )


def train_processes():
    """Training processes per train_adapter job (train.processes): one per GPU on a cluster."""
    return int(config["train"].get("processes", 1))


def process_threads(threads):
    """torch threads of each training process: the job's threads shared among its processes."""
    return max(1, int(threads) // train_processes())


def train_launcher(wildcards, threads):
    """How train_adapter starts the trainer: the CLI itself for one process, else
    `accelerate launch` with that many processes (DDP; gloo on CPU, NCCL on GPUs), the run's
    mixed precision, and port 0 so that jobs sharing a node each take a free port."""
    processes = train_processes()
    if processes == 1:
        return "prefgen"
    return (
        f"accelerate launch --multi_gpu --num_processes {processes} --num_machines 1"
        f" --mixed_precision {config['train']['mixed_precision']} --dynamo_backend no"
        f" --num_cpu_threads_per_process {process_threads(threads)} --main_process_port 0"
        " -m prefgen.cli"
    )


# ---- Sampling (sample.smk) ----------------------------------------------------
def sample_inputs(wildcards):
    """An adapter method's training seed: the foundation, its checkpoints and embeddings."""
    inputs = foundation_input(wildcards)
    inputs["adapter"] = (
        f"{RUN}/adapters/{wildcards.method}/seed{wildcards.seed}/final.json"
    )
    inputs.update(method_embedding(wildcards))
    return inputs


# ---- Evaluation and bundle (evaluate.smk) -------------------------------------
def eval_methods():
    """Methods compared by `evaluate`: every method named in evaluate.pairs, first-seen order."""
    methods = []
    for pair in config["evaluate"]["pairs"]:
        methods += [m for m in pair if m not in methods]
    return methods


def eval_models():
    """The sampled models `evaluate` reads scores of: base and every compared method's seeds."""
    return sampled_models(eval_methods())


# A judged model: base, or a training seed of a trained method (adapter methods and Premier).
MODEL_PATTERN = "base|(?:{})/seed(?:{})".format(
    "|".join([*adapter_methods(), "premier"]), SEED_PATTERN
)


def model_run_root(output_key, depth):
    """run_root for outputs under a `model` wildcard (`<method>/seed<k>` is
    one path component deeper than `base`)."""

    def run_dir(wildcards, output):
        return run_root(output_key, depth + wildcards.model.count("/"))(
            wildcards, output
        )

    return run_dir


def external_judges_on():
    """The paper-scale judges (envs/judges.yaml) run only when the config lists some."""
    return bool(config["judge"]["external"]["judges"])


def all_judges():
    return config["judge"]["core"]["judges"] + config["judge"]["external"]["judges"]


def grid_types():
    """One sample grid per user type: the world's planted types, or the learned PASTA types."""
    if config["evaluate"]["grid"]["types_from"] == "truth":
        return int(config["world"]["n_types"])
    return int(config["pasta"]["n_types"])


def truth_inputs(needed):
    """The synthetic world's truth files, when a judge or the grids need them."""
    return [rules.world.output.world_json, rules.world.output.users] if needed else []


def truth_arg(wildcards, input):
    """--truth <the world's truth folder> when the rule takes the truth files (truth_inputs)."""
    return f"--truth {os.path.dirname(input.truth[0])}" if input.truth else ""


def lambdas_arg(wildcards, input):
    """--lambdas <lambda.parquet> when the rule takes it (evaluate's grids from PASTA types)."""
    return f"--lambdas {input.lambdas}" if input.lambdas else ""


def run_root(output_key, depth):
    """A params function: the run folder (RUN) as the job sees it, read off its output
    `output_key`, which lies `depth` path components below RUN (scores/<m>.parquet: 2).

    Derived from the output rather than hard-coded so --run-dir follows the job's files wherever
    Snakemake puts them (storage plugins, no shared filesystem), as `snakemake --lint` asks.
    """

    def run_dir(wildcards, output):
        path = getattr(output, output_key)
        for _ in range(depth):
            path = os.path.dirname(path)
        return path

    return run_dir


ORACLE_JUDGED = "oracle" in config["judge"]["core"]["judges"]

GRID_FROM_TRUTH = config["evaluate"]["grid"]["types_from"] == "truth"


def evaluate_targets():
    """The evaluation tables and the bundle index, for `all_targets()`."""
    return [
        f"{RUN}/tables/win_rates.csv",
        f"{RUN}/tables/checkpoint_metrics.csv",
        f"{RUN}/tables/judge_agreement.csv",
        f"{RUN}/figures/checkpoint_curves.png",
        f"{RUN}/MANIFEST.json",
        f"{RUN}/README.md",
    ]


def bundle_inputs(wildcards):
    """Every final target except the bundle's own files: the bundle runs last."""
    own = {f"{RUN}/MANIFEST.json", f"{RUN}/README.md"}
    return [t for t in all_targets() if str(t) not in own]


# ---- Premier (premier.smk) ----------------------------------------------------
PREMIER_VARIANTS = ["premier", "premier_no_dispersion"]


def premier_targets():
    """Premier's final outputs for `all_targets()` (its samples come in through evaluate)."""
    return [
        *[f"{RUN}/samples/{m}/index.parquet" for m in trained_models("premier")],
        f"{RUN}/tables/premier_history.csv",
        f"{RUN}/tables/premier_ablation.csv",
    ]


def premier_model_cfg(variant):
    """The `premier` keys a variant's init file carries; the ablation zeroes the dispersion."""
    keys = ["user_tokens", "user_dim", "init_std", "adapter", "dispersion"]
    cfg = {k: config["premier"][k] for k in keys}
    if variant == "premier_no_dispersion":
        cfg["dispersion"] = {
            **cfg["dispersion"],
            "weight_shared": 0.0,
            "weight_distinct": 0.0,
        }
    return cfg


def premier_init_params(wildcards):
    return stage_params(
        seed=config["seed"],
        train_seed=int(wildcards.seed),
        premier=premier_model_cfg(wildcards.variant),
    )


def premier_new_users_params(wildcards):
    """Stage 2's config subset; the training seed seeds its fits (the liked history is drawn
    from the run seed, the same for every training seed)."""
    return stage_params(
        seed=config["seed"],
        train_seed=int(wildcards.seed),
        premier={"new_users": config["premier"]["new_users"]},
        sample={"steps": config["sample"]["steps"]},
    )


def premier_train_params(wildcards):
    """train_adapter's params for a Premier variant: the shared trainer keys, premier.train's
    overrides, and the method entry naming the variant's init file. Premier trains in one
    process (train.processes is train_adapter's)."""
    shared = shared_train_keys()
    method = {
        "conditioning": "premier",
        "embedding": f"{wildcards.variant}_init",
        "num_tokens": config["premier"]["user_tokens"],
        "user_dropout": 0.0,
    }
    return stage_params(
        seed=config["seed"],
        train_seed=int(wildcards.seed),
        train={**shared, **config["premier"]["train"], "methods": {"premier": method}},
    )


# ---- Training budgets (evaluate.smk) -------------------------------------------
def budget_entries():
    """(method, seed, stage, final.json, benchmark tsv) of every trained generation model."""
    entries = []
    for seed in TRAIN_SEEDS:
        for method in adapter_methods():
            entries.append(
                (
                    method,
                    seed,
                    "train",
                    f"{RUN}/adapters/{method}/seed{seed}/final.json",
                    f"{BENCHMARKS}/train_adapter/{method}/seed{seed}.tsv",
                )
            )
        entries.append(
            (
                "premier",
                seed,
                "train",
                f"{RUN}/adapters/premier/seed{seed}/final.json",
                f"{BENCHMARKS}/train_premier/premier/seed{seed}.tsv",
            )
        )
        entries.append(
            (
                "premier",
                seed,
                "new_users",
                f"{RUN}/adapters/premier_stage2/seed{seed}/final.json",
                f"{BENCHMARKS}/premier_new_users/seed{seed}.tsv",
            )
        )
    return entries


def budget_inputs(wildcards):
    return {
        "finals": [e[3] for e in budget_entries()],
        "benchmarks": [e[4] for e in budget_entries()],
    }


def budget_models(wildcards, input):
    """One `--entry method seed stage final.json benchmark.tsv` per trained model."""
    return " ".join(
        f"--entry {m} {s} {stage} {final} {bench}"
        for (m, s, stage, _, _), final, bench in zip(
            budget_entries(), input.finals, input.benchmarks
        )
    )


# ---- LPP (lpp.smk) ------------------------------------------------------------
def lpp_targets():
    """LPP's final outputs, for `all_targets()`."""
    return [
        f"{RUN}/tables/preference_prediction_topk.csv",
        f"{RUN}/tables/lpp_prototypes.csv",
        f"{RUN}/figures/lpp_prototypes.png",
    ]


LPP_STAND_IN = config["lpp"]["vlm"]["model"] == "stand-in"


def lpp_clip_input():
    """models/clip/ when LPP's stand-in VLM takes its vision tower from the mini CLIP."""
    if LPP_STAND_IN and config["vlm"]["stand_in"]["vision_init"] == "clip":
        return f"{RUN}/models/clip"
    return []


def lpp_clip_arg(wildcards, input):
    """--clip <models/clip> when the rule takes it (lpp_clip_input); nothing for a checkpoint
    VLM, whose rules have no CLIP input (an empty `--clip` would be an argument error).
    """
    return f"--clip {input.clip}" if input.clip else ""


def lpp_model_params(**extra):
    """What building an LPP model reads: the seed, the lpp keys training uses and, for the
    stand-in, PPD's stand-in shape (evaluation settings are left out: they never retrain).
    """
    lpp = {
        k: v
        for k, v in config["lpp"].items()
        if k not in ("evaluate", "prototypes", "variants")
    }
    subset = {"seed": config["seed"], "lpp": lpp, **extra}
    if LPP_STAND_IN:
        subset["vlm"] = {"stand_in": config["vlm"]["stand_in"]}
    return subset


def lpp_train_params(wildcards):
    return stage_params(**lpp_model_params(variant=wildcards.variant))


# ---- Contamination audit (audit.smk) --------------------------------------------
def split_source(path, labels=True):
    return {"kind": "split", "path": str(path), "labels": labels}


def adapter_source():
    """What every adapter trains on: PIPE train through the adapters' own filter."""
    return {
        "kind": "adapter_pairs",
        "path": str(rules.split_pipe.output.train),
        "holdout": str(rules.split_ppd.output.test_unseen),
    }


def contamination_spec():
    """Every consumer's training files (the rules' own inputs), where each is evaluated, and
    the evaluation sets: `prefgen audit-contamination` compares them."""
    pipe_train = rules.split_pipe.output.train
    support = rules.split_ppd.output.support
    clip = []
    if config["clip"]["source"] == "train":
        clip = [
            {
                "kind": "clean_pairs",
                "path": str(rules.clip.input.pairs),
                "exclude_prompts": str(rules.clip.input.unseen_prompts),
                "labels": config["clip"]["images"] == "preferred",
            }
        ]
    user_model = {"pipe_test": "preference_accuracy"}
    generation = "win_rates"
    consumers = {
        "clip": {
            "trains_on": clip,
            "evaluated_on": {
                "pipe_test": "features of every user model",
                "lpp_episodes": "clip_score row",
                "generation": "clip_score judge",
            },
        },
        "pasta_phi": {
            "trains_on": [split_source(pipe_train)],
            "evaluated_on": {**user_model, "generation": "pipe judge"},
        },
        "population": {
            "trains_on": [split_source(pipe_train)],
            "evaluated_on": {**user_model, "generation": "population judge"},
        },
        "lambda": {
            "trains_on": [split_source(pipe_train), split_source(support)],
            "evaluated_on": {**user_model, "generation": "pipe judge, pipe embeddings"},
        },
        "judge_pipe_checkpoint_selection": {
            "trains_on": [split_source(pipe_train), split_source(support)],
            "evaluated_on": {
                "generation": "pipe judge; selects every method's checkpoint"
            },
        },
        "pasta_phi_lpp": {
            "trains_on": [split_source(rules.split_lpp.output.user_model_train)],
            "evaluated_on": {"lpp_episodes": "preference_prediction_topk pipe row"},
        },
        "population_lpp": {
            "trains_on": [split_source(rules.split_lpp.output.user_model_train)],
            "evaluated_on": {
                "lpp_episodes": "preference_prediction_topk population row"
            },
        },
        "ppd_embedding": {
            "trains_on": [split_source(rules.vlm_embeddings.output.shots)],
            "evaluated_on": {"generation": generation},
        },
        "ppd_vlm_pretrain": {
            "trains_on": (
                [split_source(rules.vlm_pretrain.input.train)]
                if vlm_pretrained()
                else []
            ),
            "evaluated_on": {
                "generation": "every PPD embedding (the pre-trained stand-in VLM)"
            },
        },
        "premier_stage1_and_2": {
            "trains_on": [
                adapter_source(),
                split_source(rules.premier_new_users.input.pairs),
            ],
            "evaluated_on": {"generation": generation},
        },
        "premier_history": {
            "trains_on": [
                adapter_source(),
                split_source(rules.premier_history.input.pairs),
            ],
            "evaluated_on": {"generation": "premier_history"},
            "allowed": {
                "generation": "history-length analysis on unseen users' own likes, "
                "not a compared method"
            },
        },
        "user_probe": {
            "trains_on": [split_source(rules.user_embedding_probe.input.train)],
            "evaluated_on": {},
        },
    }
    if not config["foundation"]["pretrained"]:
        consumers["foundation"] = {
            "trains_on": [split_source(rules.foundation.input.pairs, labels=False)],
            "evaluated_on": {"generation": "every method's base model"},
        }
    for method in adapter_methods():
        consumers[f"adapter_{method}"] = {
            "trains_on": [adapter_source()],
            "evaluated_on": {"generation": generation},
        }
    for variant in config["lpp"]["variants"]:
        consumers[variant] = {
            "trains_on": [
                {
                    "kind": "lpp_items",
                    "path": str(rules.train_lpp.input.references),
                    "train_items": str(rules.train_lpp.input.train_items),
                }
            ],
            "evaluated_on": {"lpp_episodes": "preference_prediction_topk"},
        }
    if SYNTHETIC:
        consumers["user_model_ceiling"] = {
            "trains_on": [split_source(rules.user_model_ceiling.input.train)],
            "evaluated_on": {"pipe_test": "user_model_ceiling"},
        }
    sets = {
        "pipe_test": str(rules.split_pipe.output.test),
        "ppd_test_seen": str(rules.split_ppd.output.test_seen),
        "ppd_test_unseen": str(rules.split_ppd.output.test_unseen),
        "support": str(support),
        "lpp_episodes": str(rules.split_lpp.output.episodes),
        "lpp_references": str(rules.split_lpp.output.references),
        "clean_pairs": str(rules.ingest.output.pairs),
        "generation": str(rules.eval_set.output.eval_set),
    }
    return {"consumers": consumers, "evaluation_sets": sets}


def contamination_inputs(wildcards):
    """Every file the spec names, so the audit runs after all of them exist."""
    spec = contamination_spec()
    paths = set(spec["evaluation_sets"].values())
    for consumer in spec["consumers"].values():
        for src in consumer["trains_on"]:
            paths |= {
                str(src[k])
                for k in ("path", "holdout", "exclude_prompts", "train_items")
                if src.get(k)
            }
    return sorted(paths)
