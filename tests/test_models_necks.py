"""Tests for jtransfer.models.necks: FPN and ViTDet's simple feature pyramid. Shapes and names
come from `jax.eval_shape`; the arithmetic is checked with identity kernels, under which FPN's
top-down sum and the simple pyramid's pooling can be written down exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jtransfer.errors import JTransferError
from jtransfer.models.necks import FPN, SimpleFeaturePyramid, level_name


def _maps(shapes: dict[int, tuple], seed=0):
    rng = np.random.default_rng(seed)
    return {s: jnp.asarray(rng.normal(size=shape), jnp.float32) for s, shape in shapes.items()}


# A 40x72 input's backbone maps at strides 8, 16, 32: ceil sizes, so the top-down path crops.
CNN = {8: (2, 5, 9, 6), 16: (2, 3, 5, 10), 32: (2, 2, 3, 12)}


def _shapes(tree):
    return {k: v.shape for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def test_level_names():
    assert [level_name(s) for s in (4, 8, 16, 32, 64, 128)] == ["p2", "p3", "p4", "p5", "p6", "p7"]
    with pytest.raises(JTransferError, match="powers of two, got 12"):
        level_name(12)


def test_fpn_shapes_names_and_extra_levels():
    fpn = FPN(16, num_extra=2)
    x = _maps(CNN)
    variables = jax.eval_shape(lambda: fpn.init(jax.random.key(0), x))
    out = jax.eval_shape(lambda v: fpn.apply(v, x), variables)
    assert {s: o.shape for s, o in out.items()} == {
        8: (2, 5, 9, 16),
        16: (2, 3, 5, 16),
        32: (2, 2, 3, 16),
        64: (2, 1, 2, 16),
        128: (2, 1, 1, 16),
    }
    assert _shapes(variables["params"]) == {
        "lateral_p3/conv/kernel": (1, 1, 6, 16),
        "lateral_p3/conv/bias": (16,),
        "lateral_p4/conv/kernel": (1, 1, 10, 16),
        "lateral_p4/conv/bias": (16,),
        "lateral_p5/conv/kernel": (1, 1, 12, 16),
        "lateral_p5/conv/bias": (16,),
        "output_p3/conv/kernel": (3, 3, 16, 16),
        "output_p3/conv/bias": (16,),
        "output_p4/conv/kernel": (3, 3, 16, 16),
        "output_p4/conv/bias": (16,),
        "output_p5/conv/kernel": (3, 3, 16, 16),
        "output_p5/conv/bias": (16,),
        "extra_p6/kernel": (3, 3, 16, 16),
        "extra_p6/bias": (16,),
        "extra_p7/kernel": (3, 3, 16, 16),
        "extra_p7/bias": (16,),
    }
    grouped = jax.eval_shape(lambda: FPN(16, norm="group").init(jax.random.key(0), x))
    assert _shapes(grouped["params"])["output_p3/norm/scale"] == (16,)
    assert "output_p3/conv/bias" not in _shapes(grouped["params"])  # the norm's bias replaces it


def _identity_kernels(params):
    """Every convolution an identity (1x1, or the centre tap of a 3x3), every bias zero."""
    flat = traverse_util.flatten_dict(params, sep="/")
    for path, value in flat.items():
        if path.endswith("kernel"):
            k, _, cin, cout = value.shape
            eye = np.zeros(value.shape, np.float32)
            eye[k // 2, k // 2] = np.eye(cin, cout)
            flat[path] = eye
        else:
            flat[path] = np.zeros_like(value)
    return traverse_util.unflatten_dict(flat, sep="/")


def _up(x, shape):
    return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)[:, : shape[1], : shape[2]]


def test_fpn_top_down_sum_with_identity_convolutions():
    x = _maps({8: (1, 5, 9, 4), 16: (1, 3, 5, 4), 32: (1, 2, 3, 4)})
    fpn = FPN(4, num_extra=2)
    params = _identity_kernels(fpn.init(jax.random.key(0), x)["params"])
    out = {s: np.asarray(v) for s, v in fpn.apply({"params": params}, x).items()}
    c = {s: np.asarray(v) for s, v in x.items()}
    p32 = c[32]
    p16 = c[16] + _up(p32, c[16].shape)
    p8 = c[8] + _up(p16, c[8].shape)
    np.testing.assert_allclose(out[32], p32, rtol=1e-6)
    np.testing.assert_allclose(out[16], p16, rtol=1e-6)
    np.testing.assert_allclose(out[8], p8, rtol=1e-6)
    # P6: a 3x3/2 TF-SAME conv of P5 (2x3 -> 1x2, padding rows (0, 1), cols (1, 1)): its centre
    # tap reads row 1, columns 0 and 2.
    np.testing.assert_allclose(out[64], p32[:, 1:, ::2], rtol=1e-6)
    # P7: the same conv of ReLU(P6) (1x2 -> 1x1, padding rows (1, 1), cols (0, 1)): column 1.
    np.testing.assert_allclose(out[128], np.maximum(out[64][:, :, 1:], 0), rtol=1e-6)


def test_simple_feature_pyramid_shapes_and_names():
    sfp = SimpleFeaturePyramid(16, strides=(4, 8, 16, 32), num_extra=1)
    x = _maps({16: (2, 4, 6, 24)})
    variables = jax.eval_shape(lambda: sfp.init(jax.random.key(0), x))
    out = jax.eval_shape(lambda v: sfp.apply(v, x), variables)
    assert {s: o.shape for s, o in out.items()} == {
        4: (2, 16, 24, 16),
        8: (2, 8, 12, 16),
        16: (2, 4, 6, 16),
        32: (2, 2, 3, 16),
        64: (2, 1, 2, 16),
    }
    shapes = _shapes(variables["params"])
    # ViTDet's channel halving: D -> D/2 -> D/4 on the way to stride 4, D/2 to stride 8.
    assert shapes["up_p2/deconv1/kernel"] == (2, 2, 24, 12)
    assert shapes["up_p2/norm1/scale"] == (12,)
    assert shapes["up_p2/deconv2/kernel"] == (2, 2, 12, 6)
    assert shapes["up_p3/deconv1/kernel"] == (2, 2, 24, 12)
    assert "up_p4/deconv1/kernel" not in shapes and "up_p5/deconv1/kernel" not in shapes
    assert shapes["lateral_p2/conv/kernel"] == (1, 1, 6, 16)
    assert shapes["lateral_p5/norm/scale"] == (16,)  # LayerNorm by default
    assert shapes["extra_p6/kernel"] == (3, 3, 16, 16)


def test_simple_feature_pyramid_identity_and_pooling():
    x = _maps({16: (1, 4, 6, 3)})
    sfp = SimpleFeaturePyramid(3, strides=(16, 32, 64), norm="none")
    params = _identity_kernels(sfp.init(jax.random.key(0), x)["params"])
    out = {s: np.asarray(v) for s, v in sfp.apply({"params": params}, x).items()}
    c = np.asarray(x[16])
    np.testing.assert_allclose(out[16], c, rtol=1e-6)
    pooled = c.reshape(1, 2, 2, 3, 2, 3).max(axis=(2, 4))
    np.testing.assert_allclose(out[32], pooled, rtol=1e-6)
    np.testing.assert_allclose(out[64], c.reshape(1, 1, 4, 2, 3, 3).max(axis=(2, 4)))  # 4x4 window


def test_bad_inputs_are_refused():
    x = _maps(CNN)
    with pytest.raises(JTransferError, match=r"unknown norm 'batch'; valid: \['none', 'group'"):
        FPN(16, norm="batch").init(jax.random.key(0), x)
    with pytest.raises(JTransferError, match="divisible by 32 .* got 48"):
        FPN(48, norm="group").init(jax.random.key(0), x)
    with pytest.raises(JTransferError, match=r"double level to level, got \[8, 32\]"):
        FPN(16).init(jax.random.key(0), {8: x[8], 32: x[32]})
    with pytest.raises(JTransferError, match=r"takes 1 input level\(s\), got strides \[8, 16\]"):
        SimpleFeaturePyramid(16).init(jax.random.key(0), {8: x[8], 16: x[16]})
