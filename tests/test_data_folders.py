"""Folder readers on tiny datasets written here: VOC xml, COCO json, PNG masks, label lists; the
batches they give, and each kind of bad annotation handled as detectron2 / TFDS handle it."""

import json
import re
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from jtransfer import data

RNG = np.random.default_rng(0)
H, W = 20, 30  # every image here: 20 rows, 30 columns
DET_PP = "decode|value_range(0, 1)|pad_boxes(4)"


def config(root, fmt: str, train: str = "train", eval_split: str = "val", **fields):
    return ml_collections.ConfigDict(
        {"name": str(root), "format": fmt, "train_split": train, "eval_split": eval_split, **fields}
    )


def write_image(path: Path, size=(H, W), fmt="PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, fmt)


def voc_xml(objects, size=(H, W)) -> str:
    """objects: (name, xmin, ymin, xmax, ymax) in pixels, as VOC writes them."""
    body = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, x0, y0, x1, y1 in objects
    )
    return (
        f"<annotation><size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth>"
        f"</size>{body}</annotation>"
    )


def batches(source, split, pp, batch_size=4) -> dict[str, np.ndarray]:
    """Every example of `split` in order, one array per feature (padding removed)."""
    out = list(data.eval_batches(source, split, pp, batch_size, process_index=0, process_count=1))
    real = np.concatenate([b["mask"] for b in out]) > 0
    return {k: np.concatenate([b[k] for b in out])[real] for k in out[0]}


# --- VOC --------------------------------------------------------------------------------------


@pytest.fixture
def voc(tmp_path) -> Path:
    """train lists a, b, d; val lists c. a: a cat, a dog reaching past the right edge and a
    zero-area dog; b: no objects; d: no xml; c: a dog."""
    for stem in "abcd":
        write_image(tmp_path / "JPEGImages" / f"{stem}.png")
    xmls = {
        "a": [("cat", 3, 2, 15, 12), ("dog", 20, 5, 40, 25), ("dog", 5, 5, 5, 9)],
        "b": [],
        "c": [("dog", 0, 0, 30, 10)],
    }
    (tmp_path / "Annotations").mkdir()
    for stem, objects in xmls.items():
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(voc_xml(objects))
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("a\nb\nd\n")
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("c\n")
    return tmp_path


def test_voc_boxes_are_normalised_clipped_and_filtered_with_counts(voc):
    with pytest.warns(UserWarning) as caught:
        source = data.build_source(config(voc, "voc"))
    notes = " | ".join(str(w.message) for w in caught)
    for expected in (
        "1 of 3 listed images have no xml",  # d: unannotated, left out
        "1 boxes reaching outside their image clipped to it",
        "1 boxes of zero area dropped (first in " + str(voc / "Annotations" / "a.xml"),
        "1 images without objects left out of training",  # b
    ):
        assert expected in notes
    assert source.class_names == ["cat", "dog"]
    assert source.features == {"image", "boxes", "classes"}
    assert (source.num_examples("train"), source.num_examples("val")) == (1, 1)

    train = batches(source, "train", DET_PP)
    assert train["image"].shape == (1, H, W, 3) and train["boxes"].dtype == np.float32
    np.testing.assert_allclose(
        train["boxes"][0],
        [[2 / 20, 3 / 30, 12 / 20, 15 / 30], [5 / 20, 20 / 30, 1, 1], [0] * 4, [0] * 4],
        atol=1e-7,
    )
    np.testing.assert_array_equal(train["classes"], [[0, 1, -1, -1]])
    image = np.asarray(Image.open(voc / "JPEGImages" / "a.png"), np.float32) / 255
    np.testing.assert_allclose(train["image"][0], image, atol=1e-6)


def test_voc_image_without_objects_stays_in_evaluation_splits(voc):
    (voc / "ImageSets" / "Main" / "val.txt").write_text("c\nb\n")
    with pytest.warns(UserWarning):
        source = data.build_source(config(voc, "voc"))
    val = batches(source, "val", DET_PP)
    np.testing.assert_array_equal(val["classes"], [[1, -1, -1, -1], [-1, -1, -1, -1]])


def test_voc_class_absent_from_the_label_map_is_an_error_naming_the_file(voc):
    (voc / "Annotations" / "c.xml").write_text(voc_xml([("bird", 0, 0, 5, 5)]))
    with pytest.warns(UserWarning), pytest.raises(data.DataError) as error:
        data.build_source(config(voc, "voc"))
    message = str(error.value)
    assert "c.xml" in message and "'bird'" in message and "['cat', 'dog']" in message
    assert "\n" not in message


