"""Pictures of predictions for `python -m jtransfer.predict --out=DIR`: a label, a mask overlay,
boxes with their class and score, drawn with PIL on the image the model saw.

Colours come from one fixed palette indexed by class, so a class has the same colour in every
picture of a run. Class 0 of a segmentation is left uncoloured: it is the background in the
usual label maps (VOC, ADE20K's 'other', the pets' trimaps as jtransfer maps them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Well-separated colours (the first ten of matplotlib's tab10), cycled for more classes.
PALETTE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ],
    np.uint8,
)
MASK_ALPHA = 0.5


def colour(index: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in PALETTE[index % len(PALETTE)])


def label(image: np.ndarray, text: str) -> Image.Image:
    """`image` (H, W, 3) uint8 with `text` on a dark band at the top."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    left, top, right, bottom = draw.textbbox((2, 2), text)
    draw.rectangle((0, 0, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text((2, 2), text, fill=(255, 255, 255))
    return picture


def overlay_mask(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    """`image` (H, W, 3) uint8 with each pixel of class c > 0 in `mask` (H, W) blended with
    class c's colour."""
    colours = PALETTE[mask % len(PALETTE)].astype(np.float32)
    blended = (1 - MASK_ALPHA) * image.astype(np.float32) + MASK_ALPHA * colours
    out = np.where((mask > 0)[..., None], blended, image.astype(np.float32))
    return Image.fromarray(np.round(out).astype(np.uint8))


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
) -> Image.Image:
    """`image` (H, W, 3) uint8 with each box ([ymin, xmin, ymax, xmax] normalised to the image)
    outlined in its class's colour and labelled 'class 0.87'."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    height, width = image.shape[:2]
    for box, cls, score in zip(boxes, classes, scores, strict=True):
        y0, x0, y1, x1 = (float(v) for v in box * np.array([height, width, height, width]))
        draw.rectangle((x0, y0, x1, y1), outline=colour(int(cls)), width=2)
        text = f"{class_names[int(cls)]} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((x0 + 2, y0 + 1), text)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour(int(cls)))
        draw.text((x0 + 2, y0 + 1), text, fill=(255, 255, 255))
    return picture
