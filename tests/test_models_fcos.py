"""Tests for jtransfer.models.fcos: point grid, target assignment on a hand-made example, loss
values worked by hand, decoding of perfect predictions, the head's outputs, and a tiny detector
that overfits two images (loss falls, the decoded top box lands on the ground truth)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jtransfer import boxes as box_ops
from jtransfer.errors import JTransferError
from jtransfer.models import fcos
from jtransfer.models.dense import DenseModel
from jtransfer.models.necks import FPN

SIZE = (128, 128)
STRIDES = (8, 16, 32)
# Pixel boxes [ymin, xmin, ymax, xmax] and classes; the last slot is padding (class -1).
GT_PIXELS = np.float32([[8, 16, 40, 40], [16, 16, 48, 48], [0, 0, 128, 128], [60, 60, 70, 70]])
GT_CLASSES = np.int32([2, 0, 1, -1])
# The positives, worked by hand: (stride, y, x) -> (class, (l, t, r, b)). Centre regions are
# the box clipped to a square of 1.5 strides around its centre; a point needs max(l,t,r,b) in
# [0, 64] at stride 8, [64, 128] at 16, [128, inf] at 32; overlaps go to the smaller box.
# Box A (class 2, 32x24): its centre region [12, 16, 36, 40] holds six stride-8 points; its
# stride-16 point (24, 24) reaches only 16 (< 64).
# Box B (class 0, 32x32): region [20, 20, 44, 44]; (28, 28) and (28, 36) go to the smaller A.
# Box C (class 1, the whole image): at stride 8 its points reach 68 (> 64), at stride 16 the
# four points around the centre reach 72, at stride 32 (48, 48) reaches 80 (< 128).
EXPECTED = {
    (8, 20, 20): (2, (4, 12, 20, 20)),
    (8, 20, 28): (2, (12, 12, 12, 20)),
    (8, 20, 36): (2, (20, 12, 4, 20)),
    (8, 28, 20): (2, (4, 20, 20, 12)),
    (8, 28, 28): (2, (12, 20, 12, 12)),
    (8, 28, 36): (2, (20, 20, 4, 12)),
    (8, 36, 28): (0, (12, 20, 20, 12)),
    (8, 36, 36): (0, (20, 20, 12, 12)),
    (16, 56, 56): (1, (56, 56, 72, 72)),
    (16, 56, 72): (1, (72, 56, 56, 72)),
    (16, 72, 56): (1, (56, 72, 72, 56)),
    (16, 72, 72): (1, (72, 72, 56, 56)),
}


def _normalised(pixels):
    return pixels / np.float32([*SIZE, *SIZE])


def _targets(**kwargs):
    return fcos.assign(
        _normalised(GT_PIXELS)[None], GT_CLASSES[None], image_size=SIZE, strides=STRIDES, **kwargs
    )


def test_points_and_ranges():
    yx, stride = fcos.points((64, 96), (8, 16, 32))
    assert yx.shape == (8 * 12 + 4 * 6 + 2 * 3, 2)
    np.testing.assert_array_equal(yx[:2], [[4, 4], [4, 12]])  # row-major, s // 2 + i * s
    np.testing.assert_array_equal(yx[96], [8, 8])  # the stride-16 level follows
    np.testing.assert_array_equal(yx[-1], [48, 80])
    np.testing.assert_array_equal(np.unique(stride, return_counts=True), [[8, 16, 32], [96, 24, 6]])
    assert fcos.level_shapes((480, 640), (64, 128)) == [(8, 10), (4, 5)]  # ceil
    np.testing.assert_array_equal(
        fcos.regression_ranges((8, 16, 32, 64, 128)),
        [[0, 64], [64, 128], [128, 256], [256, 512], [512, np.inf]],
    )


def test_assignment_on_a_hand_made_example():
    t = {k: np.asarray(v[0]) for k, v in _targets().items()}
    yx, stride = fcos.points(SIZE, STRIDES)
    found = {(int(stride[p]), *map(int, yx[p])): p for p in np.flatnonzero(t["positive"])}
    assert sorted(found) == sorted(EXPECTED)
    for key, p in found.items():
        cls, ltrb = EXPECTED[key]
        assert t["classes"][p] == cls
        np.testing.assert_array_equal(t["ltrb"][p], ltrb)
        np.testing.assert_array_equal(t["boxes"][p], GT_PIXELS[[1, 2, 0][cls]])
        left, top, right, bottom = ltrb
        want = math.sqrt(min(left, right) / max(left, right) * min(top, bottom) / max(top, bottom))
        np.testing.assert_allclose(t["centerness"][p], want, rtol=1e-6)
    negative = ~t["positive"]
    assert np.all(t["classes"][negative] == -1) and np.all(t["centerness"][negative] == 0)
    # Hand values of two centre-nesses: sqrt(4/20 * 12/20) and the image-sized box's 56/72.
    np.testing.assert_allclose(t["centerness"][found[(8, 20, 20)]], math.sqrt(0.12), rtol=1e-6)
    np.testing.assert_allclose(t["centerness"][found[(16, 56, 56)]], 56 / 72, rtol=1e-6)


def test_without_centre_sampling_the_whole_box_counts():
    t = {k: np.asarray(v[0]) for k, v in _targets(center_radius=None).items()}
    yx, stride = fcos.points(SIZE, STRIDES)
    found = {(int(stride[p]), *map(int, yx[p])) for p in np.flatnonzero(t["positive"])}
    assert set(EXPECTED) < found
    assert (8, 12, 20) in found  # inside box A, outside its centre region


def _one_box_batch():
    """32x32 images: example 0 has one 8x8 box centred on the stride-8 point (20, 20), its only
    positive (ltrb 4, 4, 4, 4, centre-ness 1); example 1 is padding with boxes; example 2 has
    no boxes."""
    gt = np.zeros((3, 2, 4), np.float32)
    gt[0, 0] = np.float32([16, 16, 24, 24]) / 32
    gt[1] = [[0.1, 0.1, 0.6, 0.6], [0.5, 0.5, 1, 1]]
    classes = np.int32([[1, -1], [0, 1], [-1, -1]])
    weights = np.float32([1, 0, 1])
    return gt, classes, weights


def test_loss_values_worked_by_hand():
    gt, classes, weights = _one_box_batch()
    points = 16 + 4 + 1  # 32x32 input, strides 8, 16, 32
    outputs = {
        "cls_logits": jnp.zeros((3, points, 2)),
        # Every point predicts t=2, l=2, b=6, r=6: at (20, 20) the box [18, 18, 26, 26].
        "box_ltrb": jnp.broadcast_to(jnp.float32([2, 2, 6, 6]), (3, points, 4)),
        "centerness_logits": jnp.zeros((3, points)),
    }
    loss = jax.jit(lambda *a: fcos.loss(*a, image_size=(32, 32), strides=STRIDES))
    total, parts = loss(outputs, gt, classes, weights)
    ln2 = math.log(2)
    # Focal loss at p = 0.5: a negative costs 0.75 * 0.5^2 * ln 2, a positive 0.25 * 0.5^2 * ln 2;
    # examples 0 and 2 count (2 * 21 points x 2 classes, one positive), divided by 1 positive.
    cls = (2 * points * 2 - 1) * 0.75 * 0.25 * ln2 + 0.25 * 0.25 * ln2
    # [18, 18, 26, 26] vs [16, 16, 24, 24]: overlap 36, union 92, enclosing box 100.
    box = 1 - (36 / 92 - 8 / 100)
    ctr = ln2  # BCE of logit 0 against target 1
    assert float(parts["num_positives"]) == 1
    np.testing.assert_allclose(parts["cls"], cls, rtol=1e-5)
    np.testing.assert_allclose(parts["box"], box, rtol=1e-5)
    np.testing.assert_allclose(parts["centerness"], ctr, rtol=1e-5)
    np.testing.assert_allclose(total, cls + box + ctr, rtol=1e-5)


def _perfect_outputs(targets, num_classes):
    onehot = jax.nn.one_hot(targets["classes"], num_classes)  # background: all zeros
    ctr = jnp.clip(targets["centerness"], 1e-6, 1 - 1e-6)
    return {
        "cls_logits": jnp.where(onehot > 0, 10.0, -10.0),
        "box_ltrb": jnp.where(targets["positive"][..., None], targets["ltrb"], 3.0),
        "centerness_logits": jnp.where(targets["positive"], jnp.log(ctr / (1 - ctr)), -10.0),
    }


def test_decoding_perfect_predictions_gives_the_boxes_back():
    outputs = _perfect_outputs(_targets(), 3)
    decode = jax.jit(lambda o: fcos.decode(o, image_size=SIZE, strides=STRIDES, max_detections=5))
    d = {k: np.asarray(v[0]) for k, v in decode(outputs).items()}
    assert d["valid"].tolist() == [True] * 3 + [False] * 2  # one box per object, padding after
    # Best first: score sqrt(p(class) * centre-ness) of each box's most central point, C's
    # 56/72, then A's sqrt(12/20) at (28, 28), then B's 12/20.
    np.testing.assert_array_equal(d["classes"][:3], [1, 2, 0])
    np.testing.assert_allclose(d["boxes"][:3], _normalised(GT_PIXELS[[2, 0, 1]]), atol=1e-6)
    centre_ness = np.float32([56 / 72, math.sqrt(0.6), 0.6])
    np.testing.assert_allclose(
        d["scores"][:3], np.sqrt(centre_ness / (1 + math.exp(-10))), rtol=1e-5
    )
    np.testing.assert_array_equal(d["classes"][3:], -1)
    np.testing.assert_array_equal(d["boxes"][3:], 0)
    # NMS is per class: box C predicted as class 0 as well is a fourth detection.
    c_as_0 = (_targets()["classes"][..., None] == 1) & (jnp.arange(3) == 0)
    both = dict(outputs, cls_logits=jnp.where(c_as_0, 10.0, outputs["cls_logits"]))
    d = {k: np.asarray(v[0]) for k, v in decode(both).items()}
    assert d["valid"].sum() == 4
    np.testing.assert_array_equal(d["classes"][:2], [0, 1])  # tied scores: class order
    np.testing.assert_allclose(d["boxes"][:2], _normalised(GT_PIXELS[[2, 2]]), atol=1e-6)
    # The loss of perfect predictions: boxes exact (GIoU 1), so only the confidence terms remain.
    _, parts = fcos.loss(
        outputs,
        _normalised(GT_PIXELS)[None],
        GT_CLASSES[None],
        np.ones(1, np.float32),
        image_size=SIZE,
        strides=STRIDES,
    )
    assert float(parts["num_positives"]) == len(EXPECTED)
    np.testing.assert_allclose(parts["box"], 0.0, atol=1e-6)


def _pyramid(n=2, channels=8, size=(64, 96), strides=STRIDES):
    rng = np.random.default_rng(0)
    return {
        s: jnp.asarray(
            rng.normal(size=(n, -(-size[0] // s), -(-size[1] // s), channels)), jnp.float32
        )
        for s in strides
    }


def test_head_outputs_priors_and_level_scales():
    head = fcos.FCOSHead(3, STRIDES, channels=8, tower_depth=1)
    pyramid = _pyramid()
    apply = jax.jit(lambda v, x: head.apply(v, x, image_size=(64, 96), train=False))
    variables = jax.jit(
        lambda x: head.init(jax.random.key(0), x, image_size=(64, 96), train=False)
    )(pyramid)
    params = variables["params"]
    assert set(params) == {
        "cls_tower",
        "box_tower",
        "cls_logits",
        "box_ltrb",
        "centerness",
        "level_scales",
    }
    out = apply(variables, pyramid)
    p = 8 * 12 + 4 * 6 + 2 * 3
    assert {k: v.shape for k, v in out.items()} == {
        "cls_logits": (2, p, 3),
        "box_ltrb": (2, p, 4),
        "centerness_logits": (2, p),
    }
    assert all(v.dtype == jnp.float32 for v in out.values())
    np.testing.assert_allclose(params["cls_logits"]["bias"], -math.log(99), rtol=1e-6)
    # With a zero regression kernel, distances are exp(scale * bias) * stride per level.
    box_ltrb = {"kernel": jnp.zeros_like(params["box_ltrb"]["kernel"]), "bias": jnp.full(4, 0.5)}
    params = {**params, "box_ltrb": box_ltrb, "level_scales": jnp.float32([1, 2, 4])}
    out = apply({"params": params}, pyramid)
    _, stride = fcos.points((64, 96), STRIDES)
    want = np.exp(0.5 * np.float32([1, 2, 4]))[np.log2(stride).astype(int) - 3] * stride
    np.testing.assert_allclose(out["box_ltrb"][1], np.repeat(want[:, None], 4, 1), rtol=1e-6)


def test_head_refuses_maps_that_do_not_fit_the_input():
    head = fcos.FCOSHead(3, STRIDES, channels=8, tower_depth=1)
    with pytest.raises(JTransferError, match=r"expected \[\(8, 12\), \(4, 6\), \(2, 3\)\]"):
        head.init(jax.random.key(0), _pyramid(size=(32, 96)), image_size=(64, 96), train=False)
    with pytest.raises(JTransferError, match=r"strides \[8, 16, 32\] got levels \[8, 16\]"):
        head.init(jax.random.key(0), _pyramid(strides=(8, 16)), image_size=(64, 96), train=False)


class TinyBackbone(nn.Module):
    """An 8x8/8 patch convolution, then two 3x3/2 ones: stride-8, -16 and -32 maps."""

    @nn.compact
    def __call__(self, x, *, train, return_stages=False):
        del train
        stages = {}
        for i, (features, k, stride) in enumerate([(16, 8, 8), (24, 3, 2), (32, 3, 2)]):
            x = nn.relu(nn.Conv(features, (k, k), stride, name=f"conv{i}")(x))
            stages[f"s{i}"] = x
        return stages if return_stages else x


def test_tiny_detector_overfits_two_images():
    rng = np.random.default_rng(0)
    images = rng.normal(0, 0.1, (2, 64, 64, 3)).astype(np.float32)
    gt = np.zeros((2, 2, 4), np.float32)
    gt[0, 0], gt[1, 0] = [8, 12, 40, 36], [24, 20, 56, 60]  # pixels
    for i in range(2):
        y0, x0, y1, x1 = gt[i, 0].astype(int)
        images[i, y0:y1, x0:x1, i] += 1.0  # a bright rectangle: red is class 0, green class 1
    gt /= 64
    classes = np.int32([[0, -1], [1, -1]])
    weights = np.ones(2, np.float32)

    model = DenseModel(
        TinyBackbone(),
        FPN(16),
        fcos.FCOSHead(2, STRIDES, channels=16, tower_depth=1),
        ((8, "s0"), (16, "s1"), (32, "s2")),
    )
    params = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images)["params"]
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    def loss_fn(params):
        outputs = model.apply({"params": params}, images, train=True)
        return fcos.loss(outputs, gt, classes, weights, image_size=(64, 64), strides=STRIDES)

    @jax.jit
    def step(params, opt_state):
        (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, parts

    first = None
    for _ in range(100):
        params, opt_state, parts = step(params, opt_state)
        first = first or parts
    # The centre-ness BCE keeps the entropy of its soft targets; the other two go to ~0.
    assert float(parts["cls"]) < 0.2 * float(first["cls"]), (first, parts)
    assert float(parts["box"]) < 0.2 * float(first["box"]), (first, parts)
    assert float(parts["centerness"]) < float(first["centerness"]), (first, parts)

    outputs = jax.jit(lambda p: model.apply({"params": p}, images, train=False))(params)
    d = fcos.decode(outputs, image_size=(64, 64), strides=STRIDES, max_detections=10)
    assert np.all(d["valid"][:, 0])
    np.testing.assert_array_equal(d["classes"][:, 0], [0, 1])
    overlap = box_ops.iou(d["boxes"][:, 0], gt[:, 0])
    assert np.all(overlap > 0.5), overlap
