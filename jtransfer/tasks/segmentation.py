"""Semantic segmentation: per-pixel class logits from a feature pyramid over the backbone.

The model is `models.build_segmenter` (backbone → FPN `neck` → semantic-FPN `head`, logits at
the input's size); the loss is per-pixel cross-entropy averaged over the pixels that count: not
the ignore label (`config.data.ignore_label`, e.g. the trimap's boundary) and not in a padded
example. The default evaluator is mean IoU from a confusion matrix (`evaluators.segmentation`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtransfer import models
from jtransfer.models.segmentation import segmentation_loss
from jtransfer.tasks.base import Batch, Task, example_weights


class Segmentation(Task):
    name = "segmentation"
    features = ("segmentation",)
    default_evaluator = "segmentation"

    def build_model(self, norm_eval: str = "") -> nn.Module:
        return models.build_segmenter(
            self.config.model.name, self.num_classes, **self.model_options(norm_eval)
        )

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        labels = batch["segmentation"]
        ignore = self.config.data.ignore_label
        total, count = segmentation_loss(outputs, labels, example_weights(batch), ignore)
        count = jnp.maximum(count, 1.0)
        counted = (labels != ignore) * example_weights(batch)[:, None, None]
        correct = jnp.sum((jnp.argmax(outputs, -1) == labels) * counted)
        return total / count, {"pixel_accuracy": correct / count}

    def predict(self, outputs: jax.Array, image_size: tuple[int, int]) -> dict[str, jax.Array]:
        return {"segmentation": jnp.argmax(outputs, -1).astype(jnp.int32)}
