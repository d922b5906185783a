"""The input pipeline: random-access sources, big_vision-style preprocessing, ordered batches.

    src = build_source(config.data)
    for batch in train_batches(src, config.data.train_split, config.pp_train, 512, seed=0):
        ...  # {'image': float32 (b, H, W, 3), 'label': int32 (b,)}, b = 512 // process_count

`sources` reads example i of split s (TFDS, an image folder, VOC / COCO / mask / list folders),
`preprocess` and `geometry` turn pp strings into TF functions (geometric ops move the image,
its mask and its boxes together), `pipeline` decides which examples each process reads at each
step. Importing this package registers the offline `digits` TFDS builder.
"""

from jtransfer.data import (
    digits,  # noqa: F401  (registers the `digits` TFDS builder)
    geometry,  # noqa: F401  (registers the geometric preprocessing ops)
)
from jtransfer.data.base import FEATURES, IGNORE_LABEL, DataError, Source
from jtransfer.data.folders import CocoSource, ImageListSource, MaskFolderSource, VocSource
from jtransfer.data.pipeline import EvalBatches, eval_batches, global_batch_indices, train_batches
from jtransfer.data.preprocess import PREPROCESS_OPS, is_deterministic, parse_pp, register_op
from jtransfer.data.sources import FORMATS, ArraySource, ImageFolderSource, build_source
from jtransfer.data.tfds_source import TfdsSource

__all__ = [
    "FEATURES",
    "FORMATS",
    "IGNORE_LABEL",
    "PREPROCESS_OPS",
    "ArraySource",
    "CocoSource",
    "DataError",
    "EvalBatches",
    "ImageFolderSource",
    "ImageListSource",
    "MaskFolderSource",
    "Source",
    "TfdsSource",
    "VocSource",
    "build_source",
    "eval_batches",
    "global_batch_indices",
    "is_deterministic",
    "parse_pp",
    "register_op",
    "train_batches",
]
