"""FCOS (Tian et al. 2019): anchor-free detection head, target assignment, loss and decoding.

Every feature-map location of every pyramid level is a *point*; a point predicts per-class
scores, its distances (left, top, right, bottom) to the sides of the box it lies in, and a
centre-ness that down-weights boxes predicted far from an object's centre. This head is the
improved FCOS of the paper's later version and of MMDetection's `fcos` configs: centre-ness on
the regression tower, centre sampling, GIoU loss, per-level learnable scales.

Shapes are static so that assignment, loss and decoding run inside the jitted step:

* The head returns a dict of float32 arrays over all points of all levels, level by level
  (finest first), row-major within a level: `cls_logits` (N, P, num_classes),
  `box_ltrb` (N, P, 4) distances in input pixels (`exp(scale_l * x) * stride_l`, or with
  `box_activation='relu'` `relu(scale_l * x) * stride_l`), `centerness_logits` (N, P).
* `points(image_size, strides)` is the matching static grid: a level of stride s has
  ceil(H / s) x ceil(W / s) points at (s // 2 + i * s, s // 2 + j * s) pixels (FCOS's
  locations). The head checks that its maps have these sizes.
* Ground truth is padded: boxes (N, M, 4) normalised [ymin, xmin, ymax, xmax] of the input
  image, classes (N, M) int32 with -1 for empty slots.

Assignment (`assign`): a point is a candidate for a box when it lies inside the box's centre
region (the box clipped to a square of `center_radius` strides around its centre; or inside the
box itself with `center_radius=None`) and the largest of its four regression distances lies in
its level's range (`regression_ranges`: FCOS's [0, 64], [64, 128], ... i.e. up to 8 strides);
among several candidate boxes the one of smallest area wins. Loss (`loss`): sigmoid focal loss
(alpha 0.25, gamma 2, optax's) over all points and classes divided by the number of positives,
GIoU loss of positives weighted by their centre-ness targets (divided by the sum of those
weights), and binary cross-entropy of centre-ness on positives divided by the number of
positives. A per-example weight (N,) multiplies everything, so padded examples count for
nothing. Decoding (`decode`): score = sqrt(sigmoid(class) * sigmoid(centre-ness)) (the geometric
mean keeps scores on a probability scale, so one threshold means the same at any
centre-ness), the `pre_nms_top_k` best (point, class) pairs, those above `score_threshold`,
class-aware greedy NMS (`jtransfer.boxes.nms`), at most `max_detections` per image.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jtransfer import boxes as box_ops
from jtransfer.errors import JTransferError
from jtransfer.models.necks import Conv, ConvNorm

BOX_ACTIVATIONS = ("exp", "relu")
MAX_LOG_DISTANCE = 10.0  # exp activations are clipped here (e^10 strides: far beyond any image)


def level_shapes(image_size: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """(ceil(H / s), ceil(W / s)) for each stride: the map sizes of 'SAME'-padded networks."""
    h, w = image_size
    return [(-(-h // s), -(-w // s)) for s in strides]


def points(image_size: Sequence[int], strides: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(points (P, 2) float32 (y, x) in pixels, stride of each point (P,) float32)."""
    yx, stride = [], []
    for s, (h, w) in zip(strides, level_shapes(image_size, strides), strict=True):
        ys, xs = np.meshgrid(np.arange(h) * s + s // 2, np.arange(w) * s + s // 2, indexing="ij")
        yx.append(np.stack([ys.ravel(), xs.ravel()], axis=-1))
        stride.append(np.full(h * w, s))
    return np.concatenate(yx).astype(np.float32), np.concatenate(stride).astype(np.float32)


def regression_ranges(strides: Sequence[int], scale: float = 8.0) -> np.ndarray:
    """(levels, 2) [low, high] of max(l, t, r, b) per level: up to `scale` strides, the previous
    level's high as low, 0 below the finest and no limit above the coarsest (FCOS's ranges for
    strides 8..128: [0, 64], [64, 128], [128, 256], [256, 512], [512, inf])."""
    high = [scale * s for s in strides[:-1]] + [math.inf]
    return np.asarray(list(zip([0.0, *high[:-1]], high, strict=True)), np.float32)


class Tower(nn.Module):
    """`depth` 3x3 `ConvNorm` + ReLU units `conv1`, `conv2`, ..."""

    channels: int
    depth: int
    norm: str = "group"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(1, self.depth + 1):
            x = ConvNorm(self.channels, 3, norm=self.norm, dtype=self.dtype, name=f"conv{i}")(x)
        return x


class FCOSHead(nn.Module):
    """FCOS head shared over the levels `strides` of a `{stride: map}` pyramid.

    Parameters: `cls_tower/conv{i}`, `box_tower/conv{i}` (3x3 conv + `norm`), `cls_logits`
    (bias at the prior probability `prior_prob`), `box_ltrb`, `centerness` (on the box tower),
    `level_scales` (one learnable scale per level). The prediction convolutions start at
    N(0, 0.01), as in FCOS. Returns the dict described in the module docstring.
    """

    num_classes: int
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    channels: int = 64
    tower_depth: int = 2
    norm: str = "group"
    prior_prob: float = 0.01
    box_activation: str = "exp"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, pyramid: Mapping[int, jax.Array], *, image_size: tuple[int, int], train: bool
    ) -> dict[str, jax.Array]:
        del train  # no dropout or batch statistics
        if self.box_activation not in BOX_ACTIVATIONS:
            raise JTransferError(
                f"unknown box_activation {self.box_activation!r}; valid: {list(BOX_ACTIVATIONS)}"
            )
        if tuple(sorted(pyramid)) != tuple(self.strides):
            raise JTransferError(
                f"FCOS head for strides {list(self.strides)} got levels {sorted(pyramid)}"
            )
        expected = level_shapes(image_size, self.strides)
        actual = [tuple(pyramid[s].shape[1:3]) for s in self.strides]
        if actual != expected:
            raise JTransferError(
                f"pyramid maps {actual} for a {tuple(image_size)} input, expected {expected} "
                "(ceil(size / stride)): the input size must divide by the backbone's largest stride"
            )
        tower = functools.partial(Tower, self.channels, self.tower_depth, self.norm, self.dtype)
        cls_tower, box_tower = tower(name="cls_tower"), tower(name="box_tower")
        predict = functools.partial(
            Conv, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype
        )
        prior = -math.log((1 - self.prior_prob) / self.prior_prob)
        cls_conv = predict(
            self.num_classes, bias_init=nn.initializers.constant(prior), name="cls_logits"
        )
        box_conv, ctr_conv = predict(4, name="box_ltrb"), predict(1, name="centerness")
        scales = self.param("level_scales", nn.initializers.ones, (len(self.strides),))

        outputs = {"cls_logits": [], "box_ltrb": [], "centerness_logits": []}
        for level, s in enumerate(self.strides):
            x = pyramid[s]
            n = x.shape[0]
            cls_features, box_features = cls_tower(x), box_tower(x)
            distance = scales[level] * box_conv(box_features).astype(jnp.float32)
            if self.box_activation == "exp":
                distance = jnp.exp(jnp.minimum(distance, MAX_LOG_DISTANCE))
            else:
                distance = nn.relu(distance)
            outputs["box_ltrb"].append((distance * s).reshape(n, -1, 4))
            outputs["cls_logits"].append(
                cls_conv(cls_features).astype(jnp.float32).reshape(n, -1, self.num_classes)
            )
            outputs["centerness_logits"].append(
                ctr_conv(box_features).astype(jnp.float32).reshape(n, -1)
            )
        return {k: jnp.concatenate(v, axis=1) for k, v in outputs.items()}


