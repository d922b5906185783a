"""BiT (Big Transfer) ResNet-v2 backbone in Flax linen, layer for layer timm's `resnetv2_*_bit`.

Pre-activation bottlenecks (GroupNorm + ReLU before each weight-standardised convolution, the
3x3 one strided), a stem of a 7x7/2 StdConv then zero padding and an unpadded 3x3/2 max-pool
(BiT's fixed approximation of TF 'SAME' pooling), and a final GroupNorm + ReLU, since the
residual stream of a pre-activation network is never normalised otherwise. There are no batch
statistics, so the backbone has no `norm_eval` and `train` only exists for a uniform signature.

Paths are timm's module names: `stem/conv`, `stage{s}/block{b}/{norm1,conv1,norm2,conv2,norm3,
conv3}`, `stage{s}/block{b}/downsample/conv` and `norm`, which keeps the key map a renaming.
Inputs are NHWC images in [-1, 1] (BiT's normalisation: mean 0.5, std 0.5 of [0, 1] pixels).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtransfer.models import bit_spec as spec
from jtransfer.models.layers import StdConv
from jtransfer.models.resnet_spec import StageSpec

# timm builds BiT's StdConv2d with eps 1e-8 (its default is 1e-6) and GroupNorm with eps 1e-5.
STD_CONV_EPS = 1e-8
GROUP_NORM_EPS = 1e-5


def _norm_relu(x: jax.Array, name: str, dtype: jnp.dtype) -> jax.Array:
    """GroupNorm(32) -> ReLU; call inside a compact method (the norm becomes its submodule)."""
    return nn.relu(nn.GroupNorm(spec.GROUPS, epsilon=GROUP_NORM_EPS, dtype=dtype, name=name)(x))


class Stem(nn.Module):
    """7x7/2 StdConv `conv`, then zero-pad 1 and a 3x3/2 max-pool without padding."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = StdConv(self.features, 7, 2, self.dtype, epsilon=STD_CONV_EPS, name="conv")(x)
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return nn.max_pool(x, (3, 3), (2, 2))


class Downsample(nn.Module):
    """Projection shortcut: a strided 1x1 StdConv `conv` (no norm: its input is pre-activated)."""

    features: int
    stride: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = StdConv(self.features, 1, self.stride, self.dtype, epsilon=STD_CONV_EPS, name="conv")
        return conv(x)


class PreActBottleneck(nn.Module):
    """norm1 -> conv1 (1x1) -> norm2 -> conv2 (3x3/stride) -> norm3 -> conv3, + shortcut.

    The shortcut is the block input, or where the shape changes its projection of the
    *normalised* input (as in timm).
    """

    width: int
    out_channels: int
    stride: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(StdConv, dtype=self.dtype, epsilon=STD_CONV_EPS)
        x_preact = _norm_relu(x, "norm1", self.dtype)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.out_channels:
            shortcut = Downsample(self.out_channels, self.stride, self.dtype, name="downsample")(
                x_preact
            )
        h = conv(self.width, 1, name="conv1")(x_preact)
        h = conv(self.width, 3, self.stride, name="conv2")(_norm_relu(h, "norm2", self.dtype))
        h = conv(self.out_channels, 1, name="conv3")(_norm_relu(h, "norm3", self.dtype))
        return h + shortcut


class Stage(nn.Module):
    """`spec.blocks` bottlenecks `block1`, `block2`, ...; the first one strides and widens."""

    spec: StageSpec
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        st = self.spec
        for b in range(1, st.blocks + 1):
            stride = st.stride if b == 1 else 1
            x = PreActBottleneck(st.width, st.out_channels, stride, self.dtype, name=f"block{b}")(x)
        return x


class BiT(nn.Module):
    """BiT ResNet-v2 feature extractor: NHWC images in [-1, 1] -> (N, h/32, w/32, C) features.

    `dtype` is the computation dtype (parameters stay float32). With `return_stages=True` it
    returns the output of each of `bit_spec.stage_names(variant)`: the stem's after its max-pool
    (stride 4), the stages' un-normalised residual streams, and `norm`, the backbone output.
    """

    variant: str = "bit_r50x1"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, return_stages: bool = False
    ) -> jax.Array | dict[str, jax.Array]:
        del train  # no batch statistics or dropout
        x = Stem(spec.stem_channels(self.variant), self.dtype, name="stem")(x)
        features = {"stem": x}
        for s, stage in enumerate(spec.stages(self.variant), start=1):
            x = Stage(stage, self.dtype, name=f"stage{s}")(x)
            features[f"stage{s}"] = x
        x = _norm_relu(x, "norm", self.dtype)
        features["norm"] = x
        return features if return_stages else x