def test_voc_class_map_merges_and_drops(voc):
    with pytest.warns(UserWarning) as caught:
        source = data.build_source(config(voc, "voc", class_map={"cat": None, "dog": "pet"}))
    assert any("1 objects of classes data.class_map drops" in str(w.message) for w in caught)
    assert source.class_names == ["pet"]
    np.testing.assert_array_equal(batches(source, "train", DET_PP)["classes"], [[0, -1, -1, -1]])


def test_voc_xml_that_does_not_parse_is_an_error_naming_it(voc):
    (voc / "Annotations" / "c.xml").write_text("<annotation><size>")
    with pytest.warns(UserWarning), pytest.raises(data.DataError, match=r"c\.xml does not parse"):
        data.build_source(config(voc, "voc"))


def test_boxes_without_pad_boxes_name_the_op_to_add(voc):
    with pytest.warns(UserWarning):
        source = data.build_source(config(voc, "voc"))
    with pytest.raises(data.DataError, match=r"end the pp .* with pad_boxes\(M\)"):
        data.eval_batches(source, "val", "decode", 2, process_index=0, process_count=1)


def test_split_slices_and_sums_and_unknown_splits(voc):
    (voc / "ImageSets" / "Main" / "every.txt").write_text("a\nb\nc\n")
    with pytest.warns(UserWarning):
        source = data.build_source(
            config(voc, "voc", train="every[:2]", eval_split="every[2:]+val")
        )
    assert (source.num_examples("every[:2]"), source.num_examples("every[2:]+val")) == (1, 2)
    with pytest.raises(
        data.DataError, match=r"no split 'tset' .*; its splits: \['every', 'train', 'val'\]"
    ):
        source.num_examples("tset")


def test_empty_split_fails_the_startup_check_naming_the_splits(voc):
    (voc / "ImageSets" / "Main" / "val.txt").write_text("d\n")  # d has no xml
    with pytest.warns(UserWarning):
        source = data.build_source(config(voc, "voc"))
    source.check_split("train")
    with pytest.raises(data.DataError) as error:
        source.check_split("val")
    assert re.search(
        r"split 'val' .* has no examples \(1 of 1 listed images have no xml", str(error.value)
    )
    assert "its splits: ['train', 'val']" in str(error.value)
    with pytest.raises(data.DataError, match="has no examples"):
        data.eval_batches(source, "val", DET_PP, 2, process_index=0, process_count=1)


# --- COCO -------------------------------------------------------------------------------------


@pytest.fixture
def coco(tmp_path) -> Path:
    """train: x (a cat, a crowd dog), y (a dog reaching past the bottom right), z (nothing);
    val: v (a cat). Category ids 1 (cat) and 5 (dog)."""
    splits = {  # split: {image: [(category id, [x, y, width, height], iscrowd)]}
        "train": {
            "x": [(1, [3, 2, 12, 10], 0), (5, [0, 0, 30, 20], 1)],
            "y": [(5, [25, 15, 10, 10], 0)],
            "z": [],
        },
        "val": {"v": [(1, [0, 0, 6, 4], 0)]},
    }
    for split, images in splits.items():
        anns, infos = [], []
        for i, (stem, objects) in enumerate(images.items()):
            write_image(tmp_path / split / f"{stem}.png")
            infos.append({"id": 10 - i, "file_name": f"{stem}.png", "height": H, "width": W})
            for category, bbox, crowd in objects:
                anns.append(
                    {"id": len(anns), "image_id": 10 - i, "category_id": category,
                     "bbox": bbox, "iscrowd": crowd, "area": bbox[2] * bbox[3]}
                )  # fmt: skip
        coco = {
            "images": infos,
            "annotations": anns,
            "categories": [{"id": 5, "name": "dog"}, {"id": 1, "name": "cat"}],
        }
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return tmp_path