def _ltrb(points_yx: jax.Array, boxes: jax.Array) -> jax.Array:
    """Distances (left, top, right, bottom) from points (..., 2) to the sides of boxes (..., 4)."""
    y, x = points_yx[..., 0], points_yx[..., 1]
    ymin, xmin, ymax, xmax = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([x - xmin, y - ymin, xmax - x, ymax - y], axis=-1)


def _boxes_from_ltrb(points_yx: jax.Array, ltrb: jax.Array) -> jax.Array:
    """yxyx boxes (..., 4) at distances ltrb (..., 4) from points (..., 2)."""
    y, x = points_yx[..., 0], points_yx[..., 1]
    left, top, right, bottom = jnp.moveaxis(ltrb, -1, 0)
    return jnp.stack([y - top, x - left, y + bottom, x + right], axis=-1)


def centerness(ltrb: jax.Array) -> jax.Array:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)): 1 at a box's centre, 0 at a side."""
    left, top, right, bottom = jnp.moveaxis(jnp.maximum(ltrb, 0.0), -1, 0)
    lr = jnp.minimum(left, right) / jnp.maximum(jnp.maximum(left, right), box_ops.EPS)
    tb = jnp.minimum(top, bottom) / jnp.maximum(jnp.maximum(top, bottom), box_ops.EPS)
    return jnp.sqrt(lr * tb)


