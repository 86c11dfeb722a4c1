"""Command-line options generated from settings dataclasses, so that each default and each help
text is written once, on the field. Torch-free and stdlib-only: `rar --help` builds every
subcommand's options from these fields.

A field declares its help (and, where the flag is not `--<name with dashes>`, its flag and
choices) with `option`:

    device: str = option("auto", "'cpu', 'cuda', 'cuda:1', or 'auto'")

`add_options(parser, Settings, ("device", ...))` adds the named fields as flags, typed from their
annotations (`X | None` is X; a bool is a switch, `--no-...` when its default is True), and
`option_values(args, Settings, names)` reads them back as keyword arguments, with the fields
typed `os.PathLike` made absolute (a launched job may start in another directory), and
`option_flags(Settings, values)` writes values as the flags (a workflow rule's arguments).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union, get_args, get_origin, get_type_hints


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with its command-line help (and flag name and choices, if any)."""
    metadata = {"help": help, "flag": flag, "choices": choices, "metavar": metavar}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# One evaluation of a class's annotations however many commands add its fields.
_type_hints = functools.cache(get_type_hints)


def _field_kind(hint: Any) -> tuple[type, bool]:
    """The scalar type a flag parses (X of `X | None`) and whether the field is a path."""
    args = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    args = tuple(a for a in args if a is not type(None))
    is_path = os.PathLike in args
    scalar = str if is_path else args[0]
    if len(args) != 1 + is_path or scalar not in (bool, int, float, str):
        raise TypeError(f"no command-line flag for a field of type {hint}")
    return scalar, is_path


def flag_of(field: dataclasses.Field) -> str:
    """The flag of a field: its `flag`, else `--<name with dashes>`."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    names: Iterable[str],
    *,
    overrides: bool = False,
    unset: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add the fields `names` of dataclass `cls` to `parser`, each with its help and default.

    overrides: every flag defaults to None, "keep the value of the settings this overrides"
        (a launcher config file, a sampling preset); `unset` is appended to each help to say
        what an unset flag keeps (" (default: the preset's)").
    defaults: this command's own defaults of some fields (a sweep's smaller sample count).
    """
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    hints = _type_hints(cls)
    defaults = defaults or {}
    for name in names:
        field = by_name[name]
        scalar, _ = _field_kind(hints[name])
        default = None if overrides else defaults.get(name, field.default)
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": default,
            # argparse formats help
            "help": (field.metadata.get("help", "") + (unset if overrides else "")).replace(
                "%", "%%"
            ),
        }
        if scalar is bool:
            kwargs["action"] = "store_false" if field.default else "store_true"
        else:
            if scalar is not str:
                kwargs["type"] = scalar
            for key in ("choices", "metavar"):
                if field.metadata.get(key) is not None:
                    kwargs[key] = field.metadata[key]
        parser.add_argument(flag_of(field), **kwargs)


def option_values(args: argparse.Namespace, cls: type, names: Iterable[str]) -> dict[str, Any]:
    """The values of fields `names` of `cls` from parsed `args`, as keyword arguments; fields
    typed `os.PathLike` become absolute paths."""
    from pathlib import Path  # not at import: `rar --help` never needs it

    hints = _type_hints(cls)
    values = {}
    for name in names:
        value = getattr(args, name)
        if value is not None and _field_kind(hints[name])[1]:
            value = str(Path(value).resolve())
        values[name] = value
    return values


def option_flags(cls: type, values: Mapping[str, Any]) -> list:
    """`values` of fields of `cls` as command-line arguments: the flag of each field that
    `values` holds, then its value, in the fields' order (a workflow rule's arguments)."""
    args: list = []
    for field in dataclasses.fields(cls):
        if field.name in values:
            args += [flag_of(field), values[field.name]]
    return args
