"""``prefgen <stage>``: the one entry point every Snakemake rule calls.

Each stage module exposes ``add_arguments(parser)`` and ``run(args)`` (``args.params`` is
the parsed JSON config subset, ``args._command`` the command name, for modules serving
several); modules are imported only when their command runs, so ``prefgen world`` never pays
for importing torch or diffusers.
The reader's commands (``READER_COMMANDS``: ``generate``, ``score``, ``compare-verdicts``) are
not rules: they take no ``--params`` and read what they need from finished run folders; bad input
ends in a one-line error, not a traceback.
Rule names map to commands one to one (``split_pipe`` -> ``prefgen split-pipe``), and to the
module listed here, so a newcomer goes from a rule to its code in one step.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from prefgen.core.config import ConfigError, InputError

#: command -> module implementing it (module has add_arguments(parser) and run(args)).
COMMANDS: dict[str, str] = {
    "world": "prefgen.data.world",
    "ingest": "prefgen.data.ingest",
    "split-pipe": "prefgen.data.splits",
    "split-ppd": "prefgen.data.splits",
    "split-lpp": "prefgen.data.splits",
    "eval-set": "prefgen.data.eval_set",
    "clip": "prefgen.user_model.clip",
    "features": "prefgen.user_model.features",
    "fit-pasta": "prefgen.user_model.pasta",
    "fit-lambda": "prefgen.user_model.lambda_fit",
    "preference-accuracy": "prefgen.user_model.accuracy",
    "user-model-recovery": "prefgen.user_model.recovery",
    "user-model-ceiling": "prefgen.user_model.ceiling",
    "foundation": "prefgen.generation.foundation",
    "encode": "prefgen.generation.encode",
    "user-embeddings": "prefgen.embeddings.pipe",
    "vlm-pretrain": "prefgen.embeddings.vlm_pretrain",
    "vlm-embeddings": "prefgen.embeddings.ppd",
    "user-embedding-probe": "prefgen.embeddings.probe",
    "train-adapter": "prefgen.generation.train_adapter",
    "premier-init": "prefgen.premier.premier_init",
    "premier-new-users": "prefgen.premier.premier_new_users",
    "premier-history": "prefgen.premier.premier_history",
    "premier-ablation": "prefgen.premier.premier_ablation",
    "sample": "prefgen.generation.sample",
    "judge": "prefgen.evaluation.judge",
    "judge-external": "prefgen.evaluation.judge",
    "evaluate": "prefgen.evaluation.evaluate",
    "budgets": "prefgen.evaluation.budgets",
    "bundle": "prefgen.evaluation.bundle",
    "audit-contamination": "prefgen.evaluation.contamination",
    "train-lpp": "prefgen.lpp.train_lpp",
    "lpp-evaluate": "prefgen.lpp.lpp_evaluate",
    "lpp-prototypes": "prefgen.lpp.prototypes",
    "generate": "prefgen.generation.generate",
    "score": "prefgen.evaluation.score",
    "compare-verdicts": "prefgen.evaluation.replication",
    "rehearsal-assets": "prefgen.rehearsal",
}
#: commands for readers of a finished run (no --params; see the module docstring)
READER_COMMANDS = {"generate", "score", "compare-verdicts"}
#: commands run before a workflow, not by a rule (no --params: they read a config file)
SETUP_COMMANDS = {"rehearsal-assets"}


def build_parser(command: str) -> argparse.ArgumentParser:
    module = importlib.import_module(COMMANDS[command])
    parser = argparse.ArgumentParser(
        prog=f"prefgen {command}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if command not in READER_COMMANDS | SETUP_COMMANDS:
        parser.add_argument(
            "--params",
            required=True,
            help="JSON object: the rule's config subset (Snakemake passes it)",
        )
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run, _command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        print(
            "usage: prefgen <command> --params JSON [options]\n"
            "       prefgen generate|score [options]   (a finished run's models)\n"
            "       prefgen compare-verdicts RUN_A RUN_B   (two runs' conclusions)\n\n"
            "commands:"
        )
        for name, module in COMMANDS.items():
            print(f"  {name:22s} {module}")
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    args = build_parser(argv[0]).parse_args(argv[1:])
    from prefgen.core.config import parse_params
    from prefgen.core.io import OutputWriteError

    reader = argv[0] in READER_COMMANDS
    setup = argv[0] in SETUP_COMMANDS
    # a bad config, refused input data or an output that cannot be written: one line, exit 2
    errors: tuple[type[Exception], ...] = (ConfigError, InputError, OutputWriteError)
    if reader:
        errors += (ValueError, KeyError, FileNotFoundError)
    try:
        if not (reader or setup):
            args.params = parse_params(args.params)
        args._run(args)
    except errors as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # no quotes
        print(f"prefgen {argv[0]}: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
