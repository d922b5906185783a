"""Parsing of the `:key=value,...` argument that `get_config(arg)` receives.

Values go through `ast.literal_eval` (numbers, strings, lists, tuples, None, booleans); a value
that is not a Python literal is kept as a string, so `data=digits` needs no quotes. Commas
inside brackets or quotes do not split. Unknown keys are an error naming the close matches.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Mapping
from typing import Any


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
            raise ValueError(f"config argument {item!r} is not key=value")
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults))
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown config argument {key!r}{hint} valid: {sorted(defaults)}")
        out[key] = _value(value.strip())
    return out
