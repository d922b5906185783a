"""File-system helpers shared by the folder readers: image checks, names by stem, split patterns.

Folder datasets name images by stem in their list files and annotations (`Abyssinian_100`,
`BloodImage_00001`), so a directory is listed once into {stem: file}. Config paths may contain
`{split}` (`ImageSets/Main/{split}.txt`, `annotations/instances_{split}.json`); the splits that
exist are found by matching the pattern against the directory, for error messages.
"""

from __future__ import annotations

import glob
import os
import re

from PIL import Image

from jtransfer.data.base import DataError

# Formats tf.io.decode_image reads.
TF_IMAGE_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP"})


def unreadable_reason(path: str) -> str | None:
    """Why TF could not decode the image at `path`, or None when it can (decodes it fully)."""
    try:
        with Image.open(path) as image:
            if image.format not in TF_IMAGE_FORMATS:
                return f"{image.format} is not a format tf.io.decode_image reads"
            image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, still reading every byte
            image.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return f"{type(e).__name__}: {e}"
    return None


def header(path: str) -> tuple[tuple[int, int], str, str]:
    """((height, width), PIL mode, format) from the file's header alone, nothing decoded."""
    try:
        with Image.open(path) as image:
            return (image.height, image.width), image.mode, image.format
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise DataError(f"{path} is not a readable image: {type(e).__name__}: {e}") from None


def files_by_stem(directory: str) -> dict[str, str]:
    """{file name without extension: path} of the visible files in `directory`."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory} is not a directory")
    out: dict[str, str] = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        stem = os.path.splitext(name)[0]
        if stem in out:
            raise DataError(
                f"{directory} has two files for {stem!r}: {os.path.basename(out[stem])} and "
                f"{name}; keep one"
            )
        out[stem] = path
    return out


def existing_splits(root: str, pattern: str) -> list[str]:
    """The split names for which `root/pattern` ('{split}' in it) exists."""
    path = os.path.join(root, pattern)
    head, _, tail = path.partition("{split}")
    matcher = re.compile(re.escape(head) + "(.+?)" + re.escape(tail) + "$")
    found = (matcher.match(p) for p in glob.glob(glob.escape(head) + "*" + glob.escape(tail)))
    return sorted({m.group(1) for m in found if m and "/" not in m.group(1)})


def read_list(path: str) -> list[list[str]]:
    """The whitespace-separated fields of each line of a list file; '#' lines are comments."""
    with open(path) as f:
        lines = [line.split() for line in f if line.strip() and not line.startswith("#")]
    return lines