def test_coco_boxes_crowd_and_empty_images(coco):
    with pytest.warns(UserWarning) as caught:
        source = data.build_source(config(coco, "coco"))
    notes = " | ".join(str(w.message) for w in caught)
    assert "1 crowd annotations (iscrowd=1) left out" in notes
    assert "1 boxes reaching outside their image clipped" in notes
    assert "1 images without objects left out of training" in notes  # z
    assert source.class_names == ["cat", "dog"]  # category id order
    # Images in id order: z (8), y (9), x (10); z left out of training.
    train = batches(source, "train", DET_PP)
    np.testing.assert_allclose(
        train["boxes"][:, :1],
        [[[15 / 20, 25 / 30, 1, 1]], [[2 / 20, 3 / 30, 12 / 20, 15 / 30]]],
        atol=1e-7,
    )
    np.testing.assert_array_equal(train["classes"], [[1, -1, -1, -1], [0, -1, -1, -1]])
    image = np.asarray(Image.open(coco / "train" / "y.png"), np.float32) / 255
    np.testing.assert_allclose(train["image"][0], image, atol=1e-6)


def test_coco_json_errors_name_the_file(coco):
    path = coco / "annotations" / "instances_val.json"
    bad = json.loads(path.read_text())
    bad["annotations"][0]["category_id"] = 7
    path.write_text(json.dumps(bad))
    with (
        pytest.warns(UserWarning),
        pytest.raises(
            data.DataError, match=r"instances_val\.json annotation 0: category_id 7 is not among"
        ),
    ):
        data.build_source(config(coco, "coco"))
    path.write_text('{"images": [')
    with (
        pytest.warns(UserWarning),
        pytest.raises(data.DataError, match=r"instances_val\.json does not parse as JSON"),
    ):
        data.build_source(config(coco, "coco"))


# --- Masks ------------------------------------------------------------------------------------


def trimap() -> np.ndarray:
    """A pets-style trimap: 1 pet, 2 background, 3 boundary."""
    mask = np.full((H, W), 2, np.uint8)
    mask[5:15, 8:22] = 3
    mask[6:14, 9:21] = 1
    return mask


PETS_LIKE = {
    "images": "images",
    "masks": "trimaps",
    "split_files": "{split}.txt",
    "classes": ["background", "pet"],
    "mask_values": {1: 1, 2: 0, 3: 255},
}


@pytest.fixture
def masks(tmp_path) -> Path:
    for stem in ("p", "q", "r"):
        write_image(tmp_path / "images" / f"{stem}.png")
    (tmp_path / "trimaps").mkdir()
    for stem in ("p", "q"):
        Image.fromarray(trimap()).save(tmp_path / "trimaps" / f"{stem}.png")
    (tmp_path / "train.txt").write_text("p 1\nr 1\n")  # r has no mask
    (tmp_path / "val.txt").write_text("q 1\n")
    return tmp_path


def test_masks_map_to_class_ids_and_ignore(masks):
    with pytest.warns(UserWarning, match="1 of 2 images have no mask .* left out"):
        source = data.build_source(config(masks, "mask_folder", **PETS_LIKE))
    assert source.features == {"image", "segmentation"} and source.class_names == [
        "background",
        "pet",
    ]
    val = batches(source, "val", "decode|value_range(0, 1)")
    expected = np.choose(trimap() - 1, [1, 0, 255])  # 1 -> 1, 2 -> 0, 3 -> 255
    assert val["segmentation"].dtype == np.int32 and val["segmentation"].shape == (1, H, W)
    np.testing.assert_array_equal(val["segmentation"][0], expected)
    # Padding added by a crop is ignored too.
    padded = batches(source, "val", "decode|resize_pad(40)|value_range(0, 1)")["segmentation"]
    assert (padded[0, 27:] == 255).all() and set(np.unique(padded[0, :26])) == {0, 1, 255}


def test_palette_masks_read_as_indices(masks):
    palette = Image.fromarray(trimap(), "P")
    palette.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * 756)
    palette.save(masks / "trimaps" / "q.png")
    with pytest.warns(UserWarning):
        source = data.build_source(config(masks, "mask_folder", **PETS_LIKE))
    val = batches(source, "val", "decode")
    np.testing.assert_array_equal(val["segmentation"][0], np.choose(trimap() - 1, [1, 0, 255]))


def test_mask_of_another_size_is_an_error_naming_it(masks):
    Image.fromarray(trimap()[:, :-1]).save(masks / "trimaps" / "q.png")
    with pytest.warns(UserWarning), pytest.raises(data.DataError) as error:
        data.build_source(config(masks, "mask_folder", **PETS_LIKE))
    assert re.search(r"q\.png is 20x29 \(HxW\) but its image .*q\.png is 20x30", str(error.value))


