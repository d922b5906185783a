"""COCO box detection metrics, computed by pycocotools from batches of padded numpy arrays.

COCO mAP has details that a rewrite easily gets subtly wrong (greedy matching by score at each
IoU threshold, 101-point interpolated precision, at most 100 detections per image and class),
and papers quote pycocotools' numbers, so this module only converts: it collects the
evaluation set's boxes batch by batch (`add`) and, at the end (`result`), builds the
ground-truth `COCO` object in memory exactly as pycocotools would read it from an annotation
file, loads the detections with pycocotools' own `COCO.loadRes`, and runs `COCOeval` with its
default bbox parameters. pycocotools prints progress; that output is swallowed so a training
log stays clean.

Inputs are what a detection model and a padded batch carry: boxes normalised
[ymin, xmin, ymax, xmax] in [0, 1], turned into pixel [x, y, width, height] with each image's
(height, width); ground-truth classes with -1 marking padding slots; detections with a `valid`
mask (fixed-size outputs); and an optional per-image `weights` (0 = a padded example of the
last batch, skipped whole). Every real image is a COCO image, with or without objects, so
detections on an image without objects are false positives.

Ids follow COCO: image, annotation and category ids start at 1 (COCOeval marks an unmatched
detection with id 0, so an annotation id 0 would never match); category id = class index + 1.
A ground-truth area is its box's pixel width x height. IoU does not change when an axis is
scaled, so the pixel sizes matter only for the split by object area (small < 32², medium, large
> 96² pixels): the one place where `image_sizes` changes a result.

Results: 'mAP' (AP at IoU .50:.05:.95), 'mAP50', 'mAP75', 'mAP_small', 'mAP_medium',
'mAP_large': pycocotools' own `stats[0:6]`, averaged over the classes that have ground truth
(of that size); and per class 'AP/<name>' and 'AP50/<name>', the same means over that class's
slice of `eval['precision']` (area 'all', 100 detections), as detectron2 reports them.
pycocotools gives -1 for a class without ground truth in the set (its detections are not
scored at all); that becomes NaN, so every evaluation reports the same keys and no mean can
mistake it for a score. Likewise a mean with nothing to average over (no objects at all, or
none of a size) is NaN.

Each process scores the images it was given: on several hosts, gather the batches first.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jtransfer.errors import JTransferError

# COCOeval.stats[0:6] for boxes, in its order.
SUMMARY_KEYS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


def _pixel_xywh(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """(N, 4) normalised [ymin, xmin, ymax, xmax] → (N, 4) pixel [x, y, width, height]."""
    ymin, xmin, ymax, xmax = boxes.astype(np.float64).T
    return np.stack([xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height], 1)


def _ap(precision: np.ndarray) -> float:
    """Mean of the entries pycocotools filled in (-1: no ground truth), as its summarize does."""
    filled = precision[precision > -1]
    return float(filled.mean()) if filled.size else float("nan")


class CocoEvaluator:
    """Collects an evaluation set's boxes with `add`, scores them with `result`."""

    def __init__(self, class_names: Sequence[str]):
        if not class_names or len(set(class_names)) != len(class_names):
            raise JTransferError(f"class names {list(class_names)} must be distinct, at least one")
        self.class_names = list(class_names)
        self._images: list[dict] = []
        self._ground_truth: list[dict] = []
        self._detections: list[dict] = []

    @property
    def num_images(self) -> int:
        return len(self._images)

    def add(
        self,
        gt_boxes: np.ndarray,
        gt_classes: np.ndarray,
        pred_boxes: np.ndarray,
        pred_scores: np.ndarray,
        pred_classes: np.ndarray,
        pred_valid: np.ndarray,
        image_sizes: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> None:
        """One batch: gt_boxes (B, M, 4), gt_classes (B, M) with -1 = padding; pred_boxes
        (B, K, 4), pred_scores, pred_classes, pred_valid (B, K); image_sizes (B, 2) pixel
        (height, width); weights (B,), 0 for a padded example (default: all real)."""
        gt_boxes, gt_classes = np.asarray(gt_boxes), np.asarray(gt_classes)
        pred_boxes, pred_scores = np.asarray(pred_boxes), np.asarray(pred_scores)
        pred_classes, pred_valid = np.asarray(pred_classes), np.asarray(pred_valid, bool)
        image_sizes = np.asarray(image_sizes, np.float64)
        if gt_boxes.ndim != 3 or pred_boxes.ndim != 3:
            raise JTransferError(
                f"gt_boxes {gt_boxes.shape} and pred_boxes {pred_boxes.shape} must be "
                "(B, M, 4) and (B, K, 4)"
            )
        (b, m), k = gt_boxes.shape[:2], pred_boxes.shape[1]
        weights = np.ones(b) if weights is None else np.asarray(weights)
        expected = {
            "gt_boxes": (gt_boxes, (b, m, 4)),
            "gt_classes": (gt_classes, (b, m)),
            "pred_boxes": (pred_boxes, (b, k, 4)),
            "pred_scores": (pred_scores, (b, k)),
            "pred_classes": (pred_classes, (b, k)),
            "pred_valid": (pred_valid, (b, k)),
            "image_sizes": (image_sizes, (b, 2)),
            "weights": (weights, (b,)),
        }
        for name, (array, shape) in expected.items():
            if array.shape != shape:
                raise JTransferError(f"{name} has shape {array.shape}, expected {shape}")
        num_classes = len(self.class_names)
        real = weights != 0
        bad = gt_classes[real[:, None] & ((gt_classes < -1) | (gt_classes >= num_classes))]
        if bad.size:
            raise JTransferError(
                f"gt_classes {sorted(set(bad.tolist()))} must lie in [-1, {num_classes})"
                " (-1 = padding)"
            )
        scored = pred_valid & real[:, None]
        bad = pred_classes[scored & ((pred_classes < 0) | (pred_classes >= num_classes))]
        if bad.size:
            raise JTransferError(
                f"pred_classes of valid predictions {sorted(set(bad.tolist()))} must lie in "
                f"[0, {num_classes})"
            )
        bad = image_sizes[real & (image_sizes <= 0).any(-1)]
        if bad.size:
            raise JTransferError(f"image_sizes {bad.tolist()} must be positive (height, width)")

        for i in np.flatnonzero(real):
            image_id = len(self._images) + 1
            height, width = image_sizes[i].tolist()
            self._images.append({"id": image_id, "height": height, "width": width})
            objects = gt_classes[i] >= 0
            boxes = _pixel_xywh(gt_boxes[i][objects], height, width)
            for box, cls in zip(boxes.tolist(), gt_classes[i][objects].tolist(), strict=True):
                self._ground_truth.append(
                    {
                        "id": len(self._ground_truth) + 1,
                        "image_id": image_id,
                        "category_id": cls + 1,
                        "bbox": box,
                        "area": box[2] * box[3],
                        "iscrowd": 0,
                    }
                )
            boxes = _pixel_xywh(pred_boxes[i][scored[i]], height, width)
            classes = pred_classes[i][scored[i]].tolist()
            scores = pred_scores[i][scored[i]].astype(np.float64).tolist()
            for box, cls, score in zip(boxes.tolist(), classes, scores, strict=True):
                self._detections.append(
                    {"image_id": image_id, "category_id": cls + 1, "bbox": box, "score": score}
                )

    def result(self) -> dict[str, float]:
        """'mAP', 'mAP50', 'mAP75', 'mAP_<size>', 'AP/<name>', 'AP50/<name>' over all added."""
        if not self._images:
            raise JTransferError("no images were added to the COCO evaluator; nothing to score")
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = COCO()
            ground_truth.dataset = {
                "images": list(self._images),
                "annotations": [dict(a) for a in self._ground_truth],
                "categories": categories,
            }
            ground_truth.createIndex()
            if self._detections:  # loadRes adds ids and areas to the dicts it is given
                detections = ground_truth.loadRes([dict(d) for d in self._detections])
            else:  # loadRes cannot take an empty list; this is the object it would build
                detections = COCO()
                detections.dataset = {
                    "images": list(self._images),
                    "annotations": [],
                    "categories": categories,
                }
                detections.createIndex()
            evaluation = COCOeval(ground_truth, detections, iouType="bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()

        stats = [float("nan") if s == -1 else float(s) for s in evaluation.stats[:6]]
        metrics = dict(zip(SUMMARY_KEYS, stats, strict=True))
        params = evaluation.params
        at_50 = np.flatnonzero(np.isclose(params.iouThrs, 0.5))
        # [IoU threshold, recall threshold, class] at area 'all' and 100 detections.
        precision = evaluation.eval["precision"][:, :, :, params.areaRngLbl.index("all"), -1]
        for index, name in enumerate(self.class_names):
            metrics[f"AP/{name}"] = _ap(precision[:, :, index])
            metrics[f"AP50/{name}"] = _ap(precision[at_50, :, index])
        return metrics
