"""Necks: backbone stage maps -> a feature pyramid with one channel count at every level.

A neck takes `{stride: map}` (what `DenseModel` picks out of the backbone's `return_stages`) and
returns `{stride: map}`, every map (N, ceil(H / stride), ceil(W / stride), channels). Strides are
the keys throughout (necks, heads, FCOS point grids) because they are what the arithmetic needs;
parameter names use the pyramid level `p{log2(stride)}` (`neck/lateral_p3/conv/kernel`), the
convention of the FPN paper and of detection codebases, so policy regexes read as usual.

* `FPN` (Lin et al. 2017) for the CNNs: a 1x1 lateral convolution per input level, a top-down
  pathway of nearest-neighbour 2x upsampling and addition, a 3x3 output convolution per level,
  and optionally extra coarser levels by stride-2 3x3 convolutions on the coarsest output (FCOS's
  P6/P7 "on P5"; P7 takes ReLU(P6) as in RetinaNet).
* `SimpleFeaturePyramid` (ViTDet, Li et al. 2022) for ViT, whose only map is at the patch stride:
  2x2 stride-2 transposed convolutions up to finer strides, identity at the patch stride,
  max-pooling down to coarser ones, then a 1x1 and a 3x3 convolution per level; extra levels as
  in `FPN`.

Normalisation in new layers is GroupNorm, LayerNorm (ViTDet's choice) or none, never BatchNorm:
dense tasks train with a few images per batch, where batch statistics are noise. Convolutions go
through `layers.conv2d`, the CPU-tuned implementation the backbones use (a 1x1 convolution as a
2-D matrix product), and compute in the module's `dtype` like the backbones.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtransfer.errors import JTransferError
from jtransfer.models.layers import conv2d

NORMS = ("none", "group", "layer")
GROUPS = 32  # GroupNorm groups (fewer when there are fewer channels), as in FCOS and detectron2


def level_name(stride: int) -> str:
    """`p{log2(stride)}`: the pyramid level of a power-of-two stride (8 -> 'p3')."""
    if stride < 1 or stride & (stride - 1):
        raise JTransferError(f"pyramid strides must be powers of two, got {stride}")
    return f"p{stride.bit_length() - 1}"


def check_norm(norm: str, channels: int) -> None:
    """A `norm` that `ConvNorm` can build for `channels`, or a `JTransferError` saying why not."""
    if norm not in NORMS:
        raise JTransferError(f"unknown norm {norm!r}; valid: {list(NORMS)}")
    if norm == "group" and channels % min(GROUPS, channels):
        raise JTransferError(
            f"GroupNorm needs channels divisible by {GROUPS} (or fewer than {GROUPS}), "
            f"got {channels}"
        )


class Conv(nn.Module):
    """k x k convolution, TF 'SAME' padding (output ceil(input / stride)), optional bias."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, "same")
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(self.dtype)
        return y


