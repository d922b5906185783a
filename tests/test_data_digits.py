"""The offline `digits` TFDS builder and the TFDS source, both file formats, nothing downloaded."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from jtransfer import data

PP = "decode|value_range(0, 255)"


def config(data_dir, name: str = "digits") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"name": name, "data_dir": str(data_dir), "train_split": "train", "eval_split": "test"}
    )


def eval_images_labels(source, split: str = "test", pp: str = PP):
    batches = list(data.eval_batches(source, split, pp, 128, process_index=0, process_count=1))
    masks = np.concatenate([b["mask"] for b in batches]) > 0
    images = np.concatenate([b["image"] for b in batches])[masks]
    return images, np.concatenate([b["label"] for b in batches])[masks]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def source(data_dir) -> data.Source:
    return data.build_source(config(data_dir))  # prepares digits on first use


def test_builds_offline_as_array_record_with_fixed_splits(source, data_dir):
    assert (source.num_examples("train"), source.num_examples("test")) == (1437, 360)
    assert source.num_classes == 10 and source.class_names == [str(i) for i in range(10)]
    assert len(tfds.data_source("digits", split="test", data_dir=str(data_dir))) == 360
    assert source.num_examples("train[:10%]") == 144


def test_images_are_sklearn_digits_as_rgb(source):
    images, labels = eval_images_labels(source, pp="decode|resize(16)|value_range(0, 1)")
    assert images.shape == (360, 16, 16, 3) and set(labels) == set(range(10))

    images, labels = eval_images_labels(source)
    assert images.shape == (360, 8, 8, 3)
    assert np.array_equal(images[..., 0], images[..., 1])
    digits = load_digits()
    by_pixels = {
        np.round(x * 255 / 16).astype(np.uint8).tobytes(): y
        for x, y in zip(digits.images, digits.target, strict=True)
    }
    assert [by_pixels[x[..., 0].astype(np.uint8).tobytes()] for x in images] == list(labels)


def test_tfrecord_copy_is_read_into_memory_with_the_same_examples(source, tmp_path):
    tfds.builder("digits", data_dir=str(tmp_path), file_format="tfrecord").download_and_prepare()
    in_memory = data.build_source(config(tmp_path))
    for a, b in zip(eval_images_labels(in_memory), eval_images_labels(source), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unknown_dataset_name_is_named(tmp_path):
    with pytest.raises(ValueError, match="no_such_dataset"):
        data.build_source(config(tmp_path, name="no_such_dataset"))


def test_each_process_reads_only_its_share(source, monkeypatch):
    """Array_record is read by index: process p of 2 fetches records of its own half of each
    global batch and nothing else (tf.data may read ahead, within the share)."""
    reads: list[list[int]] = []  # one list per pipeline (each calls as_data_source once)
    as_data_source = source._builder.as_data_source

    class Recording:
        def __init__(self, records):
            self._records, self._read = records, []
            reads.append(self._read)

        def __getitem__(self, i: int) -> bytes:
            self._read.append(int(i))
            return self._records[i]

    monkeypatch.setattr(
        source._builder, "as_data_source", lambda *a, **k: Recording(as_data_source(*a, **k))
    )
    order = np.random.default_rng([0, 0]).permutation(1437)  # epoch 0 of seed 0
    batches = order[: 1437 // 8 * 8].reshape(-1, 8)  # global batches of 8
    for p in (0, 1):
        share = data.train_batches(source, "train", PP, 8, seed=0, process_index=p, process_count=2)
        first = [next(share) for _ in range(3)]
        own = batches[:, 4 * p : 4 * p + 4]
        assert set(reads[p]) <= set(own.ravel())
        assert set(own[:3].ravel()) <= set(reads[p])
        assert all(b["image"].shape[0] == 4 for b in first)
