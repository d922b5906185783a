"""Geometric ops move the image, its mask and its boxes together, with one draw per op; on an
image alone they are the tf.image calls they always were."""

import numpy as np
import pytest
import tensorflow as tf

from jtransfer import data
from jtransfer.data.geometry import PAD_LABEL

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (10, 20, 3), dtype=np.uint8)
MASK = np.arange(200, dtype=np.int32).reshape(10, 20, 1)  # every pixel its own value
# [ymin, xmin, ymax, xmax] normalised: pixels rows 2-6, columns 4-12; the right half; a sliver
BOXES = np.array([[0.2, 0.2, 0.6, 0.6], [0.0, 0.5, 1.0, 1.0], [0.9, 0.0, 1.0, 0.05]], np.float32)
CLASSES = np.array([3, 1, 2], np.int32)
SEEDS = [(5, s) for s in range(32)]


def run(pp: str, seed=(0, 0), **features) -> dict[str, np.ndarray]:
    features = {k: tf.constant(v) for k, v in features.items()}
    features["_seed"] = tf.constant(seed, tf.int64)
    out = data.parse_pp(pp)(features)
    return {k: v.numpy() for k, v in out.items() if not k.startswith("_")}


def run_all(pp: str, seed=(0, 0)) -> dict[str, np.ndarray]:
    return run(pp, seed, image=IMAGE, segmentation=MASK, boxes=BOXES, classes=CLASSES)


def split(seed) -> tf.Tensor:
    """The seed a pp's first random op draws from (the ops split `_seed` and use one half)."""
    return tf.random.experimental.stateless_split(tf.constant(seed, tf.int64), num=2)[0]


@pytest.mark.parametrize("seed", SEEDS[:8])
def test_on_an_image_alone_the_ops_are_the_tf_image_calls(seed):
    """Classification batches stay bit-identical: the same draws and pixels as tf.image."""
    image = tf.constant(IMAGE)
    np.testing.assert_array_equal(
        run("random_crop((4, 7))", seed, image=IMAGE)["image"],
        tf.image.stateless_random_crop(image, [4, 7, 3], split(seed)),
    )
    np.testing.assert_array_equal(
        run("flip_lr", seed, image=IMAGE)["image"],
        tf.image.stateless_random_flip_left_right(image, split(seed)),
    )
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4]), split(seed), min_object_covered=0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.05, 1.0),
        use_image_if_no_bounding_boxes=True,
    )  # fmt: skip
    window = tf.image.resize(tf.slice(image, begin, size), (6, 6), antialias=True)
    expected = tf.saturate_cast(tf.round(window), tf.uint8)
    np.testing.assert_array_equal(run("inception_crop(6)", seed, image=IMAGE)["image"], expected)


def test_flip_mirrors_image_mask_and_boxes_together():
    flipped = []
    for seed in SEEDS:
        out = run_all("flip_lr", seed)
        flipped.append(np.array_equal(out["image"], IMAGE[:, ::-1]))
        if flipped[-1]:
            np.testing.assert_array_equal(out["segmentation"], MASK[:, ::-1])
            np.testing.assert_allclose(
                out["boxes"], [[0.2, 0.4, 0.6, 0.8], [0, 0, 1, 0.5], [0.9, 0.95, 1, 1]], atol=1e-7
            )
        else:
            np.testing.assert_array_equal(out["image"], IMAGE)
            np.testing.assert_array_equal(out["segmentation"], MASK)
            np.testing.assert_array_equal(out["boxes"], BOXES)
        np.testing.assert_array_equal(out["classes"], CLASSES)
    assert 8 < sum(flipped) < 24  # both happen, about half the time


def test_random_crop_takes_the_same_window_of_image_mask_and_boxes():
    corners = set()
    for seed in SEEDS:
        out = run_all("random_crop((5, 8))", seed)
        y, x = divmod(int(out["segmentation"][0, 0, 0]), 20)  # the mask names its pixels
        corners.add((y, x))
        np.testing.assert_array_equal(out["segmentation"], MASK[y : y + 5, x : x + 8])
        np.testing.assert_array_equal(out["image"], IMAGE[y : y + 5, x : x + 8])
        # The boxes in pixels, shifted by the corner, clipped to the window, back to [0, 1]
        # (in float32, as the op: a box edge on the window's edge leaves a box of zero width).
        f32 = np.float32
        pixels = BOXES * f32([10, 20, 10, 20]) - f32([y, x, y, x])
        expected = np.clip(pixels / f32([5, 8, 5, 8]), 0, 1)
        keep = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
        np.testing.assert_allclose(out["boxes"], expected[keep], atol=1e-6)
        np.testing.assert_array_equal(out["classes"], CLASSES[keep])
    assert len(corners) > 10


def test_central_crop_boxes_are_clipped_and_emptied_ones_dropped():
    """A 6 x 10 window at rows 2-8, columns 5-15 of the 10 x 20 image."""
    out = run_all("central_crop((6, 10))")
    np.testing.assert_array_equal(out["segmentation"], MASK[2:8, 5:15])
    # box 0: rows 2-6 -> 0-4 of 6, columns 4-12 -> clipped 0-7 of 10; box 1: rows 0-10 -> 0-6
    # (clipped), columns 10-20 -> 5-10 (clipped); box 2 (rows 9-10, columns 0-1) is outside.
    np.testing.assert_allclose(out["boxes"], [[0, 0, 4 / 6, 0.7], [0, 0.5, 1, 1]], atol=1e-6)
    np.testing.assert_array_equal(out["classes"], [3, 1])


