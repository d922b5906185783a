"""Image classification: a pooled backbone feature, a zero-initialised linear head, softmax.

The head is `models.heads.ClassificationHead` under `head/dense`; the loss is cross-entropy toward
one-hot targets smoothed by `config.task.label_smoothing`, averaged over the real examples of a
batch; the default evaluator is top-1 accuracy with the evaluation loss.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from jtransfer import models, visualize
from jtransfer.tasks.base import Batch, Task, example_weights


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy toward smoothed one-hot targets."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


class Classification(Task):
    name = "classification"
    features = ("label",)
    default_evaluator = "classification"

    def build_model(self, norm_eval: str = "") -> nn.Module:
        return models.build_model(
            self.config.model.name, self.num_classes, **self.model_options(norm_eval)
        )

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        losses = cross_entropy(outputs, batch["label"], self.config.task.label_smoothing)
        correct = jnp.argmax(outputs, -1) == batch["label"]
        if "mask" not in batch:
            return losses.mean(), {"accuracy": jnp.mean(correct)}
        weights = example_weights(batch)
        count = jnp.maximum(weights.sum(), 1.0)
        return jnp.sum(losses * weights) / count, {"accuracy": jnp.sum(correct * weights) / count}

    def predict(self, outputs: jax.Array, image_size: tuple[int, int]) -> dict[str, Any]:
        return {"label": jnp.argmax(outputs, -1), "probabilities": jax.nn.softmax(outputs, -1)}

    def describe(self, prediction: dict[str, np.ndarray], top_k: int) -> list[str]:
        """The `top_k` most probable classes, 'probability  name', most probable first."""
        probabilities = prediction["probabilities"]
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        return [f"{probabilities[i]:.4f}  {self.class_names[i]}" for i in order]

    def draw(self, image: np.ndarray, prediction: dict[str, np.ndarray]) -> Image.Image:
        best = int(np.argmax(prediction["probabilities"]))
        probability = float(prediction["probabilities"][best])
        return visualize.label(image, f"{self.class_names[best]} {probability:.2f}")
