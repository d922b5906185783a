"""Key map from lukemelas-style EfficientNet-Lite state dicts to the jtransfer variables tree.

The map is a table, built from `efficientnet_lite_spec.stages(variant)`, of every torch key the
variant must have: its Flax path, the torch shape the architecture implies, and the layout
change (conv OIHW -> HWIO, linear (out, in) -> (in, out)). Building the whole table first and
then comparing it with the state dict in one go is what lets the error list *every* missing,
unexpected and misshapen key at once instead of stopping at the first.

`num_batches_tracked` is accepted where a BatchNorm has it and dropped: Flax BatchNorm keeps no
step count. The classifier's class count is taken from `_fc.bias`, so a lukemelas checkpoint
fine-tuned to another number of classes maps too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jtransfer.models.efficientnet_lite_spec import (
    STEM_CHANNELS,
    TOP_CHANNELS,
    VARIANTS,
    block_names,
    stages,
)

MODELS = tuple(VARIANTS)

_Entry = tuple[tuple[str, ...], tuple[int, ...], Callable[[np.ndarray], np.ndarray]]


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _oihw_to_hwio(x: np.ndarray) -> np.ndarray:
    return x.transpose(2, 3, 1, 0)


def _linear_to_dense(x: np.ndarray) -> np.ndarray:
    return x.T


def _conv(table: dict, torch_name: str, path: tuple[str, ...], shape: tuple[int, ...]) -> None:
    table[f"{torch_name}.weight"] = (("params", *path, "kernel"), shape, _oihw_to_hwio)


def _bn(table: dict, optional: set, torch_name: str, path: tuple[str, ...], c: int) -> None:
    for torch_leaf, collection, leaf in (
        ("weight", "params", "scale"),
        ("bias", "params", "bias"),
        ("running_mean", "batch_stats", "mean"),
        ("running_var", "batch_stats", "var"),
    ):
        table[f"{torch_name}.{torch_leaf}"] = ((collection, *path, leaf), (c,), _identity)
    optional.add(f"{torch_name}.num_batches_tracked")


def _table(variant: str, num_classes: int) -> tuple[dict[str, _Entry], set[str]]:
    """Every torch key of `variant` -> (Flax path, torch shape, transform); optional keys."""
    table: dict[str, _Entry] = {}
    optional: set[str] = set()
    stem = ("backbone", "stem")
    _conv(table, "_conv_stem", (*stem, "conv"), (STEM_CHANNELS, 3, 3, 3))
    _bn(table, optional, "_bn0", (*stem, "bn"), STEM_CHANNELS)

    specs = [(spec, b) for spec in stages(variant) for b in range(spec.repeats)]
    for n, (name, (spec, b)) in enumerate(zip(block_names(variant), specs, strict=True)):
        prefix, block = f"_blocks.{n}", ("backbone", *name.split("/"))
        cin = spec.in_channels if b == 0 else spec.out_channels
        cexp, cout, k = cin * spec.expand, spec.out_channels, spec.kernel
        if spec.expand != 1:
            _conv(table, f"{prefix}._expand_conv", (*block, "expand", "conv"), (cexp, cin, 1, 1))
            _bn(table, optional, f"{prefix}._bn0", (*block, "expand", "bn"), cexp)
        _conv(table, f"{prefix}._depthwise_conv", (*block, "depthwise", "conv"), (cexp, 1, k, k))
        _bn(table, optional, f"{prefix}._bn1", (*block, "depthwise", "bn"), cexp)
        _conv(table, f"{prefix}._project_conv", (*block, "project", "conv"), (cout, cexp, 1, 1))
        _bn(table, optional, f"{prefix}._bn2", (*block, "project", "bn"), cout)

    top = ("backbone", "top")
    last = stages(variant)[-1].out_channels
    _conv(table, "_conv_head", (*top, "conv"), (TOP_CHANNELS, last, 1, 1))
    _bn(table, optional, "_bn1", (*top, "bn"), TOP_CHANNELS)
    dense = ("params", "head", "dense")
    table["_fc.weight"] = ((*dense, "kernel"), (num_classes, TOP_CHANNELS), _linear_to_dense)
    table["_fc.bias"] = ((*dense, "bias"), (num_classes,), _identity)
    return table, optional


def from_lukemelas(state_dict: dict[str, np.ndarray], variant: str) -> dict:
    """The jtransfer variables tree (`params`, `batch_stats`) of a lukemelas state dict.

    Leaves are float32 numpy arrays in Flax layouts. Raises ValueError listing every missing,
    unexpected and misshapen key if the state dict is not exactly `variant`.
    """
    fc_bias = state_dict.get("_fc.bias")
    num_classes = fc_bias.shape[0] if fc_bias is not None and fc_bias.ndim == 1 else 1000
    table, optional = _table(variant, num_classes)
    missing = [k for k in table if k not in state_dict]
    unexpected = [k for k in state_dict if k not in table and k not in optional]
    misshapen = [
        f"{k}: expected {table[k][1]}, got {tuple(v.shape)}"
        for k, v in state_dict.items()
        if k in table and tuple(v.shape) != table[k][1]
    ]
    if missing or unexpected or misshapen:
        problems = [("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)]
        lines = [f"  {kind}: {k}" for kind, keys in problems for k in keys]
        raise ValueError(f"state dict does not match {variant}:\n" + "\n".join(lines))

    tree: dict = {}
    for key, (path, _shape, transform) in table.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.ascontiguousarray(transform(state_dict[key]), dtype=np.float32)
    return tree
