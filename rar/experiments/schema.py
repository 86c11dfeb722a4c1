"""A study config against `rar/experiments/study.schema.yaml`: the checks, with errors that name
the key path and the value, then the schema's defaults written in (what Snakemake's
`validate(..., set_default=True)` does, for every tool that loads a study). Torch-free."""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

from rar.experiments.study import StudyError

SCHEMA = Path(__file__).parent / "study.schema.yaml"


@cache
def _schema() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def _resolve(schema: dict) -> dict:
    ref = schema.get("$ref")
    if ref:
        target = _schema()
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return {**_resolve(target), **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _fill_defaults(instance: Any, schema: dict) -> None:
    """Write the schema's `default`s into `instance` where a key is missing, recursively (what
    Snakemake's `validate(..., set_default=True)` does, for every consumer)."""
    schema = _resolve(schema)
    for sub in schema.get("allOf", []):
        _fill_defaults(instance, sub)
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            sub = _resolve(sub) if isinstance(sub, dict) else {}
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                _fill_defaults(instance[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in instance.items():
                if key not in props:
                    _fill_defaults(value, extra)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            _fill_defaults(item, schema["items"])


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "(top level)"


def _known_keys(schema: dict) -> set[str]:
    schema = _resolve(schema)
    known = set(schema.get("properties", {}))
    for sub in schema.get("allOf", []):
        known |= _known_keys(sub)
    return known


def _describe(error) -> str | None:
    """One line for a jsonschema error: the key path, then what is wrong with which value."""
    where = _key_path(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        known = _known_keys(error.schema)
        unknown = sorted(set(error.instance) - known)
        if not unknown:  # a side effect of another error inside (reported on its own)
            return None
        names = ", ".join(map(repr, unknown))
        return f"{where}: unknown key(s) {names} (known: {', '.join(sorted(known))})"
    if error.validator == "pattern":
        return (
            f"{where}: {error.instance!r} has characters that are not allowed here (letters, "
            "digits, spaces and _ . / + = : @ , ~ - only: a path or name, never shell syntax)"
        )
    if error.validator == "enum":
        known = ", ".join(map(repr, error.validator_value))
        return f"{where}: {error.instance!r} is not one of {known}"
    return f"{where}: {error.message}"


# A number in exponent form without a dot (`lr: 4e-4`): YAML 1.1 (PyYAML, Snakemake's loader)
# reads it as text, YAML 1.2 and every reader as the number it is. Read as a number.
_EXPONENT = re.compile(r"^[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+$")


def _exponent_numbers(value: Any) -> Any:
    """`value` with every string that is a number in exponent form made that float."""
    if isinstance(value, dict):
        return {k: _exponent_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exponent_numbers(v) for v in value]
    if isinstance(value, str) and _EXPONENT.match(value):
        return float(value)
    return value


def validate_config(config: Any, *, source: str = "config") -> dict:
    """`config` checked against the study schema, with its defaults filled in (a new dict).
    Raises StudyError naming `source`, the key path and the value."""
    import jsonschema

    if not isinstance(config, dict):
        raise StudyError(
            f"{source}: a study config is a mapping of keys, got {type(config).__name__}"
        )
    config = _exponent_numbers(config)
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [line for line in map(_describe, errors) if line]
        more = f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""
        lines = lines[:5]
        raise StudyError(f"{source}: " + "; ".join(lines) + more)
    config = copy.deepcopy(config)
    _fill_defaults(config, _schema())
    return config
