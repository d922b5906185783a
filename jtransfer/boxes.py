"""Box arithmetic for detection: conversions, IoU, GIoU and a fixed-size, jit-able greedy NMS.

Boxes are `[ymin, xmin, ymax, xmax]` along the last axis (TF's and TFDS's order, what the data
pipeline carries), either normalised to [0, 1] of the image or in pixels; every function here is
indifferent to which, as long as both operands agree. COCO's `[x, y, width, height]` exists only
at the evaluator's boundary (`yxyx_to_xywh`).

NMS has to run inside the jitted evaluation step, so its output has a static size: `nms` returns
the indices of at most `max_outputs` kept boxes per image plus a validity mask, never a ragged
list. It is the textbook greedy algorithm (highest score first, drop everything overlapping a kept
box by more than the threshold), computed from one IoU matrix and a loop over candidates in score
order, so it keeps exactly the set a plain sequential implementation keeps (tests compare it with
one). Class-aware suppression masks the IoU of boxes of different classes to zero rather than
offsetting coordinates, which would be exact only for bounded coordinates. There is no NMS in
optax, flax or jax itself (TF's `non_max_suppression_padded` is not JAX), hence this module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Guards divisions by areas of degenerate boxes (zero width or height); IoU of two empty boxes is 0.
EPS = 1e-7


def area(boxes: jax.Array) -> jax.Array:
    """(..., 4) yxyx -> (...) area; inverted boxes count as empty."""
    h = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    w = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return h * w


def _intersection(a: jax.Array, b: jax.Array) -> jax.Array:
    """Area of the overlap of broadcastable (..., 4) boxes."""
    lo = jnp.maximum(a[..., :2], b[..., :2])
    hi = jnp.minimum(a[..., 2:], b[..., 2:])
    return jnp.prod(jnp.maximum(hi - lo, 0.0), axis=-1)


def iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Element-wise IoU of broadcastable (..., 4) boxes."""
    inter = _intersection(a, b)
    return inter / jnp.maximum(area(a) + area(b) - inter, EPS)


def iou_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
    """(..., A, 4) x (..., B, 4) -> (..., A, B) pairwise IoU."""
    return iou(a[..., :, None, :], b[..., None, :, :])


def giou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Element-wise generalised IoU (Rezatofighi et al. 2019) of broadcastable (..., 4) boxes:
    IoU minus the fraction of the smallest enclosing box that the union leaves empty; in [-1, 1]."""
    inter = _intersection(a, b)
    union = area(a) + area(b) - inter
    enclosing = jnp.concatenate(
        [jnp.minimum(a[..., :2], b[..., :2]), jnp.maximum(a[..., 2:], b[..., 2:])], axis=-1
    )
    hull = area(enclosing)
    return inter / jnp.maximum(union, EPS) - (hull - union) / jnp.maximum(hull, EPS)


def scale(boxes: jax.Array, height: float, width: float) -> jax.Array:
    """Multiply yxyx coordinates by (height, width): normalised -> pixels (1/h, 1/w: back)."""
    return boxes * jnp.asarray([height, width, height, width], boxes.dtype)


def clip(boxes: jax.Array, height: float, width: float) -> jax.Array:
    """Clip yxyx boxes to the image [0, height] x [0, width]."""
    limit = jnp.asarray([height, width, height, width], boxes.dtype)
    return jnp.clip(boxes, 0.0, limit)


def yxyx_to_xywh(boxes: jax.Array) -> jax.Array:
    """[ymin, xmin, ymax, xmax] -> COCO's [x, y, width, height]."""
    ymin, xmin, ymax, xmax = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=-1)


def xywh_to_yxyx(boxes: jax.Array) -> jax.Array:
    """COCO's [x, y, width, height] -> [ymin, xmin, ymax, xmax]."""
    x, y, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([y, x, y + h, x + w], axis=-1)


def _greedy_keep(iou: jax.Array, valid: jax.Array, threshold: float) -> jax.Array:
    """Keep mask of greedy NMS over candidates already in score order: (B, B) IoU, (B,) valid."""

    def visit(i, state):
        keep, suppressed = state
        kept = valid[i] & ~suppressed[i]
        return keep.at[i].set(kept), suppressed | (kept & (iou[i] > threshold))

    n = valid.shape[0]
    keep, _ = lax.fori_loop(0, n, visit, (jnp.zeros(n, bool), jnp.zeros(n, bool)))
    return keep


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    *,
    iou_threshold: float,
    max_outputs: int,
    classes: jax.Array | None = None,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Greedy non-maximum suppression of a batch: boxes (N, B, 4), scores (N, B).

    A candidate is kept when no higher-scoring kept candidate overlaps it with IoU strictly above
    `iou_threshold`; with `classes` (N, B) only candidates of the same class suppress each other;
    candidates with `valid` (N, B) False are neither kept nor suppress. Equal scores go in index
    order. Returns (indices (N, max_outputs) int32 into B, kept (N, max_outputs) bool): the kept
    candidates in descending score order, padded with kept=False (and index 0).
    """
    n, b = scores.shape
    if valid is None:
        valid = jnp.ones((n, b), bool)
    order = jnp.argsort(-scores, axis=-1, stable=True)
    take = lambda x: jnp.take_along_axis(x, order, axis=1)  # noqa: E731
    sorted_boxes = jnp.take_along_axis(boxes, order[..., None], axis=1)
    overlaps = iou_matrix(sorted_boxes, sorted_boxes)
    if classes is not None:
        c = take(classes)
        overlaps = jnp.where(c[:, :, None] == c[:, None, :], overlaps, 0.0)
    keep = jax.vmap(_greedy_keep, in_axes=(0, 0, None))(overlaps, take(valid), iou_threshold)
    # The first `max_outputs` kept positions (in score order), then the rest, each in order.
    rank = jnp.where(keep, 0, b) + jnp.arange(b)
    _, first = lax.top_k(-rank, min(max_outputs, b))
    kept = jnp.take_along_axis(keep, first, axis=1)
    indices = jnp.where(kept, jnp.take_along_axis(order, first, axis=1), 0)
    if max_outputs > b:
        pad = ((0, 0), (0, max_outputs - b))
        indices, kept = jnp.pad(indices, pad), jnp.pad(kept, pad)
    return indices.astype(jnp.int32), kept