@pytest.mark.parametrize(
    "pp", ["resize((7, 13))", "resize(31)", "resize_small(3)", "inception_crop(9)"]
)
def test_masks_resize_by_nearest_neighbour(pp):
    mask = np.where(IMAGE[..., :1] > 128, 1, 0).astype(np.int32)
    mask[:3] = 255  # an ignored band
    values = set()
    for seed in SEEDS[:4]:
        out = run(pp, seed, image=IMAGE, segmentation=mask)
        assert out["segmentation"].shape[:2] == out["image"].shape[:2]
        assert out["segmentation"].dtype == np.int32
        assert set(np.unique(out["segmentation"])) <= {0, 1, 255}  # only values it had
        values |= set(np.unique(out["segmentation"]))
    assert values == {0, 1, 255}
    # Resizing by a whole factor repeats each pixel.
    np.testing.assert_array_equal(
        run("resize((20, 40))", image=IMAGE, segmentation=mask)["segmentation"],
        mask.repeat(2, 0).repeat(2, 1),
    )


def test_resize_leaves_normalised_boxes_alone():
    out = run_all("resize_small(5)")
    assert out["image"].shape == (5, 10, 3)
    np.testing.assert_array_equal(out["boxes"], BOXES)


def test_resize_pad_fits_then_pads_with_ignore_and_rescales_boxes():
    out = run_all("resize_pad(8)")  # 10 x 20 -> 4 x 8, padded to 8 x 8 at the bottom
    assert out["image"].shape == (8, 8, 3) and out["segmentation"].shape == (8, 8, 1)
    assert (out["image"][4:] == 0).all() and (out["segmentation"][4:] == PAD_LABEL).all()
    # Nearest neighbour with half-pixel centres: source index floor((i + 0.5) * 2.5).
    rows, cols = [1, 3, 6, 8], [1, 3, 6, 8, 11, 13, 16, 18]
    np.testing.assert_array_equal(out["segmentation"][:4], MASK[rows][:, cols])
    np.testing.assert_allclose(out["boxes"], BOXES * [0.5, 1, 0.5, 1], atol=1e-7)


def test_random_scale_crop_keeps_box_mask_and_image_in_register():
    """A bright rectangle on black with its box and its mask: wherever scale and crop put it,
    the box, the mask's pixels and the image's bright pixels agree."""
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:30, 15:45] = 255
    mask = np.zeros((40, 60, 1), np.int32)
    mask[10:30, 15:45] = 1
    box = np.array([[10 / 40, 15 / 60, 30 / 40, 45 / 60]], np.float32)
    scales, kept = set(), 0
    for seed in SEEDS:
        out = run(
            "random_scale_crop((32, 32), 0.5, 2.0)",
            seed,
            image=image,
            segmentation=mask,
            boxes=box,
            classes=np.array([0], np.int32),
        )
        assert out["image"].shape == (32, 32, 3) and out["segmentation"].shape == (32, 32, 1)
        seg = out["segmentation"][..., 0]
        padded = seg == PAD_LABEL
        assert (out["image"][padded] == 0).all()
        scales.add(int((~padded).sum()))
        object_pixels = np.argwhere(seg == 1)
        if len(out["boxes"]):
            kept += 1
            ymin, xmin, ymax, xmax = out["boxes"][0] * 32
            lo, hi = object_pixels.min(0), object_pixels.max(0) + 1
            np.testing.assert_allclose([ymin, xmin, ymax, xmax], [*lo, *hi], atol=1.0)
            bright = np.argwhere(out["image"][..., 0] >= 128)
            np.testing.assert_allclose(bright.min(0), lo, atol=1)
            np.testing.assert_allclose(bright.max(0) + 1, hi, atol=1)
        else:
            assert len(object_pixels) == 0
    assert len(scales) > 5 and kept > 16


def test_pad_boxes_pads_and_truncates():
    out = run_all("pad_boxes(5)")
    np.testing.assert_array_equal(out["boxes"][:3], BOXES)
    np.testing.assert_array_equal(out["boxes"][3:], 0)
    np.testing.assert_array_equal(out["classes"], [3, 1, 2, -1, -1])
    out = run_all("pad_boxes(2)")
    np.testing.assert_array_equal(out["classes"], [3, 1])
    np.testing.assert_array_equal(run("pad_boxes(4)", image=IMAGE)["image"], IMAGE)  # predict


def test_ops_chain_on_the_seed_and_new_ops_say_whether_they_are_random():
    pp = "random_scale_crop(16)|flip_lr|pad_boxes(4)"
    a, b = run_all(pp, (1, 2)), run_all(pp, (1, 2))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not data.is_deterministic(pp)
    assert data.is_deterministic("decode|resize_pad(16)|pad_boxes(4)")
