"""Tests for jtransfer.pretrained.resample and its use by graft (the `resampled` manifest key).

That the position-embedding interpolation is timm's exactly is shown by the 384 px logits in
test_pretrained_vit.py; here are the properties each resampler promises.
"""

import jax
import numpy as np
import pytest

from jtransfer.graft import GraftError, graft
from jtransfer.pretrained.resample import (
    ResampleError,
    resample,
    resample_posemb,
    resize_patch_kernel,
    sum_input_channels,
)

RNG = np.random.default_rng(0)


def _normal(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def test_posemb_identity_when_grids_match():
    posemb = _normal(1, 14, 14, 8)
    assert resample_posemb(posemb, (1, 14, 14, 8)) is posemb


def test_posemb_resamples_the_grid_only():
    posemb = _normal(1, 14, 14, 8)
    out = resample_posemb(posemb, (1, 24, 20, 8))
    assert out.shape == (1, 24, 20, 8) and out.dtype == np.float32
    # Each channel is resized on its own, and a constant grid stays constant.
    np.testing.assert_allclose(
        resample_posemb(posemb[..., :1], (1, 24, 20, 1)), out[..., :1], rtol=1e-5, atol=1e-6
    )
    flat = np.full((1, 14, 14, 2), 3.0, np.float32)
    np.testing.assert_allclose(resample_posemb(flat, (1, 9, 30, 2)), 3.0, rtol=1e-6)
    with pytest.raises(ResampleError, match="not D"):
        resample_posemb(posemb, (1, 24, 24, 16))
    with pytest.raises(ResampleError, match=r"\(1, h, w, D\) grid"):
        resample_posemb(posemb.reshape(1, 196, 8), (1, 577, 8))


def test_patch_kernel_pi_resize_preserves_token_values():
    """Upsampling is exact: <patch, kernel> == <bilinear resize of patch, new kernel>."""
    kernel = _normal(8, 8, 3, 4)
    new = resize_patch_kernel(kernel, (16, 16, 3, 4))
    assert new.shape == (16, 16, 3, 4) and new.dtype == np.float32
    patches = _normal(5, 8, 8, 3)
    upsampled = np.asarray(jax.image.resize(patches, (5, 16, 16, 3), "linear", antialias=False))
    np.testing.assert_allclose(
        np.einsum("nhwc,hwcd->nd", upsampled, new),
        np.einsum("nhwc,hwcd->nd", patches, kernel),
        rtol=1e-4,
        atol=1e-4,
    )
    assert resize_patch_kernel(kernel, (4, 4, 3, 4)).shape == (4, 4, 3, 4)
    assert resize_patch_kernel(kernel, (12, 12, 1, 4)).shape == (12, 12, 1, 4)
    with pytest.raises(ResampleError, match="same D"):
        resize_patch_kernel(kernel, (16, 16, 3, 5))


def test_rgb_kernel_becomes_grayscale_by_summing():
    kernel = _normal(3, 3, 3, 6)
    gray = sum_input_channels(kernel, (3, 3, 1, 6))
    patch = _normal(3, 3, 1)
    np.testing.assert_allclose(
        np.einsum("hwc,hwcd->d", patch, gray),
        np.einsum("hwc,hwcd->d", np.repeat(patch, 3, axis=-1), kernel),
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ResampleError, match="3 input channels to 1"):
        sum_input_channels(kernel, (3, 3, 2, 6))


def test_rules_pick_by_path():
    assert resample("head/dense/kernel", _normal(4, 5), (4, 7)) is None
    posemb = resample("backbone/embed/pos_embedding", _normal(1, 2, 2, 3), (1, 3, 3, 3))
    assert posemb.shape == (1, 3, 3, 3)
    stem = resample("backbone/stem/conv/kernel", _normal(3, 3, 3, 8), (3, 3, 1, 8))
    assert stem.shape == (3, 3, 1, 8)
    with pytest.raises(ResampleError):  # a stem kernel does not change its spatial size
        resample("backbone/stem/conv/kernel", _normal(3, 3, 3, 8), (5, 5, 3, 8))


def _vit_tree(grid: int, channels: int, classes: int) -> dict:
    return {
        "params": {
            "backbone": {
                "embed": {
                    "patch": {"kernel": np.zeros((16, 16, channels, 8), np.float32)},
                    "pos_embedding": np.zeros((1, grid, grid, 8), np.float32),
                }
            },
            "head": {"dense": {"kernel": np.zeros((8, classes), np.float32)}},
        }
    }


def test_graft_resamples_and_records_it():
    loaded = _vit_tree(14, 3, 1000)
    loaded["params"]["backbone"]["embed"]["pos_embedding"] = _normal(1, 14, 14, 8)
    out, manifest = graft(_vit_tree(24, 1, 10), loaded, dont_load=["head/.*"])
    embed = out["params"]["backbone"]["embed"]
    assert manifest["resampled"] == [
        "params/backbone/embed/patch/kernel",
        "params/backbone/embed/pos_embedding",
    ]
    assert manifest["loaded"] == []
    assert embed["patch"]["kernel"].shape == (16, 16, 1, 8)
    np.testing.assert_array_equal(
        embed["pos_embedding"],
        resample_posemb(loaded["params"]["backbone"]["embed"]["pos_embedding"], (1, 24, 24, 8)),
    )


def test_graft_reports_an_impossible_resampling_with_the_rest():
    loaded = _vit_tree(14, 2, 10)
    with pytest.raises(GraftError) as e:
        graft(_vit_tree(14, 1, 5), loaded)
    message = str(e.value)
    assert (
        "params/backbone/embed/patch/kernel: checkpoint (16, 16, 2, 8) vs model (16, 16, 1, 8) "
        "(not resampled: a kernel adapts only from 3 input channels to 1" in message
    )
    assert "params/head/dense/kernel: checkpoint (8, 10) vs model (8, 5)" in message
