"""TFDS sources with any features, on `tfds.testing.mock_data`: oxford_iiit_pet's segmentation
masks, voc/2012 and coco/2017 objects, read by index (array_record) or from memory (tfrecord);
and the one-line errors for a name that is neither a directory nor a TFDS dataset."""

import contextlib
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jtransfer import data

RNG = np.random.default_rng(0)
FORMATS = ["array_record", "tfrecord"]


def config(name, **fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"name": name, "train_split": "train", "eval_split": "validation", **fields}
    )


@contextlib.contextmanager
def mocked(name: str, examples: dict[str, list[dict]], file_format: str, tmp_path):
    """TFDS `name` with exactly `examples` per split, prepared as `file_format`: the metadata
    is written for real, records come from `mock_data`'s two hooks (serialized with the
    dataset's own features, so the source parses them like prepared files)."""
    builder = tfds.builder(name, data_dir=str(tmp_path))
    info = builder.info
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=builder.name, filetype_suffix=file_format
    )
    info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(
                    name=split,
                    shard_lengths=[len(rows)],
                    num_bytes=0,
                    filename_template=template.replace(split=split),
                )
                for split, rows in examples.items()
            ]
        )
    )
    info.set_file_format(file_format, override=True)
    os.makedirs(builder.data_dir)
    info.write_to_directory(builder.data_dir)
    records = {
        s: [info.features.serialize_example(e) for e in rows] for s, rows in examples.items()
    }

    def as_data_source(self, split, decoders=None, deserialize_method=None, **kwargs):
        assert deserialize_method == tfds.decode.DeserializeMethod.RAW_BYTES
        return records[str(split)]

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        features = self.info.features
        if isinstance(decoders, tfds.decode.PartialDecoding):
            features, decoders = decoders.extract_features(features), decoders.decoders
        return tf.data.Dataset.from_tensor_slices(records[str(split)]).map(
            lambda r: features.deserialize_example(r, decoders=decoders)
        )

    with tfds.testing.mock_data(
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=str(tmp_path),
        as_data_source_fn=as_data_source,
        as_dataset_fn=as_dataset,
    ):
        yield


def everything(source, split: str, pp: str) -> dict[str, np.ndarray]:
    out = list(data.eval_batches(source, split, pp, 2, process_index=0, process_count=1))
    real = np.concatenate([b["mask"] for b in out]) > 0
    return {k: np.concatenate([b[k] for b in out])[real] for k in out[0]}


def image(h=12, w=16) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- oxford_iiit_pet: segmentation_mask -------------------------------------------------------


def pet(label: int, trimap: np.ndarray) -> dict:
    return {
        "file_name": f"pet_{label}.jpg",
        "head_bbox": tfds.features.BBox(0.1, 0.1, 0.5, 0.5),
        "image": image(*trimap.shape),
        "label": label,
        "segmentation_mask": trimap[..., None],  # TFDS: 0 pet, 1 background, 2 boundary
        "species": 0,
    }


TRIMAP = RNG.integers(0, 3, (12, 16)).astype(np.uint8)
PETS = {
    "train": [pet(3, TRIMAP), pet(30, TRIMAP[::-1])],
    "validation": [pet(36, TRIMAP[:, ::-1])],
}


@pytest.mark.parametrize("file_format", FORMATS)
def test_pets_segmentation_masks_mapped_to_pet_background_ignore(tmp_path, file_format):
    with mocked("oxford_iiit_pet", PETS, file_format, tmp_path):
        source = data.build_source(
            config(
                "oxford_iiit_pet",
                tfds_keys={"segmentation": "segmentation_mask"},
                classes=["background", "pet"],
                mask_values={0: 1, 1: 0, 2: 255},
            )
        )
        assert source.features == {"image", "segmentation"}
        assert source.class_names == ["background", "pet"]
        train = everything(source, "train", "decode|value_range(0, 255)")
    expected = np.choose(TRIMAP, [1, 0, 255])
    np.testing.assert_array_equal(train["segmentation"], [expected, expected[::-1]])
    assert train["image"].shape == (2, 12, 16, 3)  # JPEG-encoded by TFDS: lossy


@pytest.mark.parametrize("file_format", FORMATS)
def test_pets_by_default_is_breed_classification_as_before(tmp_path, file_format):
    with mocked("oxford_iiit_pet", PETS, file_format, tmp_path):
        source = data.build_source(config("oxford_iiit_pet"))
        assert source.features == {"image", "label"} and source.num_classes == 37
        assert source.class_names[:2] == ["Abyssinian", "american_bulldog"]
        np.testing.assert_array_equal(everything(source, "validation", "decode")["label"], [36])
        with pytest.raises(data.DataError, match="set data.classes"):
            data.build_source(
                config("oxford_iiit_pet", tfds_keys={"segmentation": "segmentation_mask"})
            )
        with pytest.raises(data.DataError, match=r"no 1-channel Image feature 'image' for 'seg"):
            data.build_source(
                config("oxford_iiit_pet", tfds_keys={"segmentation": "image"}, classes=["a", "b"])
            )


# --- voc/2012 and coco/2017: objects/bbox, objects/label ---------------------------------------


