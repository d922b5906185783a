"""Batch order: a function of (seed, step) only, whatever the process count or resume point."""

import itertools

import numpy as np
import pytest
from PIL import Image

from jtransfer import data

N = 37  # not a multiple of any global batch below
AUGMENT = "decode|inception_crop(8)|flip_lr|random_crop(6)|value_range(-1, 1)"
IDENTITY = "decode|value_range(0, 255)"
CROP_FLIP = "decode|random_crop(6)|flip_lr|value_range(0, 255)"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> data.Source:
    """N distinct 10x10 noise PNGs in three classes."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for i in range(N):
        class_dir = root / "train" / f"c{i % 3}"
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(
            class_dir / f"{i}.png"
        )
    return data.ImageFolderSource(str(root), splits=["train"])


@pytest.fixture(scope="module")
def all_images(source) -> np.ndarray:
    """Every example in source order, undistorted."""
    batches = list(
        data.eval_batches(source, "train", IDENTITY, N, process_count=1, process_index=0)
    )
    return batches[0]["image"]


def take(iterator, steps: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(iterator, steps))


def train(source, steps: int, global_batch: int = 6, pp: str = AUGMENT, **kwargs):
    kwargs = {"seed": 0, "process_index": 0, "process_count": 1, **kwargs}
    return take(data.train_batches(source, "train", pp, global_batch, **kwargs), steps)


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_epochs_follow_the_seeded_permutation(source, all_images):
    g, steps_per_epoch = 6, N // 6
    batches = train(source, 2 * steps_per_epoch, pp=IDENTITY, seed=3)
    for step, batch in enumerate(batches):
        epoch, k = divmod(step, steps_per_epoch)
        order = np.random.default_rng([3, epoch]).permutation(N)
        np.testing.assert_array_equal(batch["image"], all_images[order[k * g : (k + 1) * g]])
        assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32


def test_augmented_examples_are_views_of_their_images(source, all_images):
    """Each example is a 6 x 6 window of its image (found by search), mirrored or not; both
    happen and the windows' places vary. The same seed gives the same batches again."""
    g, steps_per_epoch = 6, N // 6
    batches = train(source, steps_per_epoch, pp=CROP_FLIP, seed=3)
    assert_batches_equal(train(source, steps_per_epoch, pp=CROP_FLIP, seed=3), batches)
    order = np.random.default_rng([3, 0]).permutation(N)
    found = []  # (mirrored, y, x) of each example, the window's corner in the image
    for k, batch in enumerate(batches):
        for view, index in zip(batch["image"], order[k * g : (k + 1) * g], strict=True):
            image, last_x = all_images[index], 10 - 6  # the rightmost window's x
            matches = [
                (mirrored, int(y), int(last_x - x if mirrored else x))
                for mirrored, candidate in ((False, image), (True, image[:, ::-1]))
                for y, x in np.argwhere(
                    (np.lib.stride_tricks.sliding_window_view(candidate, view.shape) == view)
                    .all(axis=(-3, -2, -1))
                    .squeeze(-1)
                )
            ]
            assert len(matches) == 1, (k, index, matches)  # noise: no window repeats
            found.append(matches[0])
    assert {m for m, _, _ in found} == {False, True}
    assert len({(y, x) for _, y, x in found}) > 1


def test_resume_at_any_step_yields_the_tail(source):
    full = train(source, 14)  # crosses two epoch boundaries (6 steps per epoch)
    for start in (1, 5, 6, 11):
        assert_batches_equal(train(source, 14 - start, start_step=start), full[start:])


@pytest.mark.parametrize("count", [2, 3])
def test_global_batch_is_the_same_at_any_process_count(source, count):
    single = train(source, 7)
    shares = [train(source, 7, process_index=p, process_count=count) for p in range(count)]
    for step, batch in enumerate(single):
        for key in ("image", "label"):
            parts = [share[step][key] for share in shares]
            assert all(len(part) == 6 // count for part in parts)
            np.testing.assert_array_equal(np.concatenate(parts), batch[key])


def test_seed_changes_order_and_augmentation(source):
    a, b = train(source, 1, seed=0)[0], train(source, 1, seed=1)[0]
    assert not np.array_equal(a["image"], b["image"])


def test_process_defaults_come_from_jax(source):
    defaults = take(data.train_batches(source, "train", AUGMENT, 6, seed=0), 2)
    assert_batches_equal(defaults, train(source, 2))


def test_batch_must_divide_among_processes(source):
    with pytest.raises(ValueError, match=r"5.*2"):
        data.train_batches(source, "train", AUGMENT, 5, seed=0, process_index=0, process_count=2)


@pytest.mark.parametrize("count", [1, 3])
def test_eval_visits_every_example_once(source, all_images, count):
    g = 6
    shares = [
        data.eval_batches(source, "train", IDENTITY, g, process_index=p, process_count=count)
        for p in range(count)
    ]
    assert all(len(share) == -(-N // g) for share in shares)
    per_process = [list(share) for share in shares]
    assert all(
        len(batches) == len(share) for batches, share in zip(per_process, shares, strict=True)
    )
    images, masks = [], []
    for step in range(len(shares[0])):  # global batch = the process shares side by side
        parts = [batches[step] for batches in per_process]
        assert {part["image"].shape for part in parts} == {(g // count, 10, 10, 3)}
        images.append(np.concatenate([part["image"] for part in parts]))
        masks.append(np.concatenate([part["mask"] for part in parts]))
    images, masks = np.concatenate(images), np.concatenate(masks)
    np.testing.assert_array_equal(masks, np.arange(len(masks)) < N)
    np.testing.assert_array_equal(images[:N], all_images)
    assert_batches_equal(list(shares[0]), per_process[0])  # re-iterable, same result


@pytest.mark.parametrize(("start_step", "count"), [(0, 1), (5, 1), (4, 2)])
def test_arrays_batch_like_the_images_they_stand_for(source, all_images, start_step, count):
    """An ArraySource with no preprocessing (cached features) skips tf.data; its batches are
    still those of the images, at any resume step and process share."""
    labels = next(iter(data.eval_batches(source, "train", IDENTITY, N, process_count=1)))["label"]
    arrays = data.ArraySource({"train": (all_images, labels)}, source.class_names)
    for p in range(count):
        share = {"start_step": start_step, "process_index": p, "process_count": count}
        from_arrays = train(arrays, 8, pp="", **share)
        assert_batches_equal(from_arrays, train(source, 8, pp=IDENTITY, **share))
        assert {b["image"].dtype for b in from_arrays} == {np.dtype(np.float32)}


@pytest.mark.parametrize(("start", "stop"), [(0, 13), (5, 9), (6, 7)])
def test_global_batch_indices_are_the_batches_of_the_steps(source, all_images, start, stop):
    """The index form of the order (for features already on the devices): steps `start` to
    `stop` of 6 a batch, across the epoch boundaries at 6 and 12, give the images' batches."""
    indices = data.global_batch_indices(N, 6, 3, start, stop)
    assert indices.shape == (stop - start, 6)
    batches = train(source, stop - start, pp=IDENTITY, seed=3, start_step=start)
    for row, batch in zip(indices, batches, strict=True):
        np.testing.assert_array_equal(all_images[row], batch["image"])
