"""Key map from timm `resnetv2_*_bit` state dicts to the jtransfer variables tree.

The Flax model uses timm's module names, so the map is a renaming plus layout changes: `stem.conv`
-> `stem/conv`, `stages.{s}.blocks.{b}` (0-based) -> `stage{s+1}/block{b+1}`, GroupNorm
`weight` -> `scale`, and the classifier `head.fc`, a 1x1 convolution in timm, -> the dense
`head/dense`. The table comes from `bit_spec`; `key_table.convert` checks it strictly. The class
count is read from `head.fc.bias`.
"""

from __future__ import annotations

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
