"""Semantic segmentation head (semantic FPN) and its loss.

The head is the light semantic branch of Panoptic FPN (Kirillov et al. 2019), cut down for CPU:
each pyramid level goes through one 3x3 `ConvNorm` (`level_pL`), is bilinearly resized to the
finest level (stride 4 normally), the levels are summed, one more 3x3 `ConvNorm` (`fuse`) and a
1x1 `classifier` give per-class logits, which are bilinearly resized to the input size and
returned in float32 as (N, H, W, num_classes). Panoptic FPN's per-level stacks of
conv + 2x-upsampling steps are replaced by a single conv and one resize: the same receptive
field from the pyramid, a fraction of the compute at 64 channels.

The classifier starts at N(0, 0.01) rather than at zero (the classification head's choice):
with a zero kernel no gradient reaches anything below the classifier on the first step.

`segmentation_loss` returns a sum and a count rather than a mean, so that a caller can average
over everything it sums (micro-batches, hosts) with one division.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jtransfer.models.necks import Conv, ConvNorm, level_name


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of (N, h, w, C) to (N, *size, C) (half-pixel centres, like PyTorch's
    `align_corners=False`); a map already of that size is returned as is."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "bilinear")


class SegmentationHead(nn.Module):
    """Semantic-FPN head: `{stride: map}` -> float32 logits (N, H, W, num_classes) at the
    input size `image_size` (H, W). `norm` is one of `necks.NORMS`."""

    num_classes: int
    channels: int = 64
    norm: str = "group"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, pyramid: Mapping[int, jax.Array], *, image_size: tuple[int, int], train: bool
    ) -> jax.Array:
        del train  # no dropout or batch statistics
        unit = functools.partial(ConvNorm, self.channels, 3, norm=self.norm, dtype=self.dtype)
        finest = min(pyramid)
        size = pyramid[finest].shape[1:3]
        x = sum(
            resize_bilinear(unit(name=f"level_{level_name(s)}")(pyramid[s]), size)
            for s in sorted(pyramid)
        )
        x = unit(name="fuse")(x)
        logits = Conv(
            self.num_classes,
            1,
            kernel_init=nn.initializers.normal(0.01),
            dtype=self.dtype,
            name="classifier",
        )(x)
        return resize_bilinear(logits.astype(jnp.float32), tuple(image_size))


def segmentation_loss(
    logits: jax.Array, labels: jax.Array, weights: jax.Array, ignore_label: int = 255
) -> tuple[jax.Array, jax.Array]:
    """(sum of per-pixel softmax cross-entropy, number of pixels counted).

    logits (N, H, W, C), labels (N, H, W) integers in [0, C) or `ignore_label`, weights (N,)
    per-example weight (0 for padded examples). A pixel counts with its example's weight unless
    its label is `ignore_label`. Other labels outside [0, C) are the caller's bug: they cannot be
    detected inside jit and give an undefined loss. The mean loss is `sum / max(count, 1)`.
    """
    counted = (labels != ignore_label).astype(jnp.float32) * weights[:, None, None]
    safe = jnp.where(labels == ignore_label, 0, labels)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    return jnp.sum(ce * counted), jnp.sum(counted)
