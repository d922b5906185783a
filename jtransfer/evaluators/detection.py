"""COCO box mAP over an evaluation split, scored by pycocotools.

Each batch's jitted step decodes the model's outputs into a fixed number of detections per image
(`Task.predict`: boxes, scores, classes, valid); detections and ground truth are gathered to
every process as whole global arrays (as `features.extract_features` gathers features) and
handed to `coco_metrics.CocoEvaluator`, whose padding weights leave out the padded examples of
the last batch. Boxes are normalised to the model's input; the pixel sizes pycocotools sees (for
its small / medium / large split) are those of the input image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jtransfer import sharding
from jtransfer.evaluators.base import Context
from jtransfer.evaluators.coco_metrics import CocoEvaluator


class DetectionEvaluator:
    """Options: `split`, `pp`. Metrics: mAP, mAP50, mAP75, mAP_small/medium/large, AP/<class>,
    AP50/<class>, count."""

    def __init__(self, options: Mapping[str, Any], context: Context):
        split, pp = context.split_and_pp(options)
        self._batches = context.batches(split, pp)
        self._mesh = context.mesh
        self._class_names = context.task.class_names
        outputs, task = context.outputs_fn(), context.task

        def step(variables, batch):
            images = batch["image"]
            detections = task.predict(outputs(variables, images), images.shape[1:3])
            truth = {k: batch[k] for k in ("boxes", "classes", "mask")}
            return detections, truth

        self._step = jax.jit(step)

    def run(self, variables: Mapping[str, Any]) -> dict[str, float]:
        variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        coco = CocoEvaluator(self._class_names)
        for batch in self._batches:
            images = sharding.global_batch(batch, self._mesh)
            out = self._step(variables, images)
            # tiled=True: each global array comes back whole on every process.
            detections, truth = jax.tree.map(
                np.asarray, multihost_utils.process_allgather(out, tiled=True)
            )
            height, width = images["image"].shape[1:3]
            sizes = np.tile([height, width], (len(truth["mask"]), 1))
            coco.add(
                truth["boxes"],
                truth["classes"],
                detections["boxes"],
                detections["scores"],
                detections["classes"],
                detections["valid"],
                sizes,
                weights=truth["mask"],
            )
        return {**coco.result(), "count": float(coco.num_images)}
