"""What a weights file or run holds, and which models it maps to.

    python -m jtransfer.pretrained inspect FILE_OR_RUN_DIR

Before writing a config for a downloaded file the questions are: what is in it (keys, shapes,
dtypes, how many parameters where) and which `model` name loads it. The second is answered by
trying, not guessing: every key map in `KEY_MAPS` is run on the file (a mismatch fails at its
table check, before any array is converted), or, for a tree already in jtransfer's layout (a
run, an export), `native.misfits` against every registered model. A map that fails reports its
problems, so when nothing matches the nearest model and its first problems are shown: that is
usually a renamed prefix or a wrong variant.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from jtransfer import models
from jtransfer.pretrained import KEY_MAPS, KeyMapError, native, read

_SHOWN_PROBLEMS = 5


def _family(model: str) -> str:
    """The key map's name, e.g. `resnet.from_torchvision`, grouping the models it serves."""
    fn = KEY_MAPS[model]
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


def tree_lines(flat: dict[str, np.ndarray], is_native: bool) -> list[str]:
    """One line per array (key, shape, dtype, values), then the counts per top-level group."""
    width = max(map(len, flat), default=0)
    lines = [
        f"  {k:<{width}}  {str(tuple(v.shape)):<20} {str(v.dtype):<9} {v.size:>12,}"
        for k, v in flat.items()
    ]
    groups: dict[str, int] = defaultdict(int)
    for key, value in flat.items():
        group = "/".join(key.split("/")[:2]) if is_native else re.split(r"[./]", key)[0]
        groups[group] += value.size
    total = sum(groups.values())
    lines.append(f"{len(flat)} arrays, {total:,} values")
    lines += [f"  {group:<{width}}  {count:>12,}" for group, count in groups.items()]
    return lines


def fits(flat: dict[str, np.ndarray], is_native: bool) -> dict[str, list[str]]:
    """model -> its problems with `flat` ([] for a model that loads it)."""
    if is_native:
        tree = native.unflatten(flat)
        return {model: native.misfits(tree, model) for model in models.MODELS}
    problems = {}
    for model, key_map in KEY_MAPS.items():
        try:
            key_map(flat, model)
            problems[model] = []
        except KeyMapError as e:
            problems[model] = [f"{kind}: {text}" for kind, text in e.problems]
    return problems


def match_lines(problems: dict[str, list[str]], is_native: bool) -> list[str]:
    """Which models load the tree, per key map; else the nearest model and its problems."""
    matching = [m for m, p in problems.items() if not p]
    if matching:
        if is_native:
            return [f"maps to: {', '.join(matching)} (native jtransfer layout, no key map)"]
        by_map: dict[str, list[str]] = defaultdict(list)
        for model in matching:
            by_map[_family(model)].append(model)
        return [f"maps to: {', '.join(ms)} (key map {fn})" for fn, ms in by_map.items()]
    nearest = min(problems, key=lambda m: len(problems[m]))
    shown = problems[nearest][:_SHOWN_PROBLEMS]
    more = len(problems[nearest]) - len(shown)
    return [
        f"maps to no model ({len(problems)} tried); nearest: {nearest}, "
        f"{len(problems[nearest])} problems:",
        *(f"  {p}" for p in shown),
        *([f"  ... and {more} more"] if more else []),
    ]


def report(path: str | Path) -> str:
    """The whole inspection of the file or run directory at `path`, as printed."""
    flat = read(path)
    is_native = native.is_native(flat)
    layout = "jtransfer (native)" if is_native else "foreign"
    lines = [f"{path}: {layout} layout"]
    lines += tree_lines(flat, is_native)
    lines += match_lines(fits(flat, is_native), is_native)
    return "\n".join(lines)
