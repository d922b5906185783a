"""EfficientNet-Lite backbone in Flax linen, layer for layer the lukemelas/TF model.

Lite variants are EfficientNet without squeeze-excitation and with ReLU6; the stage table
comes from `efficientnet_lite_spec` so that this module and the pretrained key map cannot
disagree. Submodule names are the parameter paths (`stem`, `stage{s}/block{b}/{expand,
depthwise,project}`, `top`, each with `conv` and `bn`), which is what policies and the key map
match against, so they are spelled out rather than left to Flax's auto-naming.

`norm_eval` (a regex over module paths) holds what it matches in inference mode: BatchNorm
layers normalise with their running statistics (see `layers.BatchNorm`), and a matched block
skips stochastic depth, so a frozen block computes the same features at every step.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtransfer.models import efficientnet_lite_spec
from jtransfer.models.efficientnet_lite_spec import StageSpec
from jtransfer.models.layers import ConvBN


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> k x k depthwise -> 1x1 project, + identity skip."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    expand: int
    drop_connect_rate: float = 0.0
    norm_eval: str = ""
    depthwise_impl: str = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        common = dict(norm_eval=self.norm_eval, dtype=self.dtype)
        hidden = self.in_channels * self.expand
        h = x
        if self.expand != 1:
            h = ConvBN(hidden, name="expand", **common)(h, train=train)
        h = ConvBN(
            hidden,
            self.kernel_size,
            self.stride,
            depthwise=True,
            depthwise_impl=self.depthwise_impl,
            name="depthwise",
            **common,
        )(h, train=train)
        h = ConvBN(self.out_channels, act=False, name="project", **common)(h, train=train)
        if self.stride == 1 and self.in_channels == self.out_channels:
            # Stochastic depth: drop the whole residual branch per example; not in a block that
            # `norm_eval` holds in inference mode (frozen features should not be noisy).
            held = bool(self.norm_eval) and re.search(self.norm_eval, "/".join(self.path))
            h = nn.Dropout(self.drop_connect_rate, broadcast_dims=(1, 2, 3), name="drop_connect")(
                h, deterministic=not train or bool(held)
            )
            h = h + x
        return h


class Stage(nn.Module):
    """`spec.repeats` MBConv blocks `block1`, `block2`, ...; the first one strides and widens."""

    spec: StageSpec
    drop_connect_rates: tuple[float, ...]
    norm_eval: str = ""
    depthwise_impl: str = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        st = self.spec
        for b, rate in enumerate(self.drop_connect_rates, start=1):
            x = MBConv(
                in_channels=st.in_channels if b == 1 else st.out_channels,
                out_channels=st.out_channels,
                kernel_size=st.kernel,
                stride=st.stride if b == 1 else 1,
                expand=st.expand,
                drop_connect_rate=rate,
                norm_eval=self.norm_eval,
                depthwise_impl=self.depthwise_impl,
                dtype=self.dtype,
                name=f"block{b}",
            )(x, train=train)
        return x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature extractor: NHWC images in [-1, 1] -> (N, h, w, 1280) features.

    `norm_eval` is a regex over BatchNorm paths (see `layers.BatchNorm`); `depthwise_impl`
    chooses the depthwise convolution ('auto' picks by backend); `dtype` is the computation
    dtype (parameters stay float32).
    """

    variant: str = "efficientnet_lite0"
    norm_eval: str = ""
    depthwise_impl: str = "auto"
    drop_connect_rate: float = 0.2
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, return_stages: bool = False
    ) -> jax.Array | dict[str, jax.Array]:
        common = dict(norm_eval=self.norm_eval, dtype=self.dtype)
        stages = efficientnet_lite_spec.stages(self.variant)
        num_blocks = sum(s.repeats for s in stages)

        x = ConvBN(efficientnet_lite_spec.STEM_CHANNELS, 3, 2, name="stem", **common)(
            x, train=train
        )
        features = {"stem": x}
        first_block = 0
        for s, stage in enumerate(stages, start=1):
            x = Stage(
                stage,
                # Stochastic depth grows linearly with the block index over the whole network.
                drop_connect_rates=tuple(
                    self.drop_connect_rate * (first_block + b) / num_blocks
                    for b in range(stage.repeats)
                ),
                depthwise_impl=self.depthwise_impl,
                name=f"stage{s}",
                **common,
            )(x, train=train)
            first_block += stage.repeats
            features[f"stage{s}"] = x
        x = ConvBN(efficientnet_lite_spec.TOP_CHANNELS, name="top", **common)(x, train=train)
        features["top"] = x
        return features if return_stages else x
