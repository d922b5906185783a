"""Tests for jtransfer.pretrained.safetensors_reader and its use through `pretrained.load`."""

import json
import struct

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


@pytest.mark.parametrize(
    "dtype, shape, nbytes", [("F8_E4M3", [2, 2], 4), ("F8_E5M2", [3], 3), ("F4", [4], 2)]
)
def test_low_precision_floats_name_the_file_and_dtype(tmp_path, dtype, shape, nbytes):
    # The numpy backend has no type for these and raised numpy's AttributeError.
    header = {
        "bias": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "weight": {"dtype": dtype, "shape": shape, "data_offsets": [4, 4 + nbytes]},
    }
    text = json.dumps(header).encode()
    path = tmp_path / "fp8.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(4 + nbytes))
    message = rf"fp8\.safetensors: tensor 'weight' is stored as {dtype}, which numpy cannot hold"
    with pytest.raises(SafetensorsFileError, match=message):
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