def voc_example(boxes, labels) -> dict:
    n = len(labels)
    return {
        "image": image(),
        "image/filename": "x.jpg",
        "labels": sorted(set(labels)),
        "labels_no_difficult": sorted(set(labels)),
        "objects": {
            "bbox": [tfds.features.BBox(*b) for b in boxes],
            "is_difficult": [False] * n,
            "is_truncated": [False] * n,
            "label": labels,
            "pose": [0] * n,
        },
    }


@pytest.mark.parametrize("file_format", FORMATS)
def test_voc2012_boxes_and_classes(tmp_path, file_format):
    boxes = [(0.1, 0.2, 0.5, 0.6), (0.3, 0.3, 0.3, 0.9), (0.0, 0.0, 1.0, 1.0)]  # 2nd: empty
    examples = {"train": [voc_example(boxes, [14, 2, 7])], "validation": [voc_example([], [])]}
    with mocked("voc/2012", examples, file_format, tmp_path):
        source = data.build_source(config("voc/2012"))
        assert source.features == {"image", "boxes", "classes"}
        assert source.class_names[14] == "person" and source.num_classes == 20
        train = everything(source, "train", "decode|pad_boxes(4)")
        val = everything(source, "validation", "decode|pad_boxes(4)")
    np.testing.assert_allclose(
        train["boxes"][0], [boxes[0], boxes[2], (0, 0, 0, 0), (0, 0, 0, 0)], atol=1e-7
    )
    np.testing.assert_array_equal(train["classes"], [[14, 7, -1, -1]])
    np.testing.assert_array_equal(val["classes"], [[-1] * 4])  # an image with no objects


def coco_example(boxes, labels, crowd) -> dict:
    return {
        "image": image(),
        "image/filename": "x.jpg",
        "image/id": 1,
        "objects": {
            "area": [1] * len(labels),
            "bbox": [tfds.features.BBox(*b) for b in boxes],
            "id": list(range(len(labels))),
            "is_crowd": crowd,
            "label": labels,
        },
    }


@pytest.mark.parametrize("file_format", FORMATS)
def test_coco2017_drops_crowd_and_applies_the_class_map(tmp_path, file_format):
    boxes = [(0.1, 0.2, 0.5, 0.6), (0.0, 0.0, 1.0, 1.0), (0.2, 0.2, 0.4, 0.4), (0.0, 0.0, 0.5, 0.5)]
    labels = [16, 0, 15, 17]  # dog, person (crowd), cat, horse; unprepared, TFDS names them '0'...
    examples = {"train": [coco_example(boxes, labels, [False, True, False, False])]}
    examples["validation"] = examples["train"]
    with mocked("coco/2017", examples, file_format, tmp_path):
        plain = data.build_source(config("coco/2017"))
        merged = data.build_source(config("coco/2017", class_map={"15": "pet", "16": "pet"}))
        train = everything(plain, "train", "decode|pad_boxes(4)")
        train_merged = everything(merged, "train", "decode|pad_boxes(4)")
    assert plain.num_classes == 80 and plain.class_names[15:18] == ["15", "16", "17"]
    np.testing.assert_allclose(train["boxes"][0, :3], [boxes[0], boxes[2], boxes[3]], atol=1e-7)
    np.testing.assert_array_equal(train["classes"], [[16, 15, 17, -1]])
    assert merged.num_classes == 79 and merged.class_names[15:17] == ["pet", "17"]
    np.testing.assert_array_equal(train_merged["classes"], [[15, 15, 16, -1]])


def test_unknown_split_names_the_splits(tmp_path):
    with mocked("coco/2017", {"train": [], "validation": []}, "array_record", tmp_path):
        source = data.build_source(config("coco/2017"))
        with pytest.raises(data.DataError) as error:
            source.num_examples("validaton")
        assert "no split 'validaton'" in str(error.value)
        assert "its splits: ['train', 'validation']" in str(error.value)
        with pytest.raises(
            data.DataError, match=r"split 'train' of TFDS dataset 'coco/2017' has no examples; its"
        ):
            source.check_split("train")


# --- names that are neither a directory nor a TFDS dataset -----------------------------------


def one_line_error(name: str) -> str:
    with pytest.raises(data.DataError) as error:
        data.build_source(config(name))
    message = str(error.value)
    assert "\n" not in message and error.value.__suppress_context__  # no chained traceback
    return message


def test_misspelt_tfds_name_gets_close_matches():
    message = one_line_error("oxford_iit_pet")
    assert "'oxford_iit_pet' is neither an existing directory nor a TFDS dataset" in message
    assert "close TFDS names: oxford_iiit_pet" in message


def test_missing_path_is_said_to_be_missing_with_its_near_siblings(tmp_path):
    (tmp_path / "hymenoptera").mkdir()
    message = one_line_error(str(tmp_path / "hymenoptra"))
    assert f"the path {tmp_path / 'hymenoptra'} does not exist (in {tmp_path}: hymenoptera)" in (
        message
    )


def test_bad_config_of_a_known_dataset_lists_its_configs():
    message = one_line_error("voc/2099")
    assert "configs of voc: ['2007', '2012']" in message
