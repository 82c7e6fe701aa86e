"""What every config of this project shares: frozen dataclasses whose fields are also CLI flags.

A field's help (and, for a closed set of values, its choices) lives in its metadata, written with
`setting(default, help, choices)`. `add_arguments` turns any config dataclass into argparse flags
(`latent_features` → `--latent-features`) and `given_arguments` reads back the flags a user gave,
so the CLI, the defaults and the saved config can never disagree. Training's `TrainConfig` and the
bench's `BenchConfig` are both built this way.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; the message names each field and its value."""


def setting(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A dataclass field with its CLI help (and allowed values, checked by `check_choices`)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def raise_problems(title: str, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"{title}: " + "; ".join(problems))


def check_choices(config) -> list[str]:
    """'field: expected one of [...], got ...' for each field outside its declared choices."""
    problems = []
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            problems.append(f"{f.name}: expected one of {list(choices)}, got {getattr(config, f.name)!r}")
    return problems


def _base_type(hint):
    """(element type, is_sequence) of a field's annotation, Optional stripped."""
    args = get_args(hint)
    if type(None) in args:
        hint = next(a for a in args if a is not type(None))
    if get_origin(hint) is tuple:
        return get_args(hint)[0], True
    return hint, False


def coerce(cls, values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON values for `cls`'s fields: lists become tuples where the field is a tuple."""
    hints = get_type_hints(cls)
    return {k: tuple(v) if isinstance(v, list) and _base_type(hints[k])[1] else v for k, v in values.items()}


def add_arguments(parser: argparse.ArgumentParser, cls, defaults=None,
                  choices: Mapping[str, Iterable] | None = None, only: Iterable[str] | None = None) -> None:
    """One flag per field of the dataclass `cls`; flags default to None, meaning "not given".

    The help shows the default once (from `defaults`, an instance; else the field's default). A
    boolean field is a switch (`--straight-through` / `--no-straight-through`).

    Args:
        choices: allowed values per field from the registries that know them (e.g. {"kind": KINDS}).
        only: the fields to add (default: all).
    """
    hints = get_type_hints(cls)
    only = set(only) if only is not None else None
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        if "help" not in f.metadata or f.metadata.get("cli") is False:  # nested configs; recorded fields
            continue
        element, is_seq = _base_type(hints[f.name])
        default = getattr(defaults, f.name) if defaults is not None else f.default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f.metadata.get("help", "")
        if "default:" not in help_text and default is not None:  # None fields say in their help what unset means
            help_text += f" (default: {shown})"
        flag = "--" + f.name.replace("_", "-")
        if element is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
            continue
        allowed = tuple((choices or {}).get(f.name, ())) or f.metadata.get("choices")
        parser.add_argument(flag, dest=f.name, type=element, default=None, nargs="+" if is_seq else None,
                            choices=allowed, metavar=None if allowed else f.name.upper(), help=help_text)


def given_arguments(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The fields among `names` given on the command line (lists as tuples)."""
    out = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out
