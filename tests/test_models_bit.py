"""Tests for jtransfer.models.bit (and bit_spec): layout, names, widths, parity.

The parity fixture comes from scripts/make_golden_timm.py (timm `resnetv2_50x1_bit`, seeded
weights).
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
from seeded import TOLERANCE, load_golden

from jtransfer.models import bit_spec as spec
from jtransfer.models import build_model
from jtransfer.models.bit import BiT

# BiT-R50x1 per stage: (blocks, 3x3 width, output channels).
R50X1 = [(3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048)]


def _shapes(model, x):
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _flat(tree):
    return {k: v.shape for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}


def _expected_r50x1():
    params = {"stem/conv/kernel": (7, 7, 3, 64)}
    cin = 64
    for s, (blocks, width, cout) in enumerate(R50X1, start=1):
        for b in range(1, blocks + 1):
            block = f"stage{s}/block{b}"
            for i, c_in, c_out, k in [
                (1, cin, width, 1),
                (2, width, width, 3),
                (3, width, cout, 1),
            ]:
                params[f"{block}/norm{i}/scale"] = params[f"{block}/norm{i}/bias"] = (c_in,)
                params[f"{block}/conv{i}/kernel"] = (k, k, c_in, c_out)
            if b == 1:
                params[f"{block}/downsample/conv/kernel"] = (1, 1, cin, cout)
            cin = cout
    params["norm/scale"] = params["norm/bias"] = (2048,)
    return params


def test_r50x1_parameter_tree_is_exact():
    shapes = _shapes(BiT("bit_r50x1"), jnp.zeros((1, 32, 32, 3)))
    assert set(shapes) == {"params"}  # GroupNorm: no batch statistics
    assert _flat(shapes["params"]) == _expected_r50x1()


def test_width_factor_scales_every_width():
    params = _flat(_shapes(BiT("bit_r50x3"), jnp.zeros((1, 32, 32, 3)))["params"])
    assert params["stem/conv/kernel"] == (7, 7, 3, 192)
    assert params["stage4/block3/conv3/kernel"] == (1, 1, 1536, 6144)
    assert spec.num_features("bit_r152x4") == 8192
    assert [s.blocks for s in spec.stages("bit_r101x1")] == [3, 4, 23, 3]


def test_stage_and_layer_names():
    assert spec.stage_names("bit_r50x1") == ["stem", "stage1", "stage2", "stage3", "stage4", "norm"]
    layers = spec.layer_names("bit_r50x1")
    assert layers[:2] == ["stem", "stage1/block1"]
    assert layers[-2:] == ["stage4/block3", "norm"] and len(layers) == 1 + 16 + 1


def test_return_stages_follow_stage_names():
    model = build_model("bit_r50x1", 5)
    x = jnp.zeros((1, 64, 64, 3))
    out = jax.eval_shape(
        functools.partial(model.backbone.apply, train=False, return_stages=True),
        _shapes(model.backbone, x),
        x,
    )
    assert set(out) == set(spec.stage_names("bit_r50x1"))
    assert out["stem"].shape == (1, 16, 16, 64)
    assert out["stage4"].shape == out["norm"].shape == (1, 2, 2, 2048)


def test_logits_match_timm(tmp_path):
    variables, images, expected = load_golden("bit_r50x1", tmp_path)
    model = build_model("bit_r50x1", 1000)
    logits = jax.jit(functools.partial(model.apply, train=False))(variables, images)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=TOLERANCE)


def test_computation_dtype():
    model = BiT("bit_r50x1", dtype=jnp.bfloat16)
    x = jnp.zeros((1, 32, 32, 3))
    variables = _shapes(model, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert out.dtype == jnp.bfloat16
