"""Dense-prediction models: backbone stages -> neck (feature pyramid) -> head.

`DenseModel` has exactly the three top-level subtrees `backbone`, `neck` and `head`, and its
backbone is the classifier's backbone module, built with the same options: the same parameter
paths and shapes (an ImageNet checkpoint grafts onto `backbone/...` unchanged) and the same
BatchNorm module paths (`norm_eval` regexes behave exactly as for the classifier; the neck and
heads have no BatchNorm, so no batch statistics outside `backbone`).

`levels` maps a stride to the backbone stage whose output feeds the neck at that stride
(`models.feature_levels`). Each family's pyramid ends at its last stage (EfficientNet-Lite's
`top` 1x1 convolution, BiT's final `norm`, ViT's final `norm`), so every backbone parameter is
used: nothing in the tree is dead (no parameter that only decays, no BatchNorm statistics that
drift unused, no `dont_load` patterns for unused checkpoint keys), and the presets' stage
lists apply as they are. Stages the pyramid does not read are computed by the backbone call
and dropped by XLA.

The input height and width must be multiples of the largest backbone stride in `levels` (32):
then every level of stride s has exactly (H / s, W / s) locations (ceil for coarser extra
levels), which is what the FCOS point grid and the segmentation head's upsampling assume.
`segmenter` and `detector` assemble the usual necks and heads; `models.build_segmenter` and
`models.build_detector` are the by-name entry points.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtransfer.errors import JTransferError
from jtransfer.models.fcos import FCOSHead
from jtransfer.models.necks import FPN, SimpleFeaturePyramid
from jtransfer.models.segmentation import SegmentationHead


class DenseModel(nn.Module):
    """`backbone` (images -> stage maps) -> `neck` ({stride: map} -> pyramid) -> `head`.

    `levels` is ((stride, stage name), ...); `__call__` returns the head's output (segmentation
    logits, or FCOS's dict of outputs).
    """

    backbone: nn.Module
    neck: nn.Module
    head: nn.Module
    levels: tuple[tuple[int, str], ...]

    def __call__(self, images: jax.Array, *, train: bool):
        image_size = tuple(images.shape[1:3])
        largest = max(s for s, _ in self.levels)
        if any(size % largest for size in image_size):
            raise JTransferError(
                f"input size {image_size} must be a multiple of {largest} in height and width "
                "(the backbone's largest feature stride)"
            )
        stages = self.backbone(images, train=train, return_stages=True)
        pyramid = self.neck({s: stages[name] for s, name in self.levels})
        return self.head(pyramid, image_size=image_size, train=train)


def _neck(
    levels: Mapping[int, str],
    strides: tuple[int, ...],
    neck_norm: str | None,
    channels: int,
    dtype: jnp.dtype,
) -> tuple[dict[int, str], nn.Module]:
    """FPN over the backbone levels among `strides` (more than one), or ViTDet's simple
    pyramid from a single level; then extra levels up to max(strides)."""
    if len(levels) == 1:
        (patch,) = levels
        inner = tuple(s for s in strides if s <= max(patch, 32))
        return dict(levels), SimpleFeaturePyramid(
            channels, inner, len(strides) - len(inner), neck_norm or "layer", dtype
        )
    used = {s: name for s, name in levels.items() if s in strides}
    missing = [s for s in strides if s <= max(levels) and s not in levels]
    if missing or len(used) < 2:
        raise JTransferError(
            f"pyramid strides {list(strides)} need backbone levels {sorted(levels)} "
            "for all strides up to the backbone's largest (and at least two of them)"
        )
    return used, FPN(channels, len(strides) - len(used), neck_norm or "none", dtype)


def _check_strides(strides: tuple[int, ...]) -> tuple[int, ...]:
    strides = tuple(sorted(strides))
    doubling = all(b == 2 * a for a, b in zip(strides, strides[1:], strict=False))
    if not strides or not doubling or strides[0] < 1 or strides[0] & (strides[0] - 1):
        raise JTransferError(f"strides must be consecutive powers of two, got {list(strides)}")
    return strides


def segmenter(
    backbone: nn.Module,
    levels: Mapping[int, str],
    num_classes: int,
    *,
    channels: int = 64,
    strides: tuple[int, ...] = (4, 8, 16, 32),
    neck_norm: str | None = None,
    head_norm: str = "group",
    dtype: jnp.dtype = jnp.float32,
) -> DenseModel:
    """Backbone -> FPN (or ViTDet pyramid) at `strides` -> `SegmentationHead`.

    `neck_norm` None means the neck's default (none for FPN, LayerNorm for ViTDet's pyramid).
    """
    strides = _check_strides(strides)
    used, neck = _neck(levels, strides, neck_norm, channels, dtype)
    head = SegmentationHead(num_classes, channels, head_norm, dtype)
    return DenseModel(backbone, neck, head, tuple(sorted(used.items())))


def detector(
    backbone: nn.Module,
    levels: Mapping[int, str],
    num_classes: int,
    *,
    channels: int = 64,
    strides: tuple[int, ...] = (8, 16, 32, 64, 128),
    tower_depth: int = 2,
    neck_norm: str | None = None,
    head_norm: str = "group",
    box_activation: str = "exp",
    dtype: jnp.dtype = jnp.float32,
) -> DenseModel:
    """Backbone -> FPN (or ViTDet pyramid) at `strides`, the ones past the backbone's largest by
    extra stride-2 convolutions -> `FCOSHead` (`model.head.strides` is what `fcos.loss` and
    `fcos.decode` take as `strides`)."""
    strides = _check_strides(strides)
    used, neck = _neck(levels, strides, neck_norm, channels, dtype)
    head = FCOSHead(
        num_classes,
        strides,
        channels,
        tower_depth,
        head_norm,
        box_activation=box_activation,
        dtype=dtype,
    )
    return DenseModel(backbone, neck, head, tuple(sorted(used.items())))
