"""Mean IoU over an evaluation split: one confusion matrix, summed over batches and hosts.

Each batch's jitted step predicts a class per pixel (`Task.predict`) and counts (true, predicted)
pairs with `segmentation_metrics.confusion_matrix`, which leaves out the ignore label and the
padded examples of the last batch; on global arrays, XLA adds the counts of every device and
host inside the step. The host adds the batches' matrices in int64 (a whole split can pass
int32's range) and computes IoU once, from the total: a mean IoU is not a mean of batch IoUs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jtransfer import sharding
from jtransfer.evaluators.base import Context
from jtransfer.evaluators.segmentation_metrics import confusion_matrix, iou_metrics


class SegmentationEvaluator:
    """Options: `split`, `pp`. Metrics: mean_iou, pixel_accuracy, iou/<class>, count."""

    def __init__(self, options: Mapping[str, Any], context: Context):
        split, pp = context.split_and_pp(options)
        self._batches = context.batches(split, pp)
        self._mesh = context.mesh
        self._class_names = context.task.class_names
        outputs, task = context.outputs_fn(), context.task
        num_classes, ignore = task.num_classes, context.config.data.ignore_label

        def step(variables, batch):
            images = batch["image"]
            predicted = task.predict(outputs(variables, images), images.shape[1:3])
            counts = confusion_matrix(
                predicted["segmentation"], batch["segmentation"], batch["mask"], num_classes, ignore
            )
            return counts, batch["mask"].sum()

        self._step = jax.jit(step, out_shardings=sharding.replicated(context.mesh))

    def run(self, variables: Mapping[str, Any]) -> dict[str, float]:
        variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        total, count = 0, 0.0
        for batch in self._batches:
            counts, real = jax.device_get(
                self._step(variables, sharding.global_batch(batch, self._mesh))
            )
            total, count = total + np.asarray(counts, np.int64), count + float(real)
        return {**iou_metrics(total, self._class_names), "count": count}
