"""Preprocessing ops: parsing, shapes and values, seeded randomness, errors that name the op."""

import numpy as np
import pytest
import tensorflow as tf

from jtransfer import data

IMAGE = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def run(pp: str, seed=(0, 0), image: np.ndarray = IMAGE) -> np.ndarray:
    features = {"image": tf.io.encode_png(image), "_seed": tf.constant(seed, tf.int64)}
    return data.parse_pp(pp)(features)["image"].numpy()


def test_decode_and_value_range():
    np.testing.assert_array_equal(run("decode"), IMAGE)
    out = run("decode|value_range(-1, 1)")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, IMAGE / 255 * 2 - 1, atol=1e-6)


@pytest.mark.parametrize(
    "pp, shape",
    [
        ("decode|resize(8)", (8, 8, 3)),
        ("decode|resize((7, 9))", (7, 9, 3)),
        ("decode|resize_small(10)", (10, 15, 3)),
        ("decode|central_crop(6)", (6, 6, 3)),
        ("decode|random_crop((4, 5))", (4, 5, 3)),
        ("decode|inception_crop(6, area_min=0.5)", (6, 6, 3)),
        ("decode|flip_lr", (20, 30, 3)),
    ],
)
def test_output_shapes(pp, shape):
    out = run(pp)
    assert out.shape == shape and out.dtype == np.uint8


def test_central_crop_is_central():
    np.testing.assert_array_equal(run("decode|central_crop((4, 6))"), IMAGE[8:12, 12:18])


def test_resize_keeps_a_constant_image_constant():
    constant = np.full((20, 30, 3), 77, np.uint8)
    out = data.parse_pp("resize(9)")({"image": tf.constant(constant)})["image"].numpy()
    assert (out == 77).all()


SEEDS = [(7, s) for s in range(16)]


def windows(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Every h x w window of `image`, indexed [y, x]."""
    return np.lib.stride_tricks.sliding_window_view(image, (h, w, 3))[:, :, 0]


def views(pp: str, image: np.ndarray = IMAGE) -> list[np.ndarray]:
    """`pp`'s output at each of SEEDS, after checking that a seed repeats its view."""
    outputs = [run(pp, seed, image) for seed in SEEDS]
    for seed, out in zip(SEEDS, outputs, strict=True):
        np.testing.assert_array_equal(run(pp, seed, image), out)
    return outputs


def test_flip_lr_mirrors_the_image_or_keeps_it():
    mirrored = []
    for out in views("decode|flip_lr"):
        mirrored.append(np.array_equal(out, IMAGE[:, ::-1]))
        if not mirrored[-1]:
            np.testing.assert_array_equal(out, IMAGE)
    assert set(mirrored) == {True, False}


def test_random_crop_is_a_window_of_the_input():
    positions = set()
    for out in views("decode|random_crop((4, 5))"):
        matches = np.argwhere((windows(IMAGE, 4, 5) == out).all(axis=(2, 3, 4)))
        assert len(matches) == 1, matches  # the noise image has no repeated 4 x 5 window
        positions.add(tuple(matches[0]))
    assert len(positions) > 1


def test_inception_crop_is_a_resized_window_of_the_input():
    image = np.ascontiguousarray(IMAGE[:8, :10])  # small enough to try every window
    resize = data.parse_pp("resize(6)")
    candidates = {}  # (y, x, h, w) -> the window resized by the `resize` op
    for h, w in np.ndindex(8, 10):
        h, w = h + 1, w + 1
        resized = resize({"image": tf.constant(windows(image, h, w).reshape(-1, h, w, 3))})
        for (y, x), out in zip(np.ndindex(9 - h, 11 - w), resized["image"].numpy(), strict=True):
            candidates[y, x, h, w] = out
    boxes = set()
    for out in views("decode|inception_crop(6)", image):
        matches = [box for box, resized in candidates.items() if np.array_equal(resized, out)]
        assert matches, "not a resized window"
        boxes.add(matches[0])
    assert len(boxes) > 1


def test_random_ops_are_functions_of_the_seed():
    pp = "decode|inception_crop(8)|flip_lr"
    np.testing.assert_array_equal(run(pp, seed=(1, 2)), run(pp, seed=(1, 2)))
    outputs = {run(pp, seed=(1, s)).tobytes() for s in range(8)}
    assert len(outputs) > 1


def test_is_deterministic():
    assert data.is_deterministic("decode|resize_small(16)|central_crop(12)|value_range(-1, 1)")
    for op in ("random_crop(4)", "inception_crop(4)", "flip_lr"):
        assert not data.is_deterministic(f"decode|{op}|value_range(0, 1)")


def test_unknown_op_lists_valid_ops_and_close_matches():
    with pytest.raises(ValueError, match="flip_rl") as error:
        data.parse_pp("decode|flip_rl")
    message = str(error.value)
    assert "Did you mean flip_lr" in message
    assert all(name in message for name in data.PREPROCESS_OPS)


def test_bad_arguments_name_the_op():
    with pytest.raises(ValueError, match=r"resize\(1, 2, 3\)"):
        data.parse_pp("decode|resize(1, 2, 3)")
    with pytest.raises(ValueError, match="cannot parse"):
        data.parse_pp("decode|resize(x)")


def test_normalize_with_imagenet_statistics():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = run(f"decode|value_range(0, 1)|normalize({mean}, {std})")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (IMAGE / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        run("decode|value_range(0, 1)|normalize(0.5, 0.25)"), IMAGE / 255 * 4 - 2, atol=1e-5
    )


def test_normalize_refuses_uint8_and_bad_std():
    with pytest.raises(ValueError, match=r"float image, got uint8: put value_range\(0, 1\)"):
        run("decode|normalize(0.5, 0.5)")
    with pytest.raises(ValueError, match="std must be positive"):
        data.parse_pp("normalize((0.5, 0.5, 0.5), (0.2, 0.0, 0.2))")
