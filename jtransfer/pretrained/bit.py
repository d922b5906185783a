"""Key maps from BiT checkpoints (timm `resnetv2_*_bit` state dicts, big_transfer `.npz`).

The Flax model uses timm's module names, so the timm map is a renaming plus layout changes:
`stem.conv` -> `stem/conv`, `stages.{s}.blocks.{b}` (0-based) -> `stage{s+1}/block{b+1}`,
GroupNorm `weight` -> `scale`, and the classifier `head.fc`, a 1x1 convolution in timm, -> the
dense `head/dense`. The table comes from `bit_spec`; `key_table.convert` checks it strictly.
The class count is read from the classifier's bias.

The `.npz` files big_transfer publishes (BiT-M-R50x1.npz, ...) hold the same tensors in TF
layouts under TF names: `resnet/root_block/standardized_conv2d/kernel` (HWIO),
`resnet/block{s+1}/unit{b+1:02d}/{a,b,c}/{group_norm/gamma,group_norm/beta,
standardized_conv2d/kernel}` (`a`, `b`, `c` are timm's norm1/conv1, norm2/conv2, norm3/conv3),
`.../a/proj/standardized_conv2d/kernel` (the projection shortcut), `resnet/group_norm/*` and
`resnet/head/conv2d/*`. Its table is derived from the timm one, key by key (the renaming timm's
own `_load_weights` applies in reverse), so both maps stay one architecture description.
`convert` picks the layout by the keys present.
"""

from __future__ import annotations

import re

import numpy as np

from jtransfer.models.bit_spec import VARIANTS, num_features, stages, stem_channels
from jtransfer.pretrained import key_table as kt

MODELS = tuple(VARIANTS)


def _table(name: str, num_classes: int) -> kt.Table:
    """Every torch key of `name` -> (Flax path, torch shape, transform)."""
    table: kt.Table = {}
    cin = stem_channels(name)
    kt.conv(table, "stem.conv", ("backbone", "stem", "conv"), (cin, 3, 7, 7))
    for s, spec in enumerate(stages(name)):
        w, cout = spec.width, spec.out_channels
        for b in range(spec.blocks):
            prefix, block = f"stages.{s}.blocks.{b}", ("backbone", f"stage{s + 1}", f"block{b + 1}")
            # (index, in channels, out channels, kernel): norm{i} normalises conv{i}'s input.
            for i, c_in, c_out, k in [(1, cin, w, 1), (2, w, w, 3), (3, w, cout, 1)]:
                kt.affine_norm(table, f"{prefix}.norm{i}", (*block, f"norm{i}"), c_in)
                kt.conv(table, f"{prefix}.conv{i}", (*block, f"conv{i}"), (c_out, c_in, k, k))
            if b == 0 and (spec.stride != 1 or cin != cout):
                unit = (*block, "downsample", "conv")
                kt.conv(table, f"{prefix}.downsample.conv", unit, (cout, cin, 1, 1))
            cin = cout
    kt.affine_norm(table, "norm", ("backbone", "norm"), cin)
    shape = (num_classes, num_features(name), 1, 1)
    kt.dense(table, "head.fc", ("head", "dense"), shape, kt.conv1x1_to_dense)
    return table


def from_timm(state_dict: dict[str, np.ndarray], name: str) -> dict:
    """The jtransfer variables tree (`params` only: no batch statistics) of a timm BiT model.

    Leaves are float32 numpy arrays in Flax layouts. Raises ValueError listing every missing,
    unexpected and misshapen key if the state dict is not exactly the BiT `name`.
    """
    table = _table(name, kt.num_classes(state_dict, "head.fc.bias"))
    return kt.convert(state_dict, table, set(), name)


_NPZ_PREFIX = "resnet/"
_UNITS = "abc"  # big_transfer's units a, b, c: timm's norm1/conv1, norm2/conv2, norm3/conv3
# timm key -> big_transfer key, by these substitutions in turn.
_NPZ_RENAMES = [
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1])+1}/unit{int(m[2])+1:02d}/"),
    (r"downsample\.conv\.weight$", lambda m: "a/proj/standardized_conv2d/kernel"),
    (r"conv([123])\.weight$", lambda m: f"{_UNITS[int(m[1]) - 1]}/standardized_conv2d/kernel"),
    (r"norm([123])\.", lambda m: f"{_UNITS[int(m[1]) - 1]}/norm."),
    (r"^stem\.conv\.weight$", lambda m: "root_block/standardized_conv2d/kernel"),
    (r"norm\.weight$", lambda m: "group_norm/gamma"),
    (r"norm\.bias$", lambda m: "group_norm/beta"),
    (r"^head\.fc\.weight$", lambda m: "head/conv2d/kernel"),
    (r"^head\.fc\.bias$", lambda m: "head/conv2d/bias"),
]  # fmt: skip


def _npz_key(timm_key: str) -> str:
    for pattern, replace in _NPZ_RENAMES:
        timm_key = re.sub(pattern, replace, timm_key)
    return _NPZ_PREFIX + timm_key


def _hwio(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*shape[2:], shape[1], shape[0]) if len(shape) == 4 else shape


def from_big_transfer(state_dict: dict[str, np.ndarray], name: str) -> dict:
    """The jtransfer variables tree of a big_transfer `.npz` checkpoint (BiT-M-R50x1.npz, ...).

    Raises ValueError listing every missing, unexpected and misshapen key if the checkpoint is
    not exactly the BiT `name`.
    """
    classes = kt.num_classes(state_dict, f"{_NPZ_PREFIX}head/conv2d/bias")
    table: kt.Table = {}
    for key, (path, shape, transform) in _table(name, classes).items():
        hwio = transform is not kt.identity  # every kernel; norms and biases keep their shape
        make = (lambda x: x[0, 0]) if transform is kt.conv1x1_to_dense else kt.identity
        table[_npz_key(key)] = (path, _hwio(shape) if hwio else shape, make)
    return kt.convert(state_dict, table, set(), name)


def convert(state_dict: dict[str, np.ndarray], name: str) -> dict:
    """`from_big_transfer` if the keys are big_transfer's (`resnet/...`), else `from_timm`."""
    if any(k.startswith(_NPZ_PREFIX) for k in state_dict):
        return from_big_transfer(state_dict, name)
    return from_timm(state_dict, name)
