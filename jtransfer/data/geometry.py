"""Geometric preprocessing ops: the image, its segmentation mask and its boxes move together.

Each op works out one transform from the image's shape — and, if it is random, from one draw
on the example's seed — and applies it to every spatial feature the example has:
- 'image' (H, W, C): bilinear resizing with antialiasing (uint8 rounds back), as in big_vision;
- 'segmentation' (H, W, 1) int32: nearest-neighbour resizing, so no value appears that was not
  in the mask; pixels a crop or pad adds are `PAD_LABEL`, which the pipeline turns into the
  source's ignore label;
- 'boxes' (N, 4) normalised [ymin, xmin, ymax, xmax] with 'classes' (N,): moved with the pixels,
  clipped to the new image, and dropped with their classes when a crop leaves them empty.
Resizing leaves normalised boxes as they are.

On an image alone every op makes exactly the TF calls and random draws it made before masks and
boxes existed (the draws of `tf.image.stateless_random_crop` and
`stateless_random_flip_left_right` are reproduced, the image then cropped or flipped by the
same ops), so classification batches are bit-identical.
"""

from __future__ import annotations

import tensorflow as tf

from jtransfer.data.preprocess import Features, Op, register_op

PAD_LABEL = -1  # segmentation value of pixels added by padding; the pipeline maps it to ignore


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _draw(features: Features) -> tuple[tf.Tensor, Features]:
    """(this op's seed, features carrying the seed for the next random op)."""
    seed, rest = tf.unstack(tf.random.experimental.stateless_split(features["_seed"], num=2))
    return seed, {**features, "_seed": rest}


def _resize(image: tf.Tensor, hw) -> tf.Tensor:
    resized = tf.image.resize(image, hw, method="bilinear", antialias=True)
    if image.dtype.is_integer:
        resized = tf.round(resized)
    return tf.saturate_cast(resized, image.dtype)


def _resize_all(features: Features, hw) -> Features:
    out = {**features, "image": _resize(features["image"], hw)}
    if "segmentation" in features:
        out["segmentation"] = tf.image.resize(features["segmentation"], hw, method="nearest")
    return out


def _boxes_in_window(features: Features, hw, top, left, height, width) -> Features:
    """Boxes of an image of size `hw` expressed in its window [top, top + height) x
    [left, left + width) (which may reach past the image: padding); clipped to the window,
    boxes left empty dropped with their classes."""
    if "boxes" not in features:
        return features
    h, w = (tf.cast(x, tf.float32) for x in (hw[0], hw[1]))
    top, left, height, width = (tf.cast(x, tf.float32) for x in (top, left, height, width))
    boxes = (features["boxes"] * tf.stack([h, w, h, w]) - tf.stack([top, left, top, left])) / (
        tf.stack([height, width, height, width])
    )
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {
        **features,
        "boxes": tf.boolean_mask(boxes, keep),
        "classes": tf.boolean_mask(features["classes"], keep),
    }


def _crop(features: Features, top, left, height, width) -> Features:
    """The window of the image (and mask, boxes) at (top, left) of size (height, width)."""
    hw = tf.shape(features["image"])[:2]
    out = _boxes_in_window(features, hw, top, left, height, width)
    for key in ("image", "segmentation"):
        if key in features:
            out[key] = tf.image.crop_to_bounding_box(features[key], top, left, height, width)
    return out


def _pad(features: Features, height: int, width: int) -> Features:
    """Pad bottom and right to (height, width): image with 0, mask with `PAD_LABEL`."""
    hw = tf.shape(features["image"])[:2]
    out = _boxes_in_window(features, hw, 0, 0, height, width)
    out["image"] = tf.image.pad_to_bounding_box(features["image"], 0, 0, height, width)
    if "segmentation" in features:
        pads = [[0, height - hw[0]], [0, width - hw[1]], [0, 0]]
        out["segmentation"] = tf.pad(features["segmentation"], pads, constant_values=PAD_LABEL)
        out["segmentation"].set_shape([height, width, 1])
    return out


def _flip_lr(features: Features, flip: tf.Tensor) -> Features:
    out = dict(features)
    for key in ("image", "segmentation"):
        if key in features:
            x = features[key]
            out[key] = tf.cond(flip, lambda x=x: tf.reverse(x, [1]), lambda x=x: x)
            out[key].set_shape(x.shape)
    if "boxes" in features:
        ymin, xmin, ymax, xmax = tf.unstack(features["boxes"], axis=-1)
        mirrored = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)
        out["boxes"] = tf.where(flip, mirrored, features["boxes"])
    return out


