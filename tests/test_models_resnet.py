"""Tests for jtransfer.models.resnet (and resnet_spec): layout, names, BatchNorm policy, parity.

The parity fixture comes from scripts/make_golden_timm.py (timm `resnet50`, seeded weights).
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
from seeded import TOLERANCE, load_golden

from jtransfer.models import build_model
from jtransfer.models import resnet_spec as spec
from jtransfer.models.resnet import ResNet

# ResNet-50 per stage: (blocks, 3x3 width, output channels, stride), from the paper's table.
RESNET50 = [(3, 64, 256, 1), (4, 128, 512, 2), (6, 256, 1024, 2), (3, 512, 2048, 2)]


def _shapes(model, x):
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _flat(tree):
    return {k: v.shape for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}


def _expected_resnet50():
    convs = {"stem": (7, 7, 3, 64)}
    cin = 64
    for s, (blocks, width, cout, _) in enumerate(RESNET50, start=1):
        for b in range(1, blocks + 1):
            block = f"stage{s}/block{b}"
            convs[f"{block}/conv1"] = (1, 1, cin, width)
            convs[f"{block}/conv2"] = (3, 3, width, width)
            convs[f"{block}/conv3"] = (1, 1, width, cout)
            if b == 1:
                convs[f"{block}/downsample"] = (1, 1, cin, cout)
            cin = cout
    params, stats = {}, {}
    for unit, kernel in convs.items():
        params[f"{unit}/conv/kernel"] = kernel
        params[f"{unit}/bn/scale"] = params[f"{unit}/bn/bias"] = (kernel[-1],)
        stats[f"{unit}/bn/mean"] = stats[f"{unit}/bn/var"] = (kernel[-1],)
    return params, stats


def test_resnet50_parameter_tree_is_exact():
    shapes = _shapes(ResNet("resnet50"), jnp.zeros((1, 32, 32, 3)))
    params, stats = _expected_resnet50()
    assert _flat(shapes["params"]) == params
    assert _flat(shapes["batch_stats"]) == stats


def test_resnet18_basic_blocks():
    params = _flat(_shapes(ResNet("resnet18"), jnp.zeros((1, 32, 32, 3)))["params"])
    assert params["stage1/block1/conv1/conv/kernel"] == (3, 3, 64, 64)
    assert params["stage2/block1/conv2/conv/kernel"] == (3, 3, 128, 128)
    assert params["stage2/block1/downsample/conv/kernel"] == (1, 1, 64, 128)
    assert not any("conv3" in p or p.startswith("stage1/block1/downsample") for p in params)
    assert sum(np.prod(s) for s in params.values()) == 11_176_512  # torchvision minus fc


def test_classifier_paths_read_as_policies_expect():
    model = build_model("resnet18", 10)
    shapes = _shapes(model, jnp.zeros((1, 32, 32, 3)))
    paths = set(flax.traverse_util.flatten_dict(shapes["params"], sep="/"))
    assert {"backbone/stem/conv/kernel", "head/dense/kernel", "head/dense/bias"} <= paths
    assert shapes["params"]["head"]["dense"]["kernel"].shape == (512, 10)


def test_stage_and_layer_names():
    assert spec.stage_names("resnet50") == ["stem", "stage1", "stage2", "stage3", "stage4"]
    layers = spec.layer_names("resnet50")
    assert layers[:3] == ["stem", "stage1/block1", "stage1/block2"]
    assert layers[-1] == "stage4/block3" and len(layers) == 1 + 16
    assert len(spec.layer_names("resnet101")) == 1 + 33


def test_return_stages_follow_stage_names():
    model = ResNet("resnet50")
    x = jnp.zeros((2, 64, 64, 3))
    out = jax.eval_shape(
        functools.partial(model.apply, train=False, return_stages=True), _shapes(model, x), x
    )
    names = spec.stage_names("resnet50")
    assert set(out) == set(names)  # JAX returns dicts key-sorted; stage_names gives the order
    strides_channels = [(4, 64), (4, 256), (8, 512), (16, 1024), (32, 2048)]
    assert [out[n].shape for n in names] == [(2, 64 // s, 64 // s, c) for s, c in strides_channels]


def test_norm_eval_keeps_matching_statistics():
    model = ResNet("resnet18", norm_eval=r"^(stem|stage1)/")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), _shapes(model, x))
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = flax.traverse_util.flatten_dict(variables["batch_stats"], sep="/")
    after = flax.traverse_util.flatten_dict(updates["batch_stats"], sep="/")
    for path, value in after.items():
        kept = np.array_equal(value, before[path])
        assert kept == path.startswith(("stem/", "stage1/")), path


def test_logits_match_timm(tmp_path):
    variables, images, expected = load_golden("resnet50", tmp_path)
    model = build_model("resnet50", 1000)
    logits = jax.jit(functools.partial(model.apply, train=False))(variables, images)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=TOLERANCE)


def test_computation_dtype():
    model = ResNet("resnet18", dtype=jnp.bfloat16)
    x = jnp.zeros((1, 32, 32, 3))
    variables = _shapes(model, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert out.dtype == jnp.bfloat16
