"""Tests for jtransfer.models.segmentation: the loss's sums and counts worked by hand (ignored
pixels and padded examples count for nothing), the head's output and parameter layout, and the
bilinear resize it relies on."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jtransfer.models.segmentation import SegmentationHead, resize_bilinear, segmentation_loss


def test_loss_sums_counted_pixels_only():
    logits = np.zeros((3, 2, 2, 3), np.float32)
    logits[0, 0, 0] = [2, 0, 0]  # CE against label 0: log(1 + 2 e^-2)
    logits[1] = 50.0 * np.eye(3)[1]  # padding: huge loss against label 0, weight 0
    labels = np.int32(
        [
            [[0, 1], [255, 2]],  # 3 counted pixels
            [[0, 0], [0, 0]],  # the padded example
            [[255, 255], [255, 1]],  # 1 counted pixel
        ]
    )
    weights = np.float32([1, 0, 1])
    total, count = jax.jit(segmentation_loss)(logits, labels, weights)
    # Equal logits cost log 3 per pixel; the one pixel at [2, 0, 0] with label 0 costs less.
    want = math.log(1 + 2 * math.exp(-2)) + 3 * math.log(3)
    assert float(count) == 4
    np.testing.assert_allclose(total, want, rtol=1e-6)
    # Another ignore label: 255 is then a class index like any other would be, so use 2.
    total, count = segmentation_loss(logits, np.where(labels == 255, 1, labels), weights, 2)
    assert float(count) == 7  # example 0: three pixels (the 2 is ignored); example 2: four
    np.testing.assert_allclose(total, math.log(1 + 2 * math.exp(-2)) + 6 * math.log(3), rtol=1e-6)


def test_loss_gradient_ignores_ignored_pixels():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2, 2, 3)), jnp.float32)
    labels = np.int32([[[0, 255], [1, 2]], [[1, 1], [1, 1]]])
    grad = jax.grad(lambda x: segmentation_loss(x, labels, np.float32([1, 0]))[0])(logits)
    touched = np.any(np.asarray(grad) != 0, axis=-1)
    assert touched.tolist() == [[[True, False], [True, True]], [[False, False], [False, False]]]


def test_resize_bilinear():
    x = jnp.arange(4, dtype=jnp.float32).reshape(1, 1, 4, 1)
    assert resize_bilinear(x, (1, 4)) is x
    # Half-pixel centres: output column j samples input position (j + 0.5) / 2 - 0.5.
    np.testing.assert_allclose(
        resize_bilinear(x, (1, 8))[0, 0, :, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3]
    )


def test_head_layout_and_output():
    rng = np.random.default_rng(0)
    pyramid = {
        s: jnp.asarray(rng.normal(size=(2, 64 // s, 96 // s, 8)), jnp.float32)
        for s in (4, 8, 16, 32)
    }
    head = SegmentationHead(5, channels=16, dtype=jnp.bfloat16)
    init = jax.jit(lambda p: head.init(jax.random.key(0), p, image_size=(64, 96), train=False))
    variables = init(pyramid)
    shapes = {
        k: v.shape for k, v in traverse_util.flatten_dict(variables["params"], sep="/").items()
    }
    assert shapes == {
        **{f"level_p{i}/conv/kernel": (3, 3, 8, 16) for i in (2, 3, 4, 5)},
        **{f"level_p{i}/norm/{n}": (16,) for i in (2, 3, 4, 5) for n in ("scale", "bias")},
        "fuse/conv/kernel": (3, 3, 16, 16),
        "fuse/norm/scale": (16,),
        "fuse/norm/bias": (16,),
        "classifier/kernel": (1, 1, 16, 5),
        "classifier/bias": (5,),
    }
    np.testing.assert_allclose(np.std(variables["params"]["classifier"]["kernel"]), 0.01, rtol=0.3)
    logits = jax.jit(lambda v, p: head.apply(v, p, image_size=(64, 96), train=False))(
        variables, pyramid
    )
    assert logits.shape == (2, 64, 96, 5) and logits.dtype == jnp.float32
    assert float(jnp.std(logits)) > 0
