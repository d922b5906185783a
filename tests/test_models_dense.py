"""Tests for jtransfer.models.dense and the registry's dense builders: per-family feature
strides, the parameter tree (top level exactly backbone/neck/head, the backbone subtree exactly
the classifier's, so the same checkpoint grafts), options passing through, and one compiled
ResNet-18 pair (segmenter, detector) for gradients reaching every parameter and `norm_eval`
holding exactly the BatchNorm layers it names.

Layout checks use `jax.eval_shape` (no compilation); the compiled test draws its variables with
numpy instead of running `init`, which compiles for longer than the gradient itself.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jtransfer.errors import JTransferError
from jtransfer.models import (
    build_detector,
    build_model,
    build_segmenter,
    fcos,
    feature_levels,
)
from jtransfer.models.necks import FPN, SimpleFeaturePyramid
from jtransfer.models.segmentation import segmentation_loss

FAMILIES = ["efficientnet_lite0", "resnet18", "bit_r50x1", "vit_ti16"]
SIZE = (64, 96)


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def _variables(model, size=SIZE):
    x = jnp.zeros((1, *size, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def test_feature_levels_per_family():
    assert feature_levels("efficientnet_lite0") == {
        4: "stage2",
        8: "stage3",
        16: "stage5",
        32: "top",
    }
    assert feature_levels("resnet50") == {4: "stage1", 8: "stage2", 16: "stage3", 32: "stage4"}
    assert feature_levels("bit_r50x1") == {4: "stage1", 8: "stage2", 16: "stage3", 32: "norm"}
    assert feature_levels("vit_s16") == {16: "norm"}
    assert feature_levels("vit_b32") == {32: "norm"}
    assert feature_levels("vit_s16", patch_size=8) == {8: "norm"}
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        feature_levels("resnet19")


@pytest.mark.parametrize("name", FAMILIES)
def test_feature_levels_have_their_strides(name):
    backbone = build_model(name, 2).backbone
    x = jnp.zeros((1, *SIZE, 3))
    stages = jax.eval_shape(
        lambda: backbone.init_with_output(jax.random.key(0), x, train=False, return_stages=True)[0]
    )
    for stride, stage in feature_levels(name).items():
        assert stages[stage].shape[1:3] == (SIZE[0] // stride, SIZE[1] // stride), stage


@pytest.mark.parametrize("name", FAMILIES)
def test_dense_models_hold_the_classifier_backbone(name):
    classifier = _flat(_variables(build_model(name, 10)))
    backbone = {k: v.shape for k, v in classifier.items() if k.split("/")[1] == "backbone"}
    for build in (build_segmenter, build_detector):
        model = build(name, 3, channels=16)
        variables = _variables(model)
        assert set(variables["params"]) == {"backbone", "neck", "head"}
        flat = _flat(variables)
        assert {k: v.shape for k, v in flat.items() if k.split("/")[1] == "backbone"} == backbone
        assert all(k.startswith("batch_stats/backbone/") for k in flat if "batch_stats" in k)
        out = jax.eval_shape(
            lambda v, m=model: m.apply(v, jnp.zeros((2, *SIZE, 3)), train=False), variables
        )
        if build is build_segmenter:
            assert out.shape == (2, *SIZE, 3) and out.dtype == jnp.float32
        else:
            p = sum(h * w for h, w in fcos.level_shapes(SIZE, model.head.strides))
            assert {k: v.shape for k, v in out.items()} == {
                "cls_logits": (2, p, 3),
                "box_ltrb": (2, p, 4),
                "centerness_logits": (2, p),
            }


def test_necks_and_levels_by_family():
    lite = build_detector("efficientnet_lite0", 3)
    assert isinstance(lite.neck, FPN) and lite.neck.num_extra == 2
    assert lite.levels == ((8, "stage3"), (16, "stage5"), (32, "top"))
    assert lite.head.strides == (8, 16, 32, 64, 128) and lite.head.channels == 64
    seg = build_segmenter("resnet50", 3)
    assert seg.levels == ((4, "stage1"), (8, "stage2"), (16, "stage3"), (32, "stage4"))
    assert seg.neck.num_extra == 0 and seg.head.channels == 64
    vit = build_detector("vit_s16", 3, strides=(8, 16, 32, 64))
    assert isinstance(vit.neck, SimpleFeaturePyramid) and vit.levels == ((16, "norm"),)
    assert vit.neck.strides == (8, 16, 32) and vit.neck.num_extra == 1
    assert vit.neck.norm == "layer"


def test_options_pass_through_and_bad_ones_are_refused():
    model = build_segmenter(
        "efficientnet_lite0",
        2,
        norm_eval="stem",
        drop_connect_rate=0.1,
        dtype=jnp.bfloat16,
        channels=32,
        head_norm="none",
    )
    assert model.backbone.norm_eval == "stem" and model.backbone.drop_connect_rate == 0.1
    assert model.backbone.dtype == model.neck.dtype == model.head.dtype == jnp.bfloat16
    assert (model.neck.channels, model.head.channels, model.head.norm) == (32, 32, "none")
    with pytest.raises(JTransferError, match=r"unknown options \['dropout_rate'\].*'tower_depth'"):
        build_detector("resnet18", 2, dropout_rate=0.1)
    with pytest.raises(JTransferError, match=r"unknown options \['norm_eval'\]"):
        build_segmenter("bit_r50x1", 2, norm_eval="stem")
    with pytest.raises(JTransferError, match=r"consecutive powers of two, got \[8, 32\]"):
        build_detector("resnet18", 2, strides=(8, 32))
    with pytest.raises(JTransferError, match=r"strides \[64, 128\] need backbone levels"):
        build_detector("resnet18", 2, strides=(64, 128))
    vit = build_segmenter("vit_ti16", 2, patch_size=8)
    assert vit.levels == ((8, "norm"),) and vit.backbone.patch_size == 8


def test_input_size_must_be_a_multiple_of_the_largest_stride():
    with pytest.raises(JTransferError, match=r"input size \(64, 80\) must be a multiple of 32"):
        _variables(build_segmenter("resnet18", 2), (64, 80))
    _variables(build_segmenter("vit_ti16", 2), (64, 80))  # ViT-Ti/16: multiples of 16


def _numpy_variables(model, size, seed=0):
    """Variables of `model` drawn with numpy (no compiled `init`): He-normal kernels, unit norm
    scales and running variances, zero biases and means, FCOS's prior on the class bias."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in _flat(_variables(model, size)).items():
        name = path.rsplit("/", 1)[-1]
        if name in ("scale", "var", "level_scales"):
            value = np.ones(leaf.shape)
        elif name == "kernel":
            value = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        elif path.endswith("cls_logits/bias"):
            value = np.full(leaf.shape, -np.log(99))
        else:
            value = np.zeros(leaf.shape)
        flat[path] = jnp.asarray(value, leaf.dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


def test_gradients_reach_every_parameter_and_norm_eval_holds_named_layers():
    # 64x256: P6 and P7 of 1x4 and 1x2 locations (GroupNorm over one location would zero them).
    size, held = (64, 256), r"backbone/stage[12]/.*"
    seg = build_segmenter("resnet18", 2, channels=16, norm_eval=held)
    det = build_detector("resnet18", 2, channels=16, tower_depth=1)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32)
    labels = rng.integers(0, 2, (2, *size)).astype(np.int32)
    boxes, classes = (
        np.float32([[[0.1, 0.1, 0.6, 0.3]], [[0.2, 0.5, 0.9, 0.9]]]),
        np.int32([[0], [1]]),
    )
    weights = np.ones(2, np.float32)

    def seg_loss(params, stats):
        logits, updates = seg.apply(
            {"params": params, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
        )
        total, count = segmentation_loss(logits, labels, weights)
        return total / count, updates["batch_stats"]

    def det_loss(params, stats):
        outputs, _ = det.apply(
            {"params": params, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
        )
        strides = det.head.strides
        return fcos.loss(outputs, boxes, classes, weights, image_size=size, strides=strides)[0]

    @jax.jit
    def grads(seg_vars, det_vars):
        unpack = lambda v: (v["params"], v["batch_stats"])  # noqa: E731
        seg_grads, new_stats = jax.grad(seg_loss, has_aux=True)(*unpack(seg_vars))
        return seg_grads, new_stats, jax.grad(det_loss)(*unpack(det_vars))

    seg_vars, det_vars = _numpy_variables(seg, size), _numpy_variables(det, size, 1)
    seg_grads, new_stats, det_grads = grads(seg_vars, det_vars)
    for g in (seg_grads, det_grads):
        zero = [k for k, v in _flat(g).items() if not np.any(np.asarray(v))]
        assert not zero
        assert set(g) == {"backbone", "neck", "head"}
    old, new = _flat(seg_vars["batch_stats"]), _flat(new_stats)
    assert old.keys() == new.keys()
    for path in old:
        layer = path.rsplit("/", 1)[0]  # e.g. backbone/stage1/block1/conv1/bn
        assert np.array_equal(old[path], new[path]) == bool(re.search(held, layer)), path