def assign(
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    *,
    image_size: Sequence[int],
    strides: Sequence[int],
    center_radius: float | None = 1.5,
) -> dict[str, jax.Array]:
    """FCOS targets of every point (see the module docstring for the rule).

    gt_boxes (N, M, 4) normalised yxyx, gt_classes (N, M) int with -1 for empty slots. Returns
    `classes` (N, P) int32 (-1: background), `boxes` (N, P, 4) the assigned box in pixels,
    `ltrb` (N, P, 4) regression targets in pixels, `centerness` (N, P) (0 on background) and
    `positive` (N, P) bool.
    """
    yx, point_stride = (jnp.asarray(a) for a in points(image_size, strides))
    ranges = regression_ranges(strides)
    level = np.repeat(
        np.arange(len(strides)), [h * w for h, w in level_shapes(image_size, strides)]
    )
    low, high = (jnp.asarray(ranges[level, i])[None, :, None] for i in (0, 1))
    gt = box_ops.scale(gt_boxes.astype(jnp.float32), *image_size)  # (N, M, 4) pixels

    ltrb = _ltrb(yx[None, :, None, :], gt[:, None, :, :])  # (N, P, M, 4)
    if center_radius is None:
        inside = jnp.min(ltrb, axis=-1) > 0
    else:
        center = (gt[..., :2] + gt[..., 2:]) / 2  # (N, M, 2)
        radius = (center_radius * point_stride)[None, :, None, None]
        region = jnp.concatenate(
            [
                jnp.maximum(center[:, None] - radius, gt[:, None, :, :2]),
                jnp.minimum(center[:, None] + radius, gt[:, None, :, 2:]),
            ],
            axis=-1,
        )  # (N, P, M, 4): the centre square clipped to the box
        inside = jnp.min(_ltrb(yx[None, :, None, :], region), axis=-1) > 0
    reach = jnp.max(ltrb, axis=-1)
    candidate = inside & (reach >= low) & (reach <= high) & (gt_classes >= 0)[:, None, :]
    area = jnp.where(candidate, box_ops.area(gt)[:, None, :], jnp.inf)
    best = jnp.argmin(area, axis=-1)  # (N, P); the first of equal areas
    positive = jnp.any(candidate, axis=-1)

    boxes = jnp.take_along_axis(gt, best[..., None], axis=1)  # (N, P, 4)
    classes = jnp.take_along_axis(gt_classes.astype(jnp.int32), best, axis=1)
    target_ltrb = _ltrb(yx[None], boxes)
    return {
        "classes": jnp.where(positive, classes, -1),
        "boxes": boxes,
        "ltrb": target_ltrb,
        "centerness": jnp.where(positive, centerness(target_ltrb), 0.0),
        "positive": positive,
    }


