"""Semantic segmentation metrics: a confusion matrix per batch, IoU from the summed matrix.

Mean IoU is not a mean of per-batch IoUs: it is computed once from the pixel counts of the
whole evaluation set. So the accelerator does only the counting — `confusion_matrix` is pure
`jnp`, jitted with `num_classes` and `ignore_label` static, and runs inside the sharded
evaluation step on global arrays, so XLA adds up the devices' (and hosts') counts itself —
and the host adds the per-batch matrices and calls `iou_metrics` once at the end.

Counting rules: rows are the true class, columns the predicted class. A pixel counts once if
its example's weight is nonzero (zero marks a padded example of the last batch), its label is
not `ignore_label`, and both label and prediction lie in [0, num_classes); anything else
cannot be placed in the matrix and is not counted (labels are validated by the data pipeline;
predictions from an argmax are always in range).

Dtype: int32, via a scatter-add of ones. A float32 count is exact only up to 2**24 = 16.8M,
which one 64 x 512 x 512 batch already reaches, and float one-hot matmuls may run at bfloat16
precision on TPU; int32 is exact up to 2**31 - 1 (2.1G) pixels per cell per batch. Whole
evaluation sets can pass that (COCO-Stuff val is 5000 x 640 x 640 = 2G pixels), so the host
accumulates in int64: `total += np.asarray(confusion_matrix(...), np.int64)`.

`iou_metrics` follows mmseg and torchmetrics: IoU_c = TP / (TP + FP + FN); a class whose union
is zero (in neither the labels nor the predictions of the whole set) has no IoU — NaN in its
`iou/<name>` entry, so every evaluation reports the same keys — and is left out of the mean. A
class that is only predicted has IoU 0 and is in the mean.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jtransfer.errors import JTransferError


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_label"))
def confusion_matrix(
    predictions: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    num_classes: int,
    ignore_label: int,
) -> jax.Array:
    """(num_classes, num_classes) int32 pixel counts, [true class, predicted class].

    predictions, labels: integer (B, H, W); weights: (B,), nonzero for a real example.
    """
    if predictions.shape != labels.shape or predictions.ndim != 3:
        raise JTransferError(
            f"predictions {predictions.shape} and labels {labels.shape} must both be (B, H, W)"
        )
    if weights.shape != labels.shape[:1]:
        raise JTransferError(f"weights {weights.shape} must be (B,) = {labels.shape[:1]}")
    for name, x in (("predictions", predictions), ("labels", labels)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise JTransferError(f"{name} dtype {x.dtype} must be an integer type")
    if num_classes < 1:
        raise JTransferError(f"num_classes {num_classes} must be at least 1")
    labels, predictions = labels.astype(jnp.int32), predictions.astype(jnp.int32)  # uint8 * C
    counted = (
        (weights != 0)[:, None, None]
        & (labels != ignore_label)
        & (labels >= 0)
        & (labels < num_classes)
        & (predictions >= 0)
        & (predictions < num_classes)
    )
    # Uncounted pixels point at cell 0 and add 0 there.
    cell = jnp.where(counted, labels * num_classes + predictions, 0)
    counts = (
        jnp.zeros(num_classes * num_classes, jnp.int32)
        .at[cell.ravel()]
        .add(counted.ravel().astype(jnp.int32))
    )
    return counts.reshape(num_classes, num_classes)


def iou_metrics(confusion: np.ndarray | jax.Array, class_names: Sequence[str]) -> dict[str, float]:
    """'mean_iou', 'pixel_accuracy' and 'iou/<name>' per class from a (summed) confusion matrix.

    NaN for a class with no pixels in labels or predictions; every value NaN if nothing counted.
    """
    confusion = np.asarray(confusion, np.float64)  # exact for counts up to 2**53
    n = len(class_names)
    if confusion.shape != (n, n):
        raise JTransferError(f"confusion matrix {confusion.shape} does not match {n} class names")
    if len(set(class_names)) != n:
        raise JTransferError(f"class names {list(class_names)} must be distinct")
    true_positives = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positives
    present = union > 0
    iou = np.full(n, np.nan)
    iou[present] = true_positives[present] / union[present]
    total = confusion.sum()
    metrics = {
        "mean_iou": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_accuracy": float(true_positives.sum() / total) if total else float("nan"),
    }
    metrics.update({f"iou/{name}": float(v) for name, v in zip(class_names, iou, strict=True)})
    return metrics
