"""Object detection: FCOS on a feature pyramid over the backbone, anchor-free.

The model is `models.build_detector` (backbone → FPN `neck` with extra levels → FCOS `head`);
the loss assigns every point of every level to at most one ground-truth box inside jit
(`models.fcos.assign`: static shapes, boxes padded with class -1) and sums focal, GIoU and
centre-ness losses; predictions are decoded and passed through class-aware NMS to a fixed
number of detections per image. The default evaluator is COCO mAP (`evaluators.detection`).

Boxes are [ymin, xmin, ymax, xmax] normalised to the input image, in batches and predictions
alike, so that resizing an image leaves them unchanged.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np
from PIL import Image

from jtransfer import models, visualize
from jtransfer.models import fcos
from jtransfer.tasks.base import Batch, Task, example_weights


class Detection(Task):
    name = "detection"
    features = ("boxes", "classes")
    default_evaluator = "detection"

    def build_model(self, norm_eval: str = "") -> nn.Module:
        return models.build_detector(
            self.config.model.name, self.num_classes, **self.model_options(norm_eval)
        )

    @functools.cached_property
    def strides(self) -> tuple[int, ...]:
        return tuple(self.build_model().head.strides)

    def loss(self, outputs: dict, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        return fcos.loss(
            outputs,
            batch["boxes"],
            batch["classes"],
            example_weights(batch),
            image_size=batch["image"].shape[1:3],
            strides=self.strides,
        )

    def predict(self, outputs: dict, image_size: tuple[int, int]) -> dict[str, jax.Array]:
        return fcos.decode(
            outputs,
            image_size=image_size,
            strides=self.strides,
            score_threshold=self.config.task.score_threshold,
            max_detections=self.config.task.max_detections,
        )

    def describe(self, prediction: dict[str, np.ndarray], top_k: int) -> list[str]:
        """The `top_k` best detections, 'score  class  [ymin, xmin, ymax, xmax]' (normalised)."""
        valid = np.flatnonzero(prediction["valid"])[:top_k]
        return [
            f"{prediction['scores'][i]:.4f}  {self.class_names[prediction['classes'][i]]}  "
            f"[{', '.join(f'{v:.3f}' for v in prediction['boxes'][i])}]"
            for i in valid
        ]

    def draw(self, image: np.ndarray, prediction: dict[str, np.ndarray]) -> Image.Image:
        valid = prediction["valid"]
        return visualize.draw_boxes(
            image,
            prediction["boxes"][valid],
            prediction["classes"][valid],
            prediction["scores"][valid],
            self.class_names,
        )
