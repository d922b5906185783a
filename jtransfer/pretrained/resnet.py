"""Key map from torchvision / timm ResNet state dicts to the jtransfer variables tree.

torchvision and timm name ResNet v1.5 alike: `conv1`/`bn1` is the stem, `layer{s}.{b}` (0-based
blocks) holds `conv{1,2,3}`/`bn{1,2,3}` and, in a stage's first block, `downsample.0` (conv) and
`downsample.1` (BatchNorm); `fc` is the classifier. The table comes from `resnet_spec`, the same
stage table the Flax model is built from; `key_table.convert` checks it strictly. The class count
is read from `fc.bias`, so a checkpoint fine-tuned to other classes maps too.
"""

from __future__ import annotations

import numpy as np

from jtransfer.models.resnet_spec import STEM_CHANNELS, VARIANTS, num_features, stages, variant
from jtransfer.pretrained import key_table as kt

MODELS = tuple(VARIANTS)


def _table(name: str, num_classes: int) -> tuple[kt.Table, set[str]]:
    """Every torch key of `name` -> (Flax path, torch shape, transform); optional keys."""
    table: kt.Table = {}
    optional: set[str] = set()
    kt.conv(table, "conv1", ("backbone", "stem", "conv"), (STEM_CHANNELS, 3, 7, 7))
    kt.batch_norm(table, optional, "bn1", ("backbone", "stem", "bn"), STEM_CHANNELS)

    bottleneck = variant(name).bottleneck
    cin = STEM_CHANNELS
    for s, spec in enumerate(stages(name), start=1):
        w, cout = spec.width, spec.out_channels
        for b in range(1, spec.blocks + 1):
            prefix, block = f"layer{s}.{b - 1}", ("backbone", f"stage{s}", f"block{b}")
            # (torch index, in channels, out channels, kernel) of each conv of the block.
            if bottleneck:
                convs = [(1, cin, w, 1), (2, w, w, 3), (3, w, cout, 1)]
            else:
                convs = [(1, cin, w, 3), (2, w, cout, 3)]
            for i, c_in, c_out, k in convs:
                unit = (*block, f"conv{i}")
                kt.conv(table, f"{prefix}.conv{i}", (*unit, "conv"), (c_out, c_in, k, k))
                kt.batch_norm(table, optional, f"{prefix}.bn{i}", (*unit, "bn"), c_out)
            if b == 1 and (spec.stride != 1 or cin != cout):
                unit = (*block, "downsample")
                kt.conv(table, f"{prefix}.downsample.0", (*unit, "conv"), (cout, cin, 1, 1))
                kt.batch_norm(table, optional, f"{prefix}.downsample.1", (*unit, "bn"), cout)
            cin = cout

    kt.dense(table, "fc", ("head", "dense"), (num_classes, num_features(name)))
    return table, optional


def from_torchvision(state_dict: dict[str, np.ndarray], name: str) -> dict:
    """The jtransfer variables tree (`params`, `batch_stats`) of a torchvision/timm ResNet.

    Leaves are float32 numpy arrays in Flax layouts. Raises ValueError listing every missing,
    unexpected and misshapen key if the state dict is not exactly the ResNet `name`.
    """
    table, optional = _table(name, kt.num_classes(state_dict, "fc.bias"))
    return kt.convert(state_dict, table, optional, name)
