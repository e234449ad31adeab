"""Loading and validating the experiment config against ``workflow/schemas/config.schema.yaml``.

Snakemake validates the config itself (``snakemake.utils.validate`` in the Snakefile) before any
job starts; this module gives the package and the tests the same check outside Snakemake, with
errors that name the offending key path. The Snakefile also calls :func:`check_unique_keys` on
every YAML it reads (a repeated key would otherwise silently keep the last value) and
:func:`check_cross_keys` on the merged config (values that contradict each other).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that does not match the schema; the message names the key and what was expected."""


class InputError(ValueError):
    """Input data a stage refuses (a broken shard, say); the message names the file and what
    was expected. ``prefgen`` prints it as one line and exits 2, like a :class:`ConfigError`."""


class DuplicateKeyError(ConfigError):
    """A YAML mapping that defines the same key twice; the message names file, key and lines."""


def duplicate_keys(path: str | Path) -> list[str]:
    """One message per key defined twice in the same mapping of the YAML file ``path``.

    PyYAML keeps the last of two equal keys without a word, so a block pasted twice silently
    overrides the first. The file is composed into nodes (which keep their line numbers) and
    every mapping, at any depth and inside lists, is checked; keys are compared by their
    constructed value, so ``1`` and ``"1"`` are different keys as YAML says.
    """
    path = Path(path)
    text = path.read_text()
    loader = yaml.SafeLoader(text)
    found: list[str] = []

    def walk(node: yaml.Node, key_path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = _key_value(loader, key_node)
                line = key_node.start_mark.line + 1
                child = f"{key_path}.{key}" if key_path else str(key)
                if key in first_line:
                    found.append(
                        f"{path}: duplicate key '{child}' at line {line} (first defined at line "
                        f"{first_line[key]}); YAML would silently keep the second value: merge "
                        "the two into one"
                    )
                else:
                    first_line[key] = line
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{key_path}[{i}]")

    try:
        root = loader.get_single_node()
        if root is not None:
            walk(root, "")
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    return found


def _key_value(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """A mapping key as YAML means it (scalars constructed; other keys by their source text)."""
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_object(node)
    return f"<{node.tag} at line {node.start_mark.line + 1}>"


def check_unique_keys(paths: list[str | Path] | tuple[str | Path, ...]) -> None:
    """Raise :class:`DuplicateKeyError` listing every duplicate key in any of ``paths``."""
    found = [msg for path in paths for msg in duplicate_keys(path)]
    if found:
        raise DuplicateKeyError("\n".join(found))


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate ``config`` in place (filling schema defaults) or raise :class:`ConfigError`."""
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(load_schema())
    validator = _extend_with_defaults(validator_cls)(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
            lines.append(f"{source}: key '{key}': {err.message}")
        raise ConfigError("\n".join(lines))
    return config


#: Keys that ask for the synthetic world's planted truth (it does not exist for real data).
TRUTH_KEYS = (
    ("judge.core.judges", lambda c: "oracle" in c["judge"]["core"]["judges"], "drop oracle"),
    (
        "evaluate.reference_judge",
        lambda c: c["evaluate"]["reference_judge"] == "oracle",
        "use pipe or null",
    ),
    ("evaluate.select_by", lambda c: c["evaluate"]["select_by"] == "oracle", "use pipe"),
    (
        "evaluate.grid.types_from",
        lambda c: c["evaluate"]["grid"]["types_from"] == "truth",
        "use lambda",
    ),
    (
        "evaluate.grid.annotate",
        lambda c: c["evaluate"]["grid"]["annotate"] == "oracle",
        "use pipe or null",
    ),
    (
        "premier.history.prompts",
        lambda c: c["premier"]["history"]["prompts"] > 0,
        "set 0 (its sampled prompts are scored by the oracle)",
    ),
)


def cross_key_errors(
    config: dict[str, Any], check_paths: bool = True, root: str | Path = "."
) -> list[str]:
    """Every pair of values in a schema-valid ``config`` that cannot both hold, one message each
    naming both keys. ``check_paths`` also checks that ``data.path`` (relative to ``root``, the
    workflow's working directory) finds Pick-a-Pic shards when ``data.source`` is pickapic."""
    errors = []
    split, ev = config["split"], config["eval_set"]
    held = split["held_out"]
    if ev["prompts"] > held["prompts"]:
        errors.append(
            f"eval_set.prompts={ev['prompts']} > split.held_out.prompts="
            f"{held['prompts']}: the evaluation prompts are drawn from the unseen "
            "prompts; lower the first or raise the second"
        )
    if ev["unseen_users"] > 0 and held["user_fraction"] == 0:
        errors.append(
            f"eval_set.unseen_users={ev['unseen_users']} but "
            "split.held_out.user_fraction=0: no user is held out to draw them from"
        )
    if config["data"]["source"] == "synthetic" and held["user_fraction"] > 0:
        n_users = config["world"]["n_users"]
        # at most round(fraction x n_users) users are held out (only users with min_pairs
        # pairs are eligible), and seen users are drawn from the rest
        most_unseen = round(held["user_fraction"] * n_users)
        if ev["unseen_users"] > most_unseen:
            errors.append(
                f"eval_set.unseen_users={ev['unseen_users']} > the at most "
                f"{most_unseen} held-out users of split.held_out.user_fraction="
                f"{held['user_fraction']} x world.n_users={n_users}"
            )
        if ev["seen_users"] > n_users - most_unseen:
            errors.append(
                f"eval_set.seen_users={ev['seen_users']} > the at most "
                f"{n_users - most_unseen} users not held out (world.n_users={n_users},"
                f" split.held_out.user_fraction={held['user_fraction']})"
            )
    lpp = split["lpp"]
    if lpp["min_liked"] <= lpp["n_ref"]:
        errors.append(
            f"split.lpp.min_liked={lpp['min_liked']} <= split.lpp.n_ref={lpp['n_ref']}:"
            " each LPP user needs n_ref reference likes plus at least one to test"
        )
    n_shots = config["ppd"]["embedding"]["n_shots"]
    if n_shots > held["min_pairs"]:
        errors.append(
            f"ppd.embedding.n_shots={n_shots} > split.held_out.min_pairs="
            f"{held['min_pairs']}: held-out users may have fewer pairs than PPD's "
            "few-shot examples; raise min_pairs to at least n_shots"
        )
    support = held["support_pairs"]
    if support > held["min_pairs"]:
        errors.append(
            f"split.held_out.support_pairs={support} > split.held_out.min_pairs="
            f"{held['min_pairs']}: a held-out user may have fewer non-tie pairs than "
            "one support set; lower support_pairs or raise min_pairs"
        )
    if n_shots > support:
        errors.append(
            f"ppd.embedding.n_shots={n_shots} > split.held_out.support_pairs="
            f"{support}: PPD draws an unseen user's shots from the support set, the "
            "only pairs of theirs any method sees; lower n_shots or raise support_pairs"
        )
    train = config["train"]
    processes = train.get("processes", 1)
    if train["batch_size"] % processes:
        errors.append(
            f"train.batch_size={train['batch_size']} is not divisible by train.processes="
            f"{processes}: every process takes an equal share of each micro-batch"
        )
    if config["data"]["source"] == "pickapic":
        path = config["data"].get("path")
        if check_paths and not path:
            errors.append(
                "data.source=pickapic but data.path is null: set it to the "
                "directory, file or glob of your Pick-a-Pic v2 parquet shards"
            )
        elif check_paths and not _finds_shards(Path(root), str(path)):
            errors.append(
                f"data.source=pickapic but data.path={path!r} matches no parquet "
                f"file (looked in {Path(root).resolve()})"
            )
        for key, asks_truth, fix in TRUTH_KEYS:
            if asks_truth(config):
                errors.append(
                    f"{key} needs the synthetic world's truth, which "
                    f"data.source=pickapic does not have: {fix}"
                )
    return errors


def _finds_shards(root: Path, path: str) -> bool:
    """Whether ``path`` (a directory, a file or a glob, as ingest reads it) finds a shard."""
    import glob

    full = Path(path) if Path(path).is_absolute() else root / path
    if full.is_dir():
        return any(full.glob("*.parquet"))
    if full.is_file():
        return True
    return any(Path(p).is_file() for p in glob.glob(str(full), recursive=True))


def check_cross_keys(
    config: dict[str, Any], source: str = "config", check_paths: bool = True, root: str | Path = "."
) -> dict[str, Any]:
    """Raise :class:`ConfigError` listing every contradiction :func:`cross_key_errors` finds."""
    errors = cross_key_errors(config, check_paths=check_paths, root=root)
    if errors:
        raise ConfigError("\n".join(f"{source}: {e}" for e in errors))
    return config


def _extend_with_defaults(validator_cls: Any) -> Any:
    import jsonschema

    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Any:
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(prop, sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def load_config(
    path: str | Path, overrides: dict[str, Any] | None = None, check_paths: bool = False
) -> dict[str, Any]:
    """Read a YAML config, apply nested ``overrides``, validate it and check its cross-key
    constraints (``data.path`` only with ``check_paths``: a shipped config may name shards
    that are not on this machine)."""
    path = Path(path)
    check_unique_keys([path])
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if overrides:
        deep_update(config, overrides)
    validate(config, source=str(path))
    return check_cross_keys(config, source=str(path), check_paths=check_paths)


def deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def parse_params(text: str) -> dict[str, Any]:
    """Parse the ``--params`` JSON a rule passes to its stage command."""
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params is not valid JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError("--params must be a JSON object")
    return params


def schema_markdown() -> str:
    """``config/README.md``: every config key with its type, default and description.

    Generated from the schema (the single source of truth) so the documentation cannot drift;
    a test compares the committed file with this output.
    """
    schema = load_schema()
    lines = [
        "# Config keys",
        "",
        "Generated from `workflow/schemas/config.schema.yaml` by",
        "`python -m prefgen.core.config docs > config/README.md`; do not edit by hand.",
        "Shipped configs: `config.yaml` (mini synthetic world, 2 CPU cores), `smoke.yaml`",
        "(smallest, used by the tests), `paper.yaml` (the papers' scale; GPU cluster).",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, sub in node.get("properties", {}).items():
            key = f"{prefix}{name}"
            kind = sub.get("type", "")
            if isinstance(kind, list):
                kind = " or ".join(kind)
            if "enum" in sub:
                kind = " \\| ".join(map(str, sub["enum"]))
            default = json.dumps(sub["default"]) if "default" in sub else ""
            desc = " ".join(str(sub.get("description", "")).split())
            lines.append(f"| `{key}` | {kind} | {default} | {desc} |")
            if sub.get("type") == "object":
                walk(sub, f"{key}.")

    walk(schema, "")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m prefgen.core.config run-name CONFIG``: the run name, for the Makefile."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "run-name":
        print(load_config(argv[1])["run_name"])
    elif len(argv) == 2 and argv[0] == "check":
        try:
            load_config(argv[1], check_paths=True)
        except ConfigError as exc:
            raise SystemExit(str(exc)) from None
        print(f"{argv[1]}: valid")
    elif argv == ["docs"]:
        sys.stdout.write(schema_markdown())
    else:
        raise SystemExit("usage: python -m prefgen.core.config {run-name CONFIG|check CONFIG|docs}")


if __name__ == "__main__":
    main()
