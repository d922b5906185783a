"""EfficientNet-Lite architecture tables, shared by the Flax model and the pretrained key map.

Kept apart from the model so that the weight readers can walk the block layout (which
`_blocks.N` of a lukemelas state dict is which `stageS/blockB`) without importing Flax.

The numbers follow `efficientnet/lite/efficientnet_lite_builder.py` of the TensorFlow TPU repo:
Lite models drop squeeze-excitation, use ReLU6, and keep the stem (32 channels), the head
(1280 channels) and the repeats of the first and last stage fixed when scaling.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS: dict[str, Variant] = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": Variant(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": Variant(1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": Variant(1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": Variant(1.4, 1.8, 300, 0.3),
}

STEM_CHANNELS = 32
TOP_CHANNELS = 1280


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: `repeats` MBConv blocks; only the first has `stride` and `in_channels`."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


# (repeats, kernel, stride, expand ratio, in channels, out channels) before scaling.
_BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width`, rounded to a multiple of `divisor` (never down >10%)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; valid: {sorted(VARIANTS)}")
    return VARIANTS[name]


def stages(name: str) -> list[StageSpec]:
    """The scaled stage table of a variant."""
    v = variant(name)
    out = []
    last = len(_BASE_STAGES) - 1
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_BASE_STAGES):
        fixed = i in (0, last)
        out.append(
            StageSpec(
                repeats=repeats if fixed else int(math.ceil(v.depth * repeats)),
                kernel=kernel,
                stride=stride,
                expand=expand,
                in_channels=STEM_CHANNELS if i == 0 else round_channels(cin, v.width),
                out_channels=round_channels(cout, v.width),
            )
        )
    return out


def block_names(name: str) -> list[str]:
    """`stageS/blockB` (both 1-based) for each block in order: index N is lukemelas `_blocks.N`."""
    return [
        f"stage{s}/block{b}"
        for s, spec in enumerate(stages(name), start=1)
        for b in range(1, spec.repeats + 1)
    ]


def stage_names(name: str) -> list[str]:
    """Backbone subtrees from input to output: `stem`, `stage1` ... `stage7`, `top`."""
    return ["stem"] + [f"stage{s}" for s in range(1, len(stages(name)) + 1)] + ["top"]


def layer_names(name: str) -> list[str]:
    """Backbone subtrees at block granularity, input to output (for layer-wise lr decay)."""
    return ["stem", *block_names(name), "top"]


def feature_levels(name: str) -> dict[int, str]:
    """Stride (4, 8, 16, 32) -> the stage whose output a feature pyramid reads there: the last
    stage at that stride, and at 32 `top`, the 1x1 convolution after stage 7 (so that a dense
    model uses every backbone parameter)."""
    stride, levels = 2, {}  # the stem strides by 2
    for s, spec in enumerate(stages(name), start=1):
        stride *= spec.stride
        levels[stride] = f"stage{s}"
    levels[stride] = "top"
    return {k: v for k, v in levels.items() if k >= 4}
