"""Parsing of the `:key=value,...` argument that `get_config(arg)` receives.

Values go through `ast.literal_eval` (numbers, strings, lists, tuples, None, booleans); a value
that is not a Python literal is kept as a string, so `data=digits` needs no quotes. Commas
inside brackets or quotes do not split. Unknown keys are an error naming the close matches.
"""

from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from jtransfer.errors import JTransferError


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p for p in (p.strip() for p in parts) if p]


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse(arg: str | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` updated with the `key=value` pairs of `arg`."""
    out = dict(defaults)
    for item in _split_top_level(arg or ""):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise JTransferError(f"config argument {item!r} is not key=value")
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults)) or [
                d for d in defaults if key.startswith(d) or d.startswith(key)
            ]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise JTransferError(f"unknown config argument {key!r}{hint} valid: {sorted(defaults)}")
        out[key] = _value(value.strip())
    return out


def choice(key: str, value: Any, valid: Sequence[str]) -> None:
    """`value` of argument `key` must be one of `valid`: else an error naming the close match."""
    if value not in valid:
        close = difflib.get_close_matches(str(value), list(valid), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise JTransferError(f"config argument {key}={value!r} is not one of {list(valid)}{hint}")


def positive(args: Mapping[str, Any], ints: Sequence[str] = (), numbers: Sequence[str] = ()):
    """The arguments `ints` must be whole numbers > 0, the `numbers` any number > 0."""
    for key in (*ints, *numbers):
        value = args[key]
        whole = isinstance(value, int) and not isinstance(value, bool)
        if not (whole or (key in numbers and isinstance(value, float))) or value <= 0:
            kind = "a whole number" if key in ints else "a number"
            raise JTransferError(f"config argument {key} must be {kind} > 0, got {value!r}")


def dataset(
    data: str,
    layout: str,
    layouts: Mapping[str, Mapping[str, Any]],
    tfds_recipes: Mapping[str, Mapping[str, Any]],
) -> tuple[str, dict[str, Any]]:
    """(`config.data.name`, the `config.data` fields to set) for the `data` argument: a folder
    read with the named `layout`, a TFDS name with a recipe, or any other TFDS name as is."""
    path = os.path.expanduser(str(data))
    if os.path.isdir(path):
        choice("layout", layout, list(layouts))
        return path, dict(layouts[layout])
    return str(data), dict(tfds_recipes.get(data, {"format": "tfds"}))