def _fit(features: Features, size: int | tuple[int, int], scale) -> tuple[Features, tf.Tensor]:
    """Resized, aspect ratio kept, to `scale` times the largest size that fits in `size`."""
    th, tw = _hw(size)
    hw = tf.cast(tf.shape(features["image"])[:2], tf.float32)
    ratio = scale * tf.minimum(th / hw[0], tw / hw[1])
    new_hw = tf.maximum(tf.cast(tf.round(hw * ratio), tf.int32), 1)
    return _resize_all(features, new_hw), new_hw


@register_op("resize", random=False)
def resize(size: int | tuple[int, int]) -> Op:
    """Resize to `size` (int: square, or (h, w)); bilinear with antialiasing (masks: nearest)."""
    return lambda features: _resize_all(features, _hw(size))


@register_op("resize_small", random=False)
def resize_small(size: int) -> Op:
    """Resize so that the shorter side is `size`, keeping the aspect ratio."""

    def op(features: Features) -> Features:
        hw = tf.cast(tf.shape(features["image"])[:2], tf.float32)
        return _resize_all(features, tf.cast(tf.round(hw * size / tf.reduce_min(hw)), tf.int32))

    return op


@register_op("central_crop", random=False)
def central_crop(size: int | tuple[int, int]) -> Op:
    """Crop the central `size` (int or (h, w)) window."""
    h, w = _hw(size)

    def op(features: Features) -> Features:
        shape = tf.shape(features["image"])
        return _crop(features, (shape[0] - h) // 2, (shape[1] - w) // 2, h, w)

    return op


@register_op("random_crop", random=True)
def random_crop(size: int | tuple[int, int]) -> Op:
    """Crop a `size` (int or (h, w)) window at a random position."""
    h, w = _hw(size)

    def op(features: Features) -> Features:
        seed, features = _draw(features)
        # tf.image.stateless_random_crop's draw: a uniform int32 per image axis modulo the room.
        shape = tf.shape(features["image"])
        crop = tf.stack([h, w, shape[2]])
        check = tf.debugging.assert_greater_equal(
            shape, crop, message=f"random_crop({size}) of an image smaller than the crop"
        )
        with tf.control_dependencies([check]):
            offset = tf.random.stateless_uniform([3], seed, maxval=tf.int32.max, dtype=tf.int32) % (
                shape - crop + 1
            )
        return _crop(features, offset[0], offset[1], h, w)

    return op


@register_op("inception_crop", random=True)
def inception_crop(
    size: int | tuple[int, int], area_min: float = 0.05, area_max: float = 1.0
) -> Op:
    """Random resized crop: a window of random area fraction and aspect ratio, resized to `size`."""

    def op(features: Features) -> Features:
        seed, features = _draw(features)
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(features["image"]),
            bounding_boxes=tf.zeros([0, 0, 4]),
            seed=seed,
            area_range=(area_min, area_max),
            aspect_ratio_range=(3 / 4, 4 / 3),
            min_object_covered=0,
            use_image_if_no_bounding_boxes=True,
        )
        features = _crop(features, begin[0], begin[1], crop_size[0], crop_size[1])
        return _resize_all(features, _hw(size))

    return op


@register_op("flip_lr", random=True)
def flip_lr() -> Op:
    """Mirror left-right with probability 1/2."""

    def op(features: Features) -> Features:
        seed, features = _draw(features)
        # tf.image.stateless_random_flip_left_right's draw.
        flip = tf.random.stateless_uniform([], seed, minval=0, maxval=1.0) < 0.5
        return _flip_lr(features, flip)

    return op


@register_op("random_scale_crop", random=True)
def random_scale_crop(
    size: int | tuple[int, int], scale_min: float = 0.5, scale_max: float = 2.0
) -> Op:
    """Scale jittering (large-scale jitter of Ghiasi et al. 2021): resize, aspect ratio kept, to
    a random factor in [scale_min, scale_max] of the size that fits in `size`, crop a random
    `size` window where the result is larger, pad bottom and right where it is smaller."""
    th, tw = _hw(size)

    def op(features: Features) -> Features:
        seed, features = _draw(features)
        scale_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
        scale = tf.random.stateless_uniform([], scale_seed, minval=scale_min, maxval=scale_max)
        features, hw = _fit(features, size, scale)
        crop = tf.minimum(hw, [th, tw])
        offset = tf.random.stateless_uniform(
            [2], crop_seed, maxval=tf.int32.max, dtype=tf.int32
        ) % (hw - crop + 1)
        features = _crop(features, offset[0], offset[1], crop[0], crop[1])
        return _pad(features, th, tw)

    return op


@register_op("resize_pad", random=False)
def resize_pad(size: int | tuple[int, int]) -> Op:
    """Resize, aspect ratio kept, to fit in `size`, then pad bottom and right to `size`: the
    deterministic view of `random_scale_crop`, e.g. for evaluation."""
    th, tw = _hw(size)

    def op(features: Features) -> Features:
        features, _ = _fit(features, size, 1.0)
        return _pad(features, th, tw)

    return op
