"""Box annotation files, parsed into one record per image: PASCAL VOC xml and COCO json.

Only parsing lives here, so that both formats reach the folder source in one shape
(`Annotation`: the image, the size its boxes refer to, each object's class name and pixel box),
and the rules every detection dataset shares (class maps, clipping, dropping empty boxes) are
written once, in `jtransfer.data.folders`. The conventions follow TFDS's `voc` and `coco`
builders, so that a folder and its TFDS counterpart give the same boxes: VOC pixel coordinates
and COCO `[x, y, width, height]` are divided by the image size the annotation states
(xml `<size>`, json `width`/`height`), with no half-pixel or 1-based shifts; VOC class names
are taken as written (stripped), and COCO images are ordered by id. COCO crowd annotations
(`iscrowd=1`, a region covering many objects) are dropped and counted: the batches have no
place for COCO's ignore regions, and detectron2 and MMDetection train without them too.
Difficult VOC objects are kept, as detectron2 does.

The standard library parses both formats (`xml.etree`, `json`); a file that does not parse is
an error naming it. Images are not opened, except a VOC image whose xml states no size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import xml.etree.ElementTree as ElementTree

import numpy as np

from jtransfer.data.base import DataError
from jtransfer.data.files import header


@dataclasses.dataclass
class Annotation:
    """The objects of one image, as its annotation file states them."""

    image: str  # path of the image file
    size: tuple[int, int]  # (height, width) the boxes refer to
    names: list[str]  # class name of each object
    boxes: np.ndarray  # float64 (k, 4) [ymin, xmin, ymax, xmax] in pixels
    source: str  # the annotation file, for messages


def _text(element: ElementTree.Element, path: str, where: str) -> str:
    found = element.find(path)
    if found is None or found.text is None:
        raise DataError(f"{where}: no <{path}> in {element.tag}; a VOC object needs it")
    return found.text.strip()


def read_voc_xml(path: str, image: str) -> Annotation:
    """The objects of one VOC xml file, whose image is `image`."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as e:
        raise DataError(f"{path} does not parse as XML: {e}") from None
    try:
        size = (int(root.findtext("size/height", "0")), int(root.findtext("size/width", "0")))
    except ValueError:
        raise DataError(f"{path}: <size> must hold integer <height> and <width>") from None
    if min(size) <= 0:  # some labelling tools write 0: the image knows
        size = header(image)[0]
    names, boxes = [], []
    for k, obj in enumerate(root.iter("object")):
        where = f"{path} object {k}"
        names.append(_text(obj, "name", where))
        try:
            xmin, ymin, xmax, ymax = (
                float(_text(obj, f"bndbox/{c}", where)) for c in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            raise DataError(f"{where}: <bndbox> coordinates must be numbers") from None
        boxes.append((ymin, xmin, ymax, xmax))
    return Annotation(image, size, names, np.array(boxes, np.float64).reshape(-1, 4), path)


def read_coco_json(path: str, images_dir: str) -> tuple[list[str], list[Annotation], int]:
    """(category names in id order, one record per image in id order, crowd objects dropped)
    of a COCO instances json whose `file_name`s are relative to `images_dir`."""
    try:
        with open(path) as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} does not parse as JSON: {e}") from None
    if not isinstance(coco, dict) or not {"images", "annotations", "categories"} <= set(coco):
        raise DataError(
            f"{path} is not a COCO instances file: it needs images, annotations and categories"
        )
    try:
        categories = {c["id"]: str(c["name"]) for c in coco["categories"]}
        images = {i["id"]: i for i in coco["images"]}
        records = {
            i: Annotation(
                os.path.join(images_dir, image["file_name"]),
                (int(image["height"]), int(image["width"])),
                [],
                np.zeros((0, 4)),
                path,
            )
            for i, image in sorted(images.items())
        }
    except (KeyError, TypeError) as e:
        raise DataError(f"{path}: a category or image lacks the field {e}") from None
    if len(set(categories.values())) < len(categories):
        raise DataError(f"{path}: category names are not unique: {sorted(categories.values())}")
    boxes: dict[int, list] = {i: [] for i in records}
    crowd = 0
    for k, ann in enumerate(coco["annotations"]):
        where = f"{path} annotation {ann.get('id', k)}"
        if ann.get("category_id") not in categories:
            raise DataError(
                f"{where}: category_id {ann.get('category_id')!r} is not among the categories "
                f"{sorted(categories)}"
            )
        if ann.get("image_id") not in records:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not among the images")
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: bbox must be [x, y, width, height]") from None
        records[ann["image_id"]].names.append(categories[ann["category_id"]])
        boxes[ann["image_id"]].append((y, x, y + h, x + w))
    for i, record in records.items():
        record.boxes = np.array(boxes[i], np.float64).reshape(-1, 4)
    return [categories[c] for c in sorted(categories)], list(records.values()), crowd
