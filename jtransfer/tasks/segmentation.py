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
import numpy as np
from PIL import Image

from jtransfer import models, visualize
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

    def describe(self, prediction: dict[str, np.ndarray], top_k: int) -> list[str]:
        """The share of the image each predicted class covers, largest first."""
        counts = np.bincount(prediction["segmentation"].ravel(), minlength=self.num_classes)
        shares = counts / max(counts.sum(), 1)
        order = np.argsort(-shares, kind="stable")[:top_k]
        return [f"{shares[i]:.4f}  {self.class_names[i]}" for i in order if counts[i]]

    def draw(self, image: np.ndarray, prediction: dict[str, np.ndarray]) -> Image.Image:
        return visualize.overlay_mask(image, prediction["segmentation"])
