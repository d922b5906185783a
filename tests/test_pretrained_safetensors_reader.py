"""Tests for jtransfer.pretrained.safetensors_reader and its use through `pretrained.load`."""

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from jtransfer import pretrained
from jtransfer.pretrained.safetensors_reader import SafetensorsFileError, read_state_dict

TENSORS = {
    "conv.weight": np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3),
    "bn.running_var": np.linspace(0.5, 1.5, 7).astype(np.float16),
    "bn.num_batches_tracked": np.array(12, np.int64),
    "fc.bias": np.array([1.5, -2.25, 3.0], ml_dtypes.bfloat16),
}


@pytest.fixture
def path(tmp_path):
    path = tmp_path / "weights.safetensors"
    safetensors.numpy.save_file(TENSORS, path)
    return path


def test_round_trip_keeps_dtypes_and_values(path):
    state_dict = read_state_dict(path)
    assert state_dict.keys() == TENSORS.keys()
    for key, expected in TENSORS.items():
        assert state_dict[key].dtype == expected.dtype, key
        assert state_dict[key].shape == expected.shape, key
        np.testing.assert_array_equal(state_dict[key], expected, err_msg=key)


def test_bfloat16_casts_exactly_to_float32(path):
    bias = read_state_dict(path)["fc.bias"].astype(np.float32)
    np.testing.assert_array_equal(bias, [1.5, -2.25, 3.0])


@pytest.mark.parametrize("keep", [0, 5, 60, -8])
def test_truncated_file_names_the_file(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(SafetensorsFileError, match="weights.safetensors"):
        read_state_dict(path)


def test_other_format_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"PK\x03\x04 this is a zip (e.g. a .pth renamed), not safetensors")
    with pytest.raises(SafetensorsFileError, match="model.safetensors"):
        pretrained.load(str(path), model="resnet50")


def test_unknown_suffix_names_the_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match=r"no reader for '\.bin' files .*weights\.bin"):
        pretrained.load(str(path), model="resnet50")
