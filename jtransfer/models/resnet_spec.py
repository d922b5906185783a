"""ResNet v1.5 architecture tables, shared by the Flax model and the pretrained key map.

Kept apart from the model, as `efficientnet_lite_spec` is, so that the key map can walk the block
layout (which `layer{s}.{b}` of a torchvision state dict is which `stageS/blockB`) without
importing Flax. BiT (`bit_spec`) reuses the depth table, `StageSpec` and the naming functions:
both families are four stages of residual blocks after a stem.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Variant:
    bottleneck: bool  # Bottleneck (1x1, 3x3, 1x1 with 4x expansion) or BasicBlock (3x3, 3x3)
    depths: tuple[int, ...]  # blocks per stage


# Blocks per stage of the ResNet depths both families use.
DEPTHS: dict[int, tuple[int, ...]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

VARIANTS: dict[str, Variant] = {
    "resnet18": Variant(False, DEPTHS[18]),
    "resnet34": Variant(False, DEPTHS[34]),
    "resnet50": Variant(True, DEPTHS[50]),
    "resnet101": Variant(True, DEPTHS[101]),
    "resnet152": Variant(True, DEPTHS[152]),
}

STEM_CHANNELS = 64
WIDTHS = (64, 128, 256, 512)  # 3x3 conv channels per stage (before any expansion)
STRIDES = (1, 2, 2, 2)  # stride of each stage's first block (on its 3x3 conv: v1.5)
EXPANSION = 4  # bottleneck output channels / 3x3 conv channels


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: `blocks` residual blocks; only the first strides and changes the width."""

    blocks: int
    stride: int
    width: int  # channels of the 3x3 convolution(s)
    out_channels: int


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown ResNet variant {name!r}; valid: {sorted(VARIANTS)}")
    return VARIANTS[name]


def stages(name: str) -> list[StageSpec]:
    v = variant(name)
    expansion = EXPANSION if v.bottleneck else 1
    return [
        StageSpec(d, stride, width, width * expansion)
        for d, stride, width in zip(v.depths, STRIDES, WIDTHS, strict=True)
    ]


def num_features(name: str) -> int:
    """Channels of the backbone output."""
    return stages(name)[-1].out_channels


def blocks_of(specs: list[StageSpec]) -> list[str]:
    """`stageS/blockB` (both 1-based) of each block in order."""
    return [
        f"stage{s}/block{b}"
        for s, spec in enumerate(specs, start=1)
        for b in range(1, spec.blocks + 1)
    ]


def block_names(name: str) -> list[str]:
    return blocks_of(stages(name))


def stage_names(name: str) -> list[str]:
    """Backbone subtrees from input to output: `stem`, `stage1` ... `stage4`."""
    return ["stem"] + [f"stage{s}" for s in range(1, len(stages(name)) + 1)]


def layer_names(name: str) -> list[str]:
    """Backbone subtrees at block granularity, input to output (for layer-wise lr decay)."""
    return ["stem", *block_names(name)]


def levels_of(specs: list[StageSpec]) -> dict[int, str]:
    """Stride (4, 8, 16, 32) -> `stageS`, the stage whose output a feature pyramid reads there."""
    stride, levels = 4, {}  # the stem's convolution and max-pool stride by 4
    for s, spec in enumerate(specs, start=1):
        stride *= spec.stride
        levels[stride] = f"stage{s}"
    return levels


def feature_levels(name: str) -> dict[int, str]:
    """Stride (4, 8, 16, 32) -> the stage whose output a feature pyramid reads there."""
    return levels_of(stages(name))
