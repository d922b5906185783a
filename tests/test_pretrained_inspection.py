"""`python -m jtransfer.pretrained inspect`: the tree and the models a file maps to."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jtransfer.pretrained import SOURCES, load, read
from jtransfer.pretrained.inspection import report
from jtransfer.pretrained.native import abstract_variables, flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LITE0 = SOURCES["efficientnet_lite0/imagenet"]


def test_torch_file_maps_to_its_model_and_only_it():
    lines = report(LITE0.path()).splitlines()
    assert lines[0].endswith(".pth: foreign layout")
    assert "_conv_stem.weight  " in lines[1] and "(32, 3, 3, 3)" in lines[1]
    assert lines[1].split()[-2:] == ["float32", "864"]
    assert "296 arrays, 4,694,073 values" in lines
    assert lines[-1] == "maps to: efficientnet_lite0 (key map efficientnet_lite.from_lukemelas)"


def test_native_tree_maps_to_its_model(tmp_path):
    shapes = flatten(abstract_variables("resnet18", 7))
    np.savez(tmp_path / "r18.npz", **{k: np.zeros(v.shape, v.dtype) for k, v in shapes.items()})
    text = report(tmp_path / "r18.npz")
    assert text.splitlines()[0].endswith("r18.npz: jtransfer (native) layout")
    assert "  params/head  " in text  # per-group counts
    assert text.splitlines()[-1] == "maps to: resnet18 (native jtransfer layout, no key map)"


def test_tree_of_no_family_names_the_nearest_and_its_problems(tmp_path):
    state = read(LITE0.path())
    state["_blocks.3.extra"] = np.zeros(2, np.float32)
    del state["_conv_head.weight"]
    path = tmp_path / "renamed.npz"
    np.savez(path, **state)
    assert report(path).splitlines()[-3:] == [
        "maps to no model (24 tried); nearest: efficientnet_lite0, 2 problems:",
        "  missing: _conv_head.weight",
        "  unexpected: _blocks.3.extra",
    ]
    # Loading it as that model is the same error, naming the file and the keys.
    with pytest.raises(ValueError, match=f"{path}: state dict does not match efficientnet_lite0"):
        load(str(path), model="efficientnet_lite0")


def test_command_line(tmp_path):
    cmd = [sys.executable, "-m", "jtransfer.pretrained", "inspect"]
    done = subprocess.run([*cmd, str(LITE0.path())], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("maps to: efficientnet_lite0 ")
    weird = tmp_path / "weights.ckpt"
    weird.write_bytes(b"??")
    done = subprocess.run([*cmd, str(weird)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: no reader for '.ckpt' files ({weird}); known: ['.npz', '.pt', '.pth', "
        "'.safetensors']"
    )
