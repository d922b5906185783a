"""Tests for jtransfer.pretrained.resnet and .bit: timm/torchvision keys -> jtransfer trees.

The real key -> shape tables of timm's `resnet50` and `resnetv2_50x1_bit` come from the golden
fixtures (written by scripts/make_golden_timm.py), so these tests check the key maps against
timm's actual names without importing it, and against the Flax models' own parameter trees.
"""

import functools
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from seeded import seeded_state_dict, shape_table

from jtransfer import pretrained
from jtransfer.models import build_model
from jtransfer.pretrained.bit import from_timm
from jtransfer.pretrained.resnet import from_torchvision

GOLDEN = Path(__file__).parent / "golden"


def _timm_state_dict(name: str) -> dict[str, np.ndarray]:
    golden = np.load(GOLDEN / f"{name}.npz")
    return seeded_state_dict(shape_table(golden["keys"], golden["shapes"]), seed=0)


@pytest.fixture(scope="module")
def resnet50():
    return _timm_state_dict("resnet50")


@pytest.fixture(scope="module")
def bit_r50x1():
    return _timm_state_dict("bit_r50x1")


def _flat_shapes(tree):
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}


def _model_shapes(name: str, num_classes: int):
    model = build_model(name, num_classes)
    init = functools.partial(model.init, train=False)
    return _flat_shapes(jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


@pytest.mark.parametrize(
    ("name", "key_map"), [("resnet50", from_torchvision), ("bit_r50x1", from_timm)]
)
def test_tree_is_exactly_the_models(name, key_map, request):
    tree = key_map(request.getfixturevalue(name), name)
    assert _flat_shapes(tree) == _model_shapes(name, 1000)
    leaves = jax.tree.leaves(tree)
    assert all(leaf.dtype == np.float32 and leaf.flags.c_contiguous for leaf in leaves)


def test_resnet_values(resnet50):
    tree = from_torchvision(resnet50, "resnet50")
    params, stats = tree["params"]["backbone"], tree["batch_stats"]["backbone"]
    np.testing.assert_array_equal(
        params["stem"]["conv"]["kernel"][6, 2, 1, 5], resnet50["conv1.weight"][5, 1, 6, 2]
    )
    down = params["stage2"]["block1"]["downsample"]
    np.testing.assert_array_equal(
        down["conv"]["kernel"][0, 0], resnet50["layer2.0.downsample.0.weight"][:, :, 0, 0].T
    )
    np.testing.assert_array_equal(down["bn"]["scale"], resnet50["layer2.0.downsample.1.weight"])
    np.testing.assert_array_equal(
        stats["stage3"]["block6"]["conv2"]["bn"]["var"], resnet50["layer3.5.bn2.running_var"]
    )
    np.testing.assert_array_equal(
        tree["params"]["head"]["dense"]["kernel"], resnet50["fc.weight"].T
    )


def test_bit_values(bit_r50x1):
    tree = from_timm(bit_r50x1, "bit_r50x1")
    params = tree["params"]
    block = params["backbone"]["stage4"]["block3"]
    np.testing.assert_array_equal(
        block["norm2"]["scale"], bit_r50x1["stages.3.blocks.2.norm2.weight"]
    )
    np.testing.assert_array_equal(
        block["conv2"]["kernel"][0, 1, 7, 9],
        bit_r50x1["stages.3.blocks.2.conv2.weight"][9, 7, 0, 1],
    )
    np.testing.assert_array_equal(params["backbone"]["norm"]["bias"], bit_r50x1["norm.bias"])
    np.testing.assert_array_equal(
        params["head"]["dense"]["kernel"], bit_r50x1["head.fc.weight"][:, :, 0, 0].T
    )


def test_resnet_reports_every_offending_key(resnet50):
    bad = dict(resnet50)
    del bad["layer3.2.bn1.bias"], bad["fc.bias"], bad["conv1.weight"]
    bad["layer5.0.conv1.weight"] = np.zeros((3,), np.float32)
    bad["layer1.0.downsample.1.num_batches_tracked"] = bad.pop("layer1.0.downsample.1.running_var")
    bad["layer4.2.conv3.weight"] = np.zeros((2048, 512, 3, 3), np.float32)
    bad["layer2.1.bn2.running_mean"] = np.zeros((129,), np.float32)
    with pytest.raises(ValueError, match="does not match resnet50") as info:
        from_torchvision(bad, "resnet50")
    for key in [
        "missing: layer3.2.bn1.bias",
        "missing: fc.bias",
        "missing: conv1.weight",
        "missing: layer1.0.downsample.1.running_var",
        "unexpected: layer5.0.conv1.weight",
        "wrong shape: layer4.2.conv3.weight",
        "wrong shape: layer2.1.bn2.running_mean",
    ]:
        assert key in str(info.value), key


def test_bit_reports_every_offending_key(bit_r50x1):
    bad = dict(bit_r50x1)
    del bad["stages.0.blocks.0.downsample.conv.weight"], bad["norm.weight"]
    bad["stages.1.blocks.0.norm1.running_mean"] = np.zeros((256,), np.float32)
    bad["stem.conv.weight"] = np.zeros((64, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="does not match bit_r50x1") as info:
        from_timm(bad, "bit_r50x1")
    for key in [
        "missing: stages.0.blocks.0.downsample.conv.weight",
        "missing: norm.weight",
        "unexpected: stages.1.blocks.0.norm1.running_mean",
        "wrong shape: stem.conv.weight",
    ]:
        assert key in str(info.value), key


def test_num_batches_tracked_is_optional(resnet50):
    trimmed = {k: v for k, v in resnet50.items() if not k.endswith("num_batches_tracked")}
    assert from_torchvision(trimmed, "resnet50")["params"].keys() == {"backbone", "head"}


def test_class_count_comes_from_the_checkpoint(resnet50, bit_r50x1):
    resnet50 = {**resnet50, "fc.weight": np.ones((10, 2048), np.float32), "fc.bias": np.ones(10)}
    assert from_torchvision(resnet50, "resnet50")["params"]["head"]["dense"]["kernel"].shape == (
        2048,
        10,
    )
    bit_r50x1 = {
        **bit_r50x1,
        "head.fc.weight": np.ones((7, 2048, 1, 1), np.float32),
        "head.fc.bias": np.ones(7),
    }
    assert from_timm(bit_r50x1, "bit_r50x1")["params"]["head"]["dense"]["bias"].shape == (7,)


def test_wrong_variant(resnet50):
    with pytest.raises(ValueError, match="missing: layer3.6.conv1.weight"):
        from_torchvision(resnet50, "resnet101")
    with pytest.raises(ValueError, match="wrong shape: layer1.0.conv1.weight"):
        from_torchvision(resnet50, "resnet34")
    with pytest.raises(ValueError, match="resnet50"):
        from_torchvision(resnet50, "resnet51")


def test_registered_for_load():
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "bit_r50x1", "bit_r101x3"):
        assert name in pretrained.KEY_MAPS
    assert ".safetensors" in pretrained.READERS
