"""The offline datasets load through the generic folder readers, with the numbers their READMEs
give: oxford_pets3 as segmentation (mask folder), head detection (VOC) and 3-breed
classification (label list), and bccd as VOC detection with its ImageSets/Main splits."""

import collections
import xml.etree.ElementTree as ElementTree

import ml_collections
import numpy as np
import pytest
from PIL import Image
from shared_data import shared_data

from jtransfer import data

PETS_COMMON = {"images": "images", "split_files": "annotations/{split}.txt"}
PETS = {
    "segmentation": {
        "format": "mask_folder",
        "masks": "annotations/trimaps",
        "classes": ["background", "pet"],
        "mask_values": {1: 1, 2: 0, 3: 255},  # trimap: 1 pet, 2 background, 3 boundary
    },
    "detection": {
        "format": "voc",
        "annotations": "annotations/xmls",
        "class_map": {"cat": "head", "dog": "head"},
    },
    "classification": {
        "format": "image_list",
        "class_map": {"1": "Abyssinian", "2": "american_bulldog", "6": "Bengal"},
    },
}


def config(root, train="trainval", eval_split="test", **fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"name": str(root), "train_split": train, "eval_split": eval_split, **fields}
    )


def pets(task: str) -> data.Source:
    return data.build_source(config(shared_data("oxford_pets3"), **PETS_COMMON, **PETS[task]))


def examples(source, split: str, pp: str, batch: int = 100):
    for b in data.eval_batches(source, split, pp, batch, process_index=0, process_count=1):
        real = b["mask"] > 0
        yield {k: v[real] for k, v in b.items() if k != "mask"}


def test_pets_segmentation_pet_background_and_ignored_boundary():
    source = pets("segmentation")
    assert source.features == {"image", "segmentation"}
    assert source.class_names == ["background", "pet"]
    # The paper's split: annotations/trainval.txt (300 lines) and test.txt (298).
    assert (source.num_examples("trainval"), source.num_examples("test")) == (300, 298)

    first = next(examples(source, "test", "decode", batch=1))  # Abyssinian_201, full size
    trimap = np.asarray(
        Image.open(shared_data("oxford_pets3") / "annotations" / "trimaps" / "Abyssinian_201.png")
    )
    assert first["image"].shape == (1, *trimap.shape, 3)
    np.testing.assert_array_equal(first["segmentation"][0], np.choose(trimap - 1, [1, 0, 255]))
    values = collections.Counter()
    for batch in examples(source, "test", "decode|resize(32)", batch=50):
        values.update(np.unique(batch["segmentation"]).tolist())
        break
    assert set(values) == {0, 1, 255}


def test_pets_head_detection_on_the_images_that_have_an_xml():
    """Head boxes exist for 296 of the 300 trainval images and for no test image; an image
    without an xml is unannotated, not empty, so it is left out of its split."""
    root = shared_data("oxford_pets3")
    with pytest.warns(UserWarning) as caught:
        source = pets("detection")
    notes = [str(w.message) for w in caught]
    assert any("4 of 300 listed images have no xml" in n for n in notes)
    assert source.class_names == ["head"]
    assert source.features == {"image", "boxes", "classes"}
    assert source.num_examples("trainval") == 296
    with pytest.raises(data.DataError, match=r"split 'test' .* no examples \(298 of 298 listed"):
        source.check_split("test")
    # A held-out split for head detection is a slice of trainval (or a list file of one's own).
    with pytest.warns(UserWarning):
        sliced = data.build_source(
            config(root, "trainval[:80%]", "trainval[80%:]", **PETS_COMMON, **PETS["detection"])
        )
    assert (sliced.num_examples("trainval[:80%]"), sliced.num_examples("trainval[80%:]")) == (
        237,
        59,
    )

    first = next(examples(source, "trainval", "decode|pad_boxes(2)", batch=1))
    xml = ElementTree.parse(root / "annotations" / "xmls" / "Abyssinian_100.xml").getroot()
    h, w = int(xml.findtext("size/height")), int(xml.findtext("size/width"))
    x0, y0, x1, y1 = (
        int(xml.findtext(f"object/bndbox/{c}")) for c in ("xmin", "ymin", "xmax", "ymax")
    )
    np.testing.assert_allclose(first["boxes"][0, 0], [y0 / h, x0 / w, y1 / h, x1 / w], atol=1e-7)
    np.testing.assert_array_equal(first["classes"], [[0, -1]])
    assert first["image"].shape == (1, h, w, 3)


def test_pets_three_breeds_from_the_list_files_class_ids():
    source = pets("classification")
    assert source.class_names == ["Abyssinian", "american_bulldog", "Bengal"]  # ids 1, 2, 6
    counts = {}
    for split in ("trainval", "test"):
        labels = np.concatenate([b["label"] for b in examples(source, split, "decode|resize(8)")])
        counts[split] = np.bincount(labels).tolist()
    # 200 photos per breed; Abyssinian_34 and Abyssinian_82 are in neither list.
    assert counts == {"trainval": [100, 100, 100], "test": [98, 100, 100]}


def test_bccd_through_the_voc_reader_with_its_splits():
    root = shared_data("bccd")
    with pytest.warns(UserWarning) as caught:
        source = data.build_source(config(root, format="voc"))
        sizes = [source.num_examples(s) for s in ("train", "val", "trainval", "test")]
    assert source.class_names == ["Platelets", "RBC", "WBC"]
    assert sizes == [205, 87, 292, 72]
    # Two RBC boxes of zero area (BloodImage_00338 and _00343) are dropped and counted.
    notes = [str(w.message) for w in caught]
    assert any("split 'trainval': 2 boxes of zero area dropped" in n for n in notes)
    boxes = collections.Counter()
    for split in ("trainval", "test"):
        for batch in examples(source, split, "decode|resize(16)|pad_boxes(32)", batch=73):
            boxes.update(batch["classes"][batch["classes"] >= 0].tolist())
    # The README's boxes: RBC 4155 (two of them empty), WBC 372, Platelets 361.
    assert [boxes[i] for i in range(3)] == [361, 4155 - 2, 372]
