"""Strict grafting of a loaded variables tree onto a freshly initialised one.

Every leaf of the initialised tree ends up either *loaded* (same path and shape in the loaded
tree), *re-initialised* (its path matches a `dont_load` pattern, e.g. the new head) or
*resampled* (same path, a shape that `pretrained.resample` knows how to bring to the model's:
a ViT position-embedding grid for another input size, a patch kernel for another patch size, an
RGB first convolution for grayscale input). Anything else is an error that names every
offending path at once: a parameter the checkpoint lacks, a checkpoint entry the model lacks, a
shape that differs and does not resample. The returned manifest records which path went which
way; the trainer writes it to the workdir.

Paths are the collection followed by the '/'-joined parameter path
(`params/backbone/stem/conv/kernel`, `batch_stats/backbone/stem/bn/mean`); `dont_load` patterns
fully match the path without the collection, so `head/.*` covers the head's parameters and any
statistics it has.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from jtransfer.errors import JTransferError
from jtransfer.pretrained.resample import ResampleError, resample


class GraftError(JTransferError):
    """A loaded tree that does not fit the model."""


def _flat(tree: Mapping) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def _param_path(path: str) -> str:
    return path.split("/", 1)[1] if "/" in path else path


def fit(path: str, value: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The loaded `value` of `path` as the model's leaf of `shape` and `dtype`: itself, or
    resampled (`pretrained.resample`); a `GraftError` naming both shapes otherwise."""
    if np.shape(value) == tuple(shape):
        return np.asarray(value, dtype=dtype)
    shapes = f"{path}: checkpoint {np.shape(value)} vs model {tuple(shape)}"
    try:
        resampled = resample(_param_path(path), value, tuple(shape))
    except ResampleError as e:
        raise GraftError(f"{shapes} (not resampled: {e})") from None
    if resampled is None:
        raise GraftError(shapes)
    return np.asarray(resampled, dtype=dtype)


def graft(
    init: Mapping, loaded: Mapping, dont_load: Sequence[str] = ()
) -> tuple[dict, dict[str, list[str]]]:
    """Returns (variables, manifest); `manifest` maps loaded / reinitialized / resampled /
    ignored to paths."""
    patterns = [re.compile(p) for p in dont_load]
    skip = lambda path: any(p.fullmatch(_param_path(path)) for p in patterns)  # noqa: E731
    flat_init, flat_loaded = _flat(init), _flat(loaded)

    missing, mismatched = [], []
    out, manifest = {}, {"loaded": [], "reinitialized": [], "resampled": [], "ignored": []}
    for path, value in flat_init.items():
        if skip(path):
            out[path] = value
            manifest["reinitialized"].append(path)
        elif path not in flat_loaded:
            missing.append(path)
        else:
            try:
                out[path] = fit(path, flat_loaded[path], np.shape(value), value.dtype)
            except GraftError as e:
                mismatched.append(str(e))
                continue
            same = np.shape(flat_loaded[path]) == np.shape(value)
            manifest["loaded" if same else "resampled"].append(path)
    unexpected = []
    for path in flat_loaded:
        if path in flat_init:
            continue
        if skip(path):
            manifest["ignored"].append(path)
        else:
            unexpected.append(path)

    problems = []
    for title, paths in (
        ("missing from the checkpoint", missing),
        ("in the checkpoint but not in the model", unexpected),
        ("shape mismatch", mismatched),
    ):
        if paths:
            problems.append(f"{title} ({len(paths)}):\n  " + "\n  ".join(paths))
    if problems:
        raise GraftError(
            "the checkpoint does not fit the model (add dont_load patterns to re-initialise "
            "on purpose):\n" + "\n".join(problems)
        )
    unused = [
        p.pattern
        for p in patterns
        if not any(p.fullmatch(_param_path(q)) for q in [*flat_init, *flat_loaded])
    ]
    if unused:
        raise GraftError(f"dont_load patterns that match nothing: {unused}")
    return traverse_util.unflatten_dict(out, sep="/"), manifest
