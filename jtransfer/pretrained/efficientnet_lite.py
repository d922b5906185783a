"""Key map from lukemelas-style EfficientNet-Lite state dicts to the jtransfer variables tree.

The table of every torch key the variant must have (Flax path, torch shape, layout change) is
built from `efficientnet_lite_spec.stages(variant)`; `key_table.convert` checks a state dict
against it, listing every missing, unexpected and misshapen key at once. The classifier's class
count is taken from `_fc.bias`, so a lukemelas checkpoint fine-tuned to another number of classes
maps too.
"""

from __future__ import annotations

import numpy as np

from jtransfer.models.efficientnet_lite_spec import (
    STEM_CHANNELS,
    TOP_CHANNELS,
    VARIANTS,
    block_names,
    stages,
)
from jtransfer.pretrained import key_table as kt

MODELS = tuple(VARIANTS)


def _table(variant: str, num_classes: int) -> tuple[kt.Table, set[str]]:
    """Every torch key of `variant` -> (Flax path, torch shape, transform); optional keys."""
    table: kt.Table = {}
    optional: set[str] = set()
    stem = ("backbone", "stem")
    kt.conv(table, "_conv_stem", (*stem, "conv"), (STEM_CHANNELS, 3, 3, 3))
    kt.batch_norm(table, optional, "_bn0", (*stem, "bn"), STEM_CHANNELS)

    specs = [(spec, b) for spec in stages(variant) for b in range(spec.repeats)]
    for n, (name, (spec, b)) in enumerate(zip(block_names(variant), specs, strict=True)):
        prefix, block = f"_blocks.{n}", ("backbone", *name.split("/"))
        cin = spec.in_channels if b == 0 else spec.out_channels
        cexp, cout, k = cin * spec.expand, spec.out_channels, spec.kernel
        if spec.expand != 1:
            kt.conv(table, f"{prefix}._expand_conv", (*block, "expand", "conv"), (cexp, cin, 1, 1))
            kt.batch_norm(table, optional, f"{prefix}._bn0", (*block, "expand", "bn"), cexp)
        kt.conv(table, f"{prefix}._depthwise_conv", (*block, "depthwise", "conv"), (cexp, 1, k, k))
        kt.batch_norm(table, optional, f"{prefix}._bn1", (*block, "depthwise", "bn"), cexp)
        kt.conv(table, f"{prefix}._project_conv", (*block, "project", "conv"), (cout, cexp, 1, 1))
        kt.batch_norm(table, optional, f"{prefix}._bn2", (*block, "project", "bn"), cout)

    top = ("backbone", "top")
    last = stages(variant)[-1].out_channels
    kt.conv(table, "_conv_head", (*top, "conv"), (TOP_CHANNELS, last, 1, 1))
    kt.batch_norm(table, optional, "_bn1", (*top, "bn"), TOP_CHANNELS)
    kt.dense(table, "_fc", ("head", "dense"), (num_classes, TOP_CHANNELS))
    return table, optional


def from_lukemelas(state_dict: dict[str, np.ndarray], variant: str) -> dict:
    """The jtransfer variables tree (`params`, `batch_stats`) of a lukemelas state dict.

    Leaves are float32 numpy arrays in Flax layouts. Raises ValueError listing every missing,
    unexpected and misshapen key if the state dict is not exactly `variant`.
    """
    table, optional = _table(variant, kt.num_classes(state_dict, "_fc.bias"))
    return kt.convert(state_dict, table, optional, variant)
