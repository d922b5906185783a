"""The shared half of every key map: a table of expected torch keys and one strict conversion.

A family's key map builds a table, from its architecture spec, of every torch key the variant
must have: its Flax path, the torch shape the architecture implies, and the layout change.
`convert` then compares the whole table with the state dict in one go, which is what lets the
error list *every* missing, unexpected and misshapen key at once instead of stopping at the
first, and builds the nested variables tree. Keys in `optional` (BatchNorm's
`num_batches_tracked`: Flax keeps no step count) are accepted and dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]
# torch key -> (Flax path starting with the collection, torch shape, torch -> Flax layout)
Table = dict[str, tuple[tuple[str, ...], tuple[int, ...], Transform]]


def identity(x: np.ndarray) -> np.ndarray:
    return x


def oihw_to_hwio(x: np.ndarray) -> np.ndarray:
    return x.transpose(2, 3, 1, 0)


def linear_to_dense(x: np.ndarray) -> np.ndarray:
    return x.T


def conv1x1_to_dense(x: np.ndarray) -> np.ndarray:
    """A (out, in, 1, 1) convolution applied to pooled features is a (in, out) dense kernel."""
    return x[:, :, 0, 0].T


def conv(table: Table, torch_name: str, path: tuple[str, ...], shape: tuple[int, ...]) -> None:
    """A bias-free convolution: `{torch_name}.weight` (OIHW) -> `params/{path}/kernel` (HWIO)."""
    table[f"{torch_name}.weight"] = (("params", *path, "kernel"), shape, oihw_to_hwio)


def batch_norm(
    table: Table, optional: set[str], torch_name: str, path: tuple[str, ...], c: int
) -> None:
    """A BatchNorm2d: affine -> `params/{path}`, running statistics -> `batch_stats/{path}`."""
    for torch_leaf, collection, leaf in (
        ("weight", "params", "scale"),
        ("bias", "params", "bias"),
        ("running_mean", "batch_stats", "mean"),
        ("running_var", "batch_stats", "var"),
    ):
        table[f"{torch_name}.{torch_leaf}"] = ((collection, *path, leaf), (c,), identity)
    optional.add(f"{torch_name}.num_batches_tracked")


def affine_norm(table: Table, torch_name: str, path: tuple[str, ...], c: int) -> None:
    """A norm with only an affine part (GroupNorm, LayerNorm): weight, bias -> scale, bias."""
    for torch_leaf, leaf in (("weight", "scale"), ("bias", "bias")):
        table[f"{torch_name}.{torch_leaf}"] = (("params", *path, leaf), (c,), identity)


def dense(
    table: Table,
    torch_name: str,
    path: tuple[str, ...],
    shape: tuple[int, ...],
    transform: Transform = linear_to_dense,
) -> None:
    """A classifier layer: `{torch_name}.weight` of torch `shape` and `.bias` -> kernel, bias."""
    table[f"{torch_name}.weight"] = (("params", *path, "kernel"), shape, transform)
    table[f"{torch_name}.bias"] = (("params", *path, "bias"), (shape[0],), identity)


def num_classes(state_dict: dict[str, np.ndarray], bias_key: str, default: int = 1000) -> int:
    """The class count of a classifier from its bias, so fine-tuned checkpoints map too."""
    bias = state_dict.get(bias_key)
    return bias.shape[0] if bias is not None and bias.ndim == 1 else default


def convert(
    state_dict: dict[str, np.ndarray], table: Table, optional: set[str], model: str
) -> dict:
    """The variables tree of `state_dict` laid out by `table`: float32, C-contiguous leaves.

    Raises ValueError listing every missing, unexpected and misshapen key if the state dict
    is not exactly `model`.
    """
    missing = [k for k in table if k not in state_dict]
    unexpected = [k for k in state_dict if k not in table and k not in optional]
    misshapen = [
        f"{k}: expected {table[k][1]}, got {tuple(v.shape)}"
        for k, v in state_dict.items()
        if k in table and tuple(v.shape) != table[k][1]
    ]
    if missing or unexpected or misshapen:
        problems = [("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)]
        counts = ", ".join(f"{len(keys)} {kind}" for kind, keys in problems)
        lines = [f"  {kind}: {k}" for kind, keys in problems for k in keys]
        raise ValueError(f"state dict does not match {model} ({counts}):\n" + "\n".join(lines))

    tree: dict = {}
    for key, (path, _shape, transform) in table.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.ascontiguousarray(transform(state_dict[key]), dtype=np.float32)
    return tree
