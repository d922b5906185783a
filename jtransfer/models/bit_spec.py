"""BiT (ResNet-v2) architecture tables, shared by the Flax model and the pretrained key map.

BiT-R{depth}x{width} is a pre-activation bottleneck ResNet whose every width (stem included) is
scaled by the width factor; the depths, strides, `StageSpec` and block naming are ResNet's
(`resnet_spec`). Unlike ResNet v1.5 it ends in a GroupNorm + ReLU (`norm`), which therefore
counts as the last stage and the last layer.
"""

from __future__ import annotations

import dataclasses

from jtransfer.models.resnet_spec import (
    DEPTHS,
    EXPANSION,
    STEM_CHANNELS,
    STRIDES,
    WIDTHS,
    StageSpec,
    blocks_of,
    levels_of,
)


@dataclasses.dataclass(frozen=True)
class Variant:
    depth: int
    width_factor: int


VARIANTS: dict[str, Variant] = {
    "bit_r50x1": Variant(50, 1),
    "bit_r50x3": Variant(50, 3),
    "bit_r101x1": Variant(101, 1),
    "bit_r101x3": Variant(101, 3),
    "bit_r152x2": Variant(152, 2),
    "bit_r152x4": Variant(152, 4),
}

GROUPS = 32  # GroupNorm groups everywhere


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown BiT variant {name!r}; valid: {sorted(VARIANTS)}")
    return VARIANTS[name]


def stem_channels(name: str) -> int:
    return STEM_CHANNELS * variant(name).width_factor


def stages(name: str) -> list[StageSpec]:
    v = variant(name)
    return [
        StageSpec(d, stride, width * v.width_factor, width * v.width_factor * EXPANSION)
        for d, stride, width in zip(DEPTHS[v.depth], STRIDES, WIDTHS, strict=True)
    ]


def num_features(name: str) -> int:
    """Channels of the backbone output."""
    return stages(name)[-1].out_channels


def block_names(name: str) -> list[str]:
    return blocks_of(stages(name))


def stage_names(name: str) -> list[str]:
    """Backbone subtrees from input to output: `stem`, `stage1` ... `stage4`, `norm`."""
    return ["stem"] + [f"stage{s}" for s in range(1, len(stages(name)) + 1)] + ["norm"]


def layer_names(name: str) -> list[str]:
    """Backbone subtrees at block granularity, input to output (for layer-wise lr decay)."""
    return ["stem", *block_names(name), "norm"]


def feature_levels(name: str) -> dict[int, str]:
    """Stride (4, 8, 16, 32) -> the stage whose output a feature pyramid reads there: ResNet's
    stages, except that stride 32 reads `norm` (stage 4 normalised: the only map a
    pre-activation network normalises, and every parameter is then used)."""
    levels = levels_of(stages(name))
    return {**levels, max(levels): "norm"}