def test_colour_masks_and_missing_classes_are_refused(masks):
    Image.fromarray(np.stack([trimap()] * 3, -1)).save(masks / "trimaps" / "q.png")
    with pytest.warns(UserWarning), pytest.raises(data.DataError, match=r"q\.png is a RGB image"):
        data.build_source(config(masks, "mask_folder", **PETS_LIKE))
    with pytest.raises(data.DataError, match="set data.classes"):
        data.build_source(config(masks, "mask_folder", **{**PETS_LIKE, "classes": None}))


def test_mask_value_outside_the_map_fails_naming_the_mask(masks):
    Image.fromarray(trimap() + 1).save(masks / "trimaps" / "q.png")  # 4: not in the map
    with pytest.warns(UserWarning):
        source = data.build_source(config(masks, "mask_folder", **PETS_LIKE))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"outside data.mask_values(.|\n)*q\.png"
    ):
        batches(source, "val", "decode")


# --- Label lists ------------------------------------------------------------------------------


@pytest.fixture
def lists(tmp_path) -> Path:
    for stem in ("e", "f", "g", "h"):
        write_image(tmp_path / "images" / f"{stem}.png")
    (tmp_path / "train.txt").write_text("# name class\ne 1\nf 2\ng 10\n")
    (tmp_path / "val.txt").write_text("h 2\n")
    return tmp_path


def test_image_list_labels_from_the_class_column(lists):
    source = data.build_source(config(lists, "image_list"))
    assert source.class_names == ["1", "2", "10"]  # numeric order
    assert source.features == {"image", "label"}
    np.testing.assert_array_equal(batches(source, "train", "decode")["label"], [0, 1, 2])
    renamed = data.build_source(
        config(lists, "image_list", class_map={"1": "cat", "2": "dog", "10": "dog"})
    )
    assert renamed.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(batches(renamed, "train", "decode")["label"], [0, 1, 1])


def test_image_list_refuses_one_class_and_classes_without_training_images(lists):
    with pytest.raises(data.DataError, match=r"1 class\(es\) \['pet'\]; a classifier needs"):
        data.build_source(
            config(lists, "image_list", class_map={"1": "pet", "2": "pet", "10": "pet"})
        )
    with pytest.raises(data.DataError, match=r"classes \['bird'\] have no training images"):
        data.build_source(config(lists, "image_list", classes=["1", "2", "10", "bird"]))


def test_a_layout_that_is_not_there_is_named(tmp_path):
    with pytest.raises(data.DataError, match=r"has no split 'train' \(no .*ImageSets/Main/train"):
        data.build_source(config(tmp_path, "voc"))
    with pytest.raises(data.DataError, match=r"unknown data.format 'yolo'; valid: \['auto'"):
        data.build_source(config(tmp_path, "yolo"))
    with pytest.raises(data.DataError, match="set data.format to one of"):
        data.build_source(config(tmp_path, "auto"))
    with pytest.raises(data.DataError, match=r"'coco' does not read data.masks, data.split_files"):
        data.build_source(config(tmp_path, "coco", masks="m", split_files="{split}.txt"))


def test_training_batches_of_masks_and_boxes_have_static_shapes(voc, masks):
    (voc / "ImageSets" / "Main" / "every.txt").write_text("a\nc\n")
    with pytest.warns(UserWarning):
        boxes = data.build_source(config(voc, "voc", train="every", eval_split=""))
        seg = data.build_source(config(masks, "mask_folder", eval_split="", **PETS_LIKE))
    pp = "decode|random_scale_crop(16)|flip_lr|value_range(0, 1)|pad_boxes(4)"
    kwargs = {"seed": 1, "process_index": 0, "process_count": 1}
    first, again = (next(data.train_batches(boxes, "every", pp, 2, **kwargs)) for _ in range(2))
    assert first.keys() == {"image", "boxes", "classes"}
    assert first["boxes"].shape == (2, 4, 4) and first["classes"].shape == (2, 4)
    assert first["classes"].dtype == np.int32 and 0 <= first["boxes"].min() <= 1
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    batch = next(data.train_batches(seg, "train", pp, 1, **kwargs))
    assert batch["segmentation"].shape == (1, 16, 16) and batch["segmentation"].dtype == np.int32
    assert set(np.unique(batch["segmentation"])) <= {0, 1, 255}