def loss(
    outputs: Mapping[str, jax.Array],
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    weights: jax.Array,
    *,
    image_size: Sequence[int],
    strides: Sequence[int],
    center_radius: float | None = 1.5,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(total, components): total = `cls` + `box` + `centerness`; components also holds
    `num_positives` (weighted). `weights` (N,) is each example's weight (0: padding)."""
    targets = assign(
        gt_boxes, gt_classes, image_size=image_size, strides=strides, center_radius=center_radius
    )
    weights = weights.astype(jnp.float32)
    positive = targets["positive"].astype(jnp.float32) * weights[:, None]  # (N, P)
    num_positives = jnp.sum(positive)
    per_positive = jnp.maximum(num_positives, 1.0)

    logits = outputs["cls_logits"]
    onehot = (targets["classes"][..., None] == jnp.arange(logits.shape[-1])).astype(jnp.float32)
    focal = optax.sigmoid_focal_loss(logits, onehot, alpha=focal_alpha, gamma=focal_gamma)
    cls_loss = jnp.sum(focal.sum(-1) * weights[:, None]) / per_positive

    yx = jnp.asarray(points(image_size, strides)[0])
    predicted = _boxes_from_ltrb(yx[None], outputs["box_ltrb"])
    box_weight = targets["centerness"] * positive
    giou = box_ops.giou(predicted, targets["boxes"])
    box_loss = jnp.sum((1.0 - giou) * box_weight) / jnp.maximum(jnp.sum(box_weight), box_ops.EPS)

    bce = optax.sigmoid_binary_cross_entropy(outputs["centerness_logits"], targets["centerness"])
    ctr_loss = jnp.sum(bce * positive) / per_positive

    total = cls_loss + box_loss + ctr_loss
    return total, {
        "cls": cls_loss,
        "box": box_loss,
        "centerness": ctr_loss,
        "num_positives": num_positives,
    }


def decode(
    outputs: Mapping[str, jax.Array],
    *,
    image_size: Sequence[int],
    strides: Sequence[int],
    score_threshold: float = 0.05,
    pre_nms_top_k: int = 1000,
    iou_threshold: float = 0.6,
    max_detections: int = 100,
) -> dict[str, jax.Array]:
    """Detections per image, best first: `boxes` (N, K, 4) normalised yxyx clipped to the image,
    `scores` (N, K), `classes` (N, K) int32, `valid` (N, K) bool; K = `max_detections`. Slots
    past the detections found are padding: valid False, box and score 0, class -1."""
    height, width = image_size
    logits = outputs["cls_logits"]
    n, p, c = logits.shape
    scores = jnp.sqrt(
        jax.nn.sigmoid(logits) * jax.nn.sigmoid(outputs["centerness_logits"])[..., None]
    ).reshape(n, p * c)
    top_scores, top = lax.top_k(scores, min(pre_nms_top_k, p * c))
    point, classes = top // c, top % c

    yx = jnp.asarray(points(image_size, strides)[0])
    ltrb = jnp.take_along_axis(outputs["box_ltrb"], point[..., None], axis=1)
    candidates = box_ops.clip(_boxes_from_ltrb(yx[point], ltrb), height, width)
    keep, valid = box_ops.nms(
        candidates,
        top_scores,
        iou_threshold=iou_threshold,
        max_outputs=max_detections,
        classes=classes,
        valid=top_scores > score_threshold,
    )
    pick = lambda x: jnp.take_along_axis(x, keep, axis=1)  # noqa: E731
    boxes = jnp.take_along_axis(candidates, keep[..., None], axis=1)
    return {
        "boxes": jnp.where(valid[..., None], box_ops.scale(boxes, 1 / height, 1 / width), 0.0),
        "scores": jnp.where(valid, pick(top_scores), 0.0),
        "classes": jnp.where(valid, pick(classes), -1).astype(jnp.int32),
        "valid": valid,
    }
