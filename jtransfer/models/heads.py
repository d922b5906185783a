"""Classification head and the classifier that joins a backbone to a head.

The head of a transfer run starts at zero (kernel and bias), so the first steps see exactly the
pretrained features and a uniform prediction, and the parameter tree has the two fixed top
level names `backbone` and `head` that parameter policies and grafting are written against.
`head_init='lecun_normal'` starts the kernel random instead (flax's default for a new dense
layer), for the ablation that compares the two.

Backbones return either a feature map (N, h, w, C), which is average-pooled here, or an already
pooled (N, C) vector (ViT's class token), which passes through: pooling is the backbone's
choice, so the head needs no per-family variant.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtransfer.errors import JTransferError

# `head_init` -> the initialiser of the head's kernel (its bias starts at zero either way)
HEAD_INITS = {"zeros": nn.initializers.zeros, "lecun_normal": nn.initializers.lecun_normal()}


def pool(features: jax.Array) -> jax.Array:
    """(N, C) float32 features: the spatial mean of an (N, h, w, C) map, or (N, C) as it is."""
    features = features.astype(jnp.float32)
    return jnp.mean(features, axis=(1, 2)) if features.ndim == 4 else features


class ClassificationHead(nn.Module):
    """Global average pool (of a map) -> dropout -> `dense` layer, initialised by `head_init`
    (a key of `HEAD_INITS`)."""

    num_classes: int
    dropout_rate: float = 0.0
    head_init: str = "zeros"

    def __post_init__(self):
        if self.head_init not in HEAD_INITS:
            raise JTransferError(
                f"head_init={self.head_init!r} is not a head initialiser; valid: {list(HEAD_INITS)}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
        x = nn.Dropout(self.dropout_rate)(pool(features), deterministic=not train)
        return nn.Dense(
            self.num_classes,
            kernel_init=HEAD_INITS[self.head_init],
            bias_init=nn.initializers.zeros,
            name="dense",
        )(x)


class ImageClassifier(nn.Module):
    """`backbone` (images -> features) followed by `head` (features -> logits)."""

    backbone: nn.Module
    head: nn.Module

    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        return self.head(self.backbone(images, train=train), train=train)

    def features(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """Pooled backbone features (N, C), e.g. for linear probes and few-shot evaluation."""
        return pool(self.backbone(images, train=train))
