"""The shared half of every key map: a table of expected checkpoint keys and one strict build.

A family's key map builds a table, from its architecture spec, of every key the variant must
have: for each leaf of the jtransfer tree, the checkpoint keys it is made from, their shapes as
the architecture implies them, and how the leaf is made from them. `build` then compares the
whole table with the state dict in one go, which is what lets the error list *every* missing,
unexpected and misshapen key at once instead of stopping at the first, and builds the nested
variables tree. Most leaves come from one key by a layout change (`Table`, `convert`); ViT's
`qkv` kernel is three checkpoint keys and its `cls_token` two (`MultiTable`, `build`). Keys in
`optional` (BatchNorm's `num_batches_tracked`: Flax keeps no step count) are accepted and
dropped. The error is a `KeyMapError` carrying the problems, so `inspect` can rank near misses.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np

from jtransfer.errors import JTransferError

Transform = Callable[[np.ndarray], np.ndarray]
# torch key -> (Flax path starting with the collection, torch shape, torch -> Flax layout)
Table = dict[str, tuple[tuple[str, ...], tuple[int, ...], Transform]]
# Flax path -> (checkpoint keys it is made from, their shapes, how it is made from them)
MultiTable = dict[tuple[str, ...], tuple[tuple[str, ...], tuple[tuple[int, ...], ...], Callable]]


class KeyMapError(JTransferError):
    """A state dict that is not the table's model; `problems` lists (kind, key or reason)."""

    def __init__(self, title: str, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        kinds = dict.fromkeys(["missing", "unexpected", "wrong shape", *(k for k, _ in problems)])
        counts = ", ".join(f"{sum(k == kind for k, _ in problems)} {kind}" for kind in kinds)
        lines = [f"  {kind}: {text}" for kind, text in problems]
        super().__init__(f"{title} ({counts}):\n" + "\n".join(lines))


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


def build(
    state_dict: dict[str, np.ndarray],
    table: MultiTable,
    title: str,
    optional: Collection[str] = (),
    problems: Sequence[tuple[str, str]] = (),
) -> dict:
    """The variables tree `table` makes of `state_dict`: float32, C-contiguous leaves.

    Raises KeyMapError (`title`, then every missing, unexpected and misshapen key and the
    caller's own `problems`) if the state dict is not exactly the table's.
    """
    expected = {
        key: shape
        for keys, shapes, _ in table.values()
        for key, shape in zip(keys, shapes, strict=True)
    }
    found = [("missing", k) for k in expected if k not in state_dict]
    found += [("unexpected", k) for k in state_dict if k not in expected and k not in optional]
    found += [
        ("wrong shape", f"{k}: expected {shape}, got {tuple(state_dict[k].shape)}")
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != shape
    ]
    if found or problems:
        raise KeyMapError(title, [*found, *problems])

    tree: dict = {}
    for path, (keys, _shapes, make) in table.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        value = make(*(state_dict[k] for k in keys))
        node[path[-1]] = np.ascontiguousarray(value, dtype=np.float32)
    return tree


def convert(
    state_dict: dict[str, np.ndarray], table: Table, optional: set[str], model: str
) -> dict:
    """`build` for a table of one checkpoint key per leaf.

    Raises KeyMapError listing every missing, unexpected and misshapen key if the state dict
    is not exactly `model`.
    """
    multi = {path: ((key,), (shape,), make) for key, (path, shape, make) in table.items()}
    return build(state_dict, multi, f"state dict does not match {model}", optional)
