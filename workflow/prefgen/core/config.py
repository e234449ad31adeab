"""Loading and validating the experiment config against ``workflow/schemas/config.schema.yaml``.

Snakemake validates the config itself (``snakemake.utils.validate`` in the Snakefile) before any
job starts; this module gives the package and the tests the same check outside Snakemake, with
errors that name the offending key path.
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


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply nested ``overrides`` and validate it."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if overrides:
        deep_update(config, overrides)
    return validate(config, source=str(path))


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
        load_config(argv[1])
        print(f"{argv[1]}: valid")
    elif argv == ["docs"]:
        sys.stdout.write(schema_markdown())
    else:
        raise SystemExit(
            "usage: python -m prefgen.core.config {run-name CONFIG|check CONFIG|docs}"
        )


if __name__ == "__main__":
    main()