class ConvNorm(nn.Module):
    """Conv -> norm (one of `NORMS`) -> optional ReLU; the conv has a bias only without a norm.

    Parameters: `conv/kernel`, and `conv/bias` or `norm/{scale,bias}`.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    norm: str = "none"
    act: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_norm(self.norm, self.features)
        x = Conv(
            self.features,
            self.kernel_size,
            self.stride,
            use_bias=self.norm == "none",
            dtype=self.dtype,
            name="conv",
        )(x)
        if self.norm == "group":
            x = nn.GroupNorm(min(GROUPS, self.features), dtype=self.dtype, name="norm")(x)
        elif self.norm == "layer":
            x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
        return nn.relu(x) if self.act else x


def _upsample_to(x: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour 2x upsampling, cropped to `shape` (a ceil-sized finer map)."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x[:, : shape[0], : shape[1]]


def _check_pyramid_input(features: Mapping[int, jax.Array], expected: int | None) -> list[int]:
    strides = sorted(features)
    for s in strides:
        level_name(s)
    if expected is not None and len(strides) != expected:
        raise JTransferError(f"this neck takes {expected} input level(s), got strides {strides}")
    if any(b != 2 * a for a, b in zip(strides, strides[1:], strict=False)):
        raise JTransferError(f"FPN input strides must double level to level, got {strides}")
    return strides


class Upsample(nn.Module):
    """`factor` (a power of two) x upsampling by transposed 2x2/2 convolutions `deconv{i}`,
    halving the channels each time, with LayerNorm `norm{i}` and GELU between them (ViTDet)."""

    factor: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        for i in range(1, self.factor.bit_length()):
            if i > 1:
                x = nn.gelu(nn.LayerNorm(dtype=self.dtype, name=f"norm{i - 1}")(x))
            channels = max(channels // 2, 1)
            x = nn.ConvTranspose(
                channels, (2, 2), (2, 2), "VALID", dtype=self.dtype, name=f"deconv{i}"
            )(x)
        return x


def _add_extra_levels(
    pyramid: dict[int, jax.Array], channels: int, num: int, dtype: jnp.dtype
) -> dict[int, jax.Array]:
    """`num` coarser levels from the coarsest map: stride-2 3x3 convs `extra_pL`, ReLU between.

    Called inside a neck's compact `__call__`, so the convolutions are the neck's submodules.
    """
    stride = max(pyramid)
    x = pyramid[stride]
    for i in range(num):
        if i:
            x = nn.relu(x)
        stride *= 2
        x = Conv(channels, 3, 2, dtype=dtype, name=f"extra_{level_name(stride)}")(x)
        pyramid[stride] = x
    return pyramid


class FPN(nn.Module):
    """Feature Pyramid Network: `{stride: backbone map}` -> `{stride: (N, h, w, channels)}`.

    `num_extra` adds that many coarser levels (2 gives FCOS's P6 and P7 over C3-C5). `norm`
    (one of `NORMS`) follows the lateral and output convolutions; detectron2's FPN default is
    none. Parameters: `lateral_pL`, `output_pL`, `extra_pL` for each level L.
    """

    channels: int = 64
    num_extra: int = 0
    norm: str = "none"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Mapping[int, jax.Array]) -> dict[int, jax.Array]:
        strides = _check_pyramid_input(features, None)
        unit = functools.partial(
            ConvNorm, self.channels, norm=self.norm, act=False, dtype=self.dtype
        )
        lateral = {s: unit(1, name=f"lateral_{level_name(s)}")(features[s]) for s in strides}
        pyramid = {}
        top_down = lateral[strides[-1]]
        for s in reversed(strides):
            if s != strides[-1]:
                top_down = lateral[s] + _upsample_to(top_down, lateral[s].shape[1:3])
            pyramid[s] = unit(3, name=f"output_{level_name(s)}")(top_down)
        return _add_extra_levels(pyramid, self.channels, self.num_extra, self.dtype)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: `{patch stride: (N, h, w, D)}` -> `{stride: map}` for
    each of `strides` (powers of two around the patch stride), plus `num_extra` coarser levels.

    Up by a factor 2^k: k transposed 2x2/2 convolutions `up_pL/deconv{i}` (D/2, D/4, ...
    channels, LayerNorm `up_pL/norm{i}` and GELU between them, as in ViTDet); down by 2^k: a
    2^k max-pool. Then per level a 1x1 `lateral_pL` and a 3x3 `output_pL` convolution with
    `norm` (ViTDet's LayerNorm by default); extra levels `extra_pL` as in `FPN`.
    """

    channels: int = 64
    strides: tuple[int, ...] = (4, 8, 16, 32)
    num_extra: int = 0
    norm: str = "layer"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Mapping[int, jax.Array]) -> dict[int, jax.Array]:
        (patch,) = _check_pyramid_input(features, 1)
        unit = functools.partial(
            ConvNorm, self.channels, norm=self.norm, act=False, dtype=self.dtype
        )
        x = features[patch].astype(self.dtype)
        pyramid = {}
        for s in sorted(self.strides):
            name = level_name(s)
            y = x
            if s < patch:
                y = Upsample(patch // s, self.dtype, name=f"up_{name}")(y)
            elif s > patch:
                y = nn.max_pool(y, (s // patch,) * 2, (s // patch,) * 2, padding="SAME")
            y = unit(1, name=f"lateral_{name}")(y)
            pyramid[s] = unit(3, name=f"output_{name}")(y)
        return _add_extra_levels(pyramid, self.channels, self.num_extra, self.dtype)
