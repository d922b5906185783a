"""jtransfer's own layout of a variables tree, as runs and exports store it.

Every key map ends in this layout, and a run's checkpoint or an exported file already is in it:
`{'params': {...}, 'batch_stats': {...}}` whose top level below the collection is `backbone`,
optional `neck`, and `head`. Flattened with '/' (as `jtransfer.export` writes it) every key reads
`params/backbone/...` or `batch_stats/head/...`; `is_native` recognises a file by that alone, so
an export needs no side metadata and loads back without a key map.

Two operations live here because they need the layout and nothing else: `subtree` (the
`path:subtree` suffix of `pretrained.load`) and `misfits` (does a native tree belong to a given
model). `misfits` compares with the model's abstract variables (`jax.eval_shape`, no compute),
built with default options: same paths, same shapes, except the head (a new task re-initialises
it) and leaves a resampling rule covers (their final check is `graft`'s, against the real input
size and the model's options).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jtransfer import models
from jtransfer.pretrained.resample import RULES

COLLECTIONS = ("params", "batch_stats")
_NATIVE_KEY = re.compile(r"(params|batch_stats)/(backbone|neck|head)/")
_INPUT_SIZE = 224  # any size the models accept; only the resampled position grid depends on it


def is_native(flat: Mapping[str, np.ndarray]) -> bool:
    """Whether the '/'-joined keys of `flat` are all jtransfer paths with their collection."""
    return bool(flat) and all(_NATIVE_KEY.match(k) for k in flat)


def flatten(tree: Mapping) -> dict[str, np.ndarray]:
    """`{'params/backbone/.../kernel': array, ...}` of a variables tree."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    """The variables tree of '/'-joined keys, with both collections present (maybe empty)."""
    tree = traverse_util.unflatten_dict(dict(flat), sep="/")
    return {c: tree.get(c, {}) for c in COLLECTIONS}


def _param_path(key: str) -> str:
    return key.split("/", 1)[1]


def subtree(tree: Mapping, path: str, source: str) -> dict:
    """The leaves of `tree` under parameter path `path`, in every collection, kept in place.

    `path` is a parameter path without its collection, like `dont_load` patterns and policy
    regexes (`backbone`, `backbone/stage1`), so it selects a layer's parameters and its batch
    statistics together. Raises ValueError naming `source` and the subtrees it does have.
    """
    prefix = path.strip("/") + "/"
    flat = flatten(tree)
    kept = {k: v for k, v in flat.items() if (_param_path(k) + "/").startswith(prefix)}
    if not kept:
        have = sorted({"/".join(_param_path(k).split("/")[:2]) for k in flat})
        hint = (
            " (a subtree path leaves out the collection: 'backbone', not 'params/backbone')"
            if path.split("/")[0] in COLLECTIONS
            else ""
        )
        raise ValueError(f"{source} has no subtree {path!r}{hint}; it has {have}")
    return unflatten(kept)


def abstract_variables(model: str, num_classes: int) -> dict:
    """The shapes and dtypes of `model`'s variables (`jax.ShapeDtypeStruct` leaves)."""
    module = models.build_model(model, num_classes)
    rng = jax.random.PRNGKey(0)
    image = jnp.zeros((1, _INPUT_SIZE, _INPUT_SIZE, 3), jnp.float32)
    init = lambda: module.init({"params": rng, "dropout": rng}, image, train=False)  # noqa: E731
    return jax.eval_shape(init)


def _in_head(key: str) -> bool:
    return _param_path(key).startswith("head/")


def _resampled(key: str) -> bool:
    return any(re.fullmatch(pattern, _param_path(key)) for pattern, _ in RULES)


def misfits(tree: Mapping, model: str, complete: bool = True) -> list[str]:
    """Why the native `tree` is not a `model` tree: one line per offending path; [] if it is.

    With `complete=False` a leaf the tree lacks is no misfit, only a leaf it has that `model`
    lacks or shapes differently: part of a tree (a subtree, a run of a model option that drops
    a leaf, like ViT's `pool='gap'`) still belongs to the model, and `graft` names what it lacks.
    """
    body = lambda flat: {k: np.shape(v) for k, v in flat.items() if not _in_head(k)}  # noqa: E731
    ours, theirs = body(flatten(tree)), body(flatten(abstract_variables(model, 1)))
    problems = [f"missing: {k}" for k in theirs if k not in ours] if complete else []
    problems += [f"unexpected: {k}" for k in ours if k not in theirs]
    problems += [
        f"wrong shape: {k}: {ours[k]}, {model} has {theirs[k]}"
        for k in ours
        if k in theirs and ours[k] != theirs[k] and not _resampled(k)
    ]
    return problems
