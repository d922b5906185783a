"""Fewer labels: k shots or p percent of each class, drawn alike on every host, for an image
folder and a TFDS dataset; the subset is a view whose examples are the selected ones."""

import ml_collections
import numpy as np
import pytest
from images import dark_and_light
from PIL import Image

from jtransfer import base_config, data
from jtransfer.data import sampling

PP = "decode|value_range(0, 255)"


def data_config(name, **fields) -> ml_collections.ConfigDict:
    c = base_config.get_config().data
    c.name = str(name)
    for key, value in fields.items():
        c[key] = value
    return c


def images_and_labels(source, split):
    batches = list(data.eval_batches(source, split, PP, 16, process_index=0, process_count=1))
    keep = np.concatenate([b["mask"] for b in batches]) > 0
    images = np.concatenate([b["image"] for b in batches])[keep]
    return images, np.concatenate([b["label"] for b in batches])[keep]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return dark_and_light(tmp_path_factory.mktemp("images"))  # 8 train, 5 val per class


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> ml_collections.ConfigDict:
    return data_config("digits", data_dir=str(tmp_path_factory.mktemp("tfds")))


def test_per_class_draw_is_seeded_nested_and_balanced():
    labels = np.array([0] * 10 + [1] * 4 + [2] * 7)
    names = ["a", "b", "c"]
    three = sampling.per_class_indices(labels, names, shots=3, seed=5)
    assert np.bincount(labels[three]).tolist() == [3, 3, 3]
    assert list(three) == sorted(three)
    one = sampling.per_class_indices(labels, names, shots=1, seed=5)
    assert set(one) <= set(three)  # nested: the 1-shot examples are among the 3 shots
    # Class c's order is default_rng([seed, c]): its draw does not depend on the other classes.
    assert set(three[labels[three] == 1]) == {
        10 + i for i in np.random.default_rng([5, 1]).permutation(4)[:3]
    }
    assert list(sampling.per_class_indices(labels, names, shots=3, seed=5)) == list(three)
    assert list(sampling.per_class_indices(labels, names, shots=3, seed=6)) != list(three)
    # Percent: rounded per class, at least one: 10 % of (10, 4, 7) -> (1, 1, 1); 50 % -> 5, 2, 4.
    half = sampling.per_class_indices(labels, names, percent=50, seed=0)
    assert np.bincount(labels[half]).tolist() == [5, 2, 4]
    tenth = sampling.per_class_indices(labels, names, percent=10, seed=0)
    assert np.bincount(labels[tenth]).tolist() == [1, 1, 1]
    assert len(sampling.per_class_indices(labels, names, percent=100, seed=0)) == 21


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"percent_per_class": 0.0}, r"percent_per_class must be in \(0, 100\].*got 0.0"),
        ({"percent_per_class": 150}, r"percent_per_class must be in \(0, 100\].*got 150"),
        ({"shots_per_class": -1}, r"shots_per_class must be a whole number >= 0.*got -1"),
        ({"shots_per_class": 2, "percent_per_class": 50.0}, "not both"),
        (
            {"shots_per_class": 9},
            r"shots_per_class=9, but split 'train' of image folder .* "
            r"class 'dark' \(8\), 'light' \(8\); at most 8 shots per class",
        ),
    ],
)
def test_bad_subsets_are_one_line_naming_the_value(folder, fields, message):
    with pytest.raises(data.DataError, match=message) as error:
        data.build_source(data_config(folder, eval_split="val", **fields))
    assert "\n" not in str(error.value)


def test_an_image_folder_subset_reads_the_selected_files(folder):
    source = data.build_source(
        data_config(folder, eval_split="val", shots_per_class=3, subset_seed=1)
    )
    assert (source.num_examples("train"), source.num_examples("val")) == (6, 10)
    assert "3 per class of split 'train'" in source.describe()
    files = [f"{folder}/train/{c}/{i}.png" for c in ("dark", "light") for i in range(8)]
    chosen = sampling.per_class_indices(np.repeat([0, 1], 8), ["dark", "light"], shots=3, seed=1)
    images, labels = images_and_labels(source, "train")
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    expected = [np.asarray(Image.open(files[i]), np.float32) for i in chosen]
    np.testing.assert_array_equal(images, np.stack(expected))
    _, val_labels = images_and_labels(source, "val")
    assert val_labels.tolist() == [0] * 5 + [1] * 5  # the evaluation split is whole


def test_a_tfds_subset_is_those_examples_of_the_whole_split(digits):
    whole = data.build_source(digits)
    full_images, full_labels = images_and_labels(whole, "train")
    for fields, counts in (
        ({"shots_per_class": 5}, [5] * 10),
        ({"percent_per_class": 10.0}, [round(n / 10) for n in np.bincount(full_labels)]),
    ):
        digits_cut = data_config("digits", data_dir=digits.data_dir, subset_seed=3, **fields)
        source = data.build_source(digits_cut)
        images, labels = images_and_labels(source, "train")
        assert np.bincount(labels).tolist() == counts
        np.testing.assert_array_equal(images, full_images[source.indices])
        np.testing.assert_array_equal(labels, full_labels[source.indices])
    assert source.num_examples("test") == 360


def test_every_host_draws_the_same_subset_and_reads_its_share(digits):
    """Two processes build the source independently; each reads its half of every global batch
    of the one subset, which together are the global batches of a single process."""
    cut = data_config("digits", data_dir=digits.data_dir, shots_per_class=4, subset_seed=7)
    hosts = [data.build_source(cut) for _ in range(2)]
    np.testing.assert_array_equal(hosts[0].indices, hosts[1].indices)

    def first_batches(source, p, count):
        batches = data.train_batches(
            source, "train", PP, 8, seed=0, process_index=p, process_count=count
        )
        return [next(batches)["label"] for _ in range(5)]  # one epoch of the 40 examples

    single = first_batches(hosts[0], 0, 1)
    halves = zip(first_batches(hosts[0], 0, 2), first_batches(hosts[1], 1, 2), strict=True)
    for whole, (a, b) in zip(single, halves, strict=True):
        np.testing.assert_array_equal(whole, np.concatenate([a, b]))
