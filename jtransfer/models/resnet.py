"""ResNet v1.5 backbone in Flax linen, layer for layer torchvision's / timm's `resnet*`.

v1.5 strides on the bottleneck's 3x3 convolution, not its first 1x1. Padding, BatchNorm
constants (eps 1e-5, PyTorch momentum 0.1) and the stem's max-pool (3x3/2, padding 1) are
PyTorch's, so torch weights reproduce torch logits. Every convolution is a `ConvBN` unit, giving
the paths `stem/{conv,bn}`, `stage{s}/block{b}/conv{1,2,3}/{conv,bn}` and
`stage{s}/block{b}/downsample/{conv,bn}` that policies and the key map are written against.
The stage table comes from `resnet_spec`, shared with the key map.

Inputs are NHWC images normalised with the ImageNet mean (0.485, 0.456, 0.406) and standard
deviation (0.229, 0.224, 0.225) of [0, 1] pixel values, as torchvision's weights expect.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtransfer.models import resnet_spec as spec
from jtransfer.models.layers import ConvBN

# Convolution -> BatchNorm -> ReLU with PyTorch's padding and BatchNorm constants.
TorchConvBN = functools.partial(
    ConvBN, padding="symmetric", act_fn=nn.relu, bn_epsilon=1e-5, bn_momentum=0.9
)


class ResidualBlock(nn.Module):
    """BasicBlock (3x3 -> 3x3) or Bottleneck (1x1 -> 3x3/stride -> 1x1), + projected shortcut
    where the shape changes, then ReLU."""

    width: int
    out_channels: int
    stride: int
    bottleneck: bool
    norm_eval: str = ""
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        unit = functools.partial(TorchConvBN, norm_eval=self.norm_eval, dtype=self.dtype)
        if self.bottleneck:
            h = unit(self.width, 1, name="conv1")(x, train=train)
            h = unit(self.width, 3, self.stride, name="conv2")(h, train=train)
            h = unit(self.out_channels, 1, act=False, name="conv3")(h, train=train)
        else:
            h = unit(self.width, 3, self.stride, name="conv1")(x, train=train)
            h = unit(self.out_channels, 3, act=False, name="conv2")(h, train=train)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.out_channels:
            shortcut = unit(self.out_channels, 1, self.stride, act=False, name="downsample")(
                x, train=train
            )
        return nn.relu(h + shortcut)


class Stage(nn.Module):
    """`spec.blocks` residual blocks `block1`, `block2`, ...; the first one strides and widens."""

    spec: spec.StageSpec
    bottleneck: bool
    norm_eval: str = ""
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        st = self.spec
        for b in range(1, st.blocks + 1):
            x = ResidualBlock(
                st.width,
                st.out_channels,
                st.stride if b == 1 else 1,
                self.bottleneck,
                self.norm_eval,
                self.dtype,
                name=f"block{b}",
            )(x, train=train)
        return x


class ResNet(nn.Module):
    """ResNet v1.5 feature extractor: ImageNet-normalised NHWC images -> (N, h/32, w/32, C).

    `norm_eval` is a regex over BatchNorm paths (see `layers.BatchNorm`); `dtype` is the
    computation dtype (parameters stay float32). With `return_stages=True` it returns the output
    of each of `resnet_spec.stage_names(variant)` (the stem's after its max-pool, stride 4).
    """

    variant: str = "resnet50"
    norm_eval: str = ""
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, return_stages: bool = False
    ) -> jax.Array | dict[str, jax.Array]:
        common = dict(norm_eval=self.norm_eval, dtype=self.dtype)
        bottleneck = spec.variant(self.variant).bottleneck

        x = TorchConvBN(spec.STEM_CHANNELS, 7, 2, name="stem", **common)(x, train=train)
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        features = {"stem": x}
        for s, stage in enumerate(spec.stages(self.variant), start=1):
            x = Stage(stage, bottleneck, name=f"stage{s}", **common)(x, train=train)
            features[f"stage{s}"] = x
        return features if return_stages else x
