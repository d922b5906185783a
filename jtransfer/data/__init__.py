"""The input pipeline: random-access sources, big_vision-style preprocessing, ordered batches.

    src = build_source(config.data)
    for batch in train_batches(src, config.data.train_split, config.pp_train, 512, seed=0):
        ...  # {'image': float32 (b, H, W, 3), 'label': int32 (b,)}, b = 512 // process_count

`sources` reads example i of a split (TFDS or an image folder), `preprocess` turns pp strings
into TF functions, `pipeline` decides which examples each process reads at each step. Importing
this package registers the offline `digits` TFDS builder.
"""

from jtransfer.data import digits  # noqa: F401  (registers the `digits` TFDS builder)
from jtransfer.data.pipeline import EvalBatches, eval_batches, train_batches
from jtransfer.data.preprocess import PREPROCESS_OPS, is_deterministic, parse_pp, register_op
from jtransfer.data.sources import ArraySource, ImageFolderSource, Source, TfdsSource, build_source

__all__ = [
    "PREPROCESS_OPS",
    "ArraySource",
    "EvalBatches",
    "ImageFolderSource",
    "Source",
    "TfdsSource",
    "build_source",
    "eval_batches",
    "is_deterministic",
    "parse_pp",
    "register_op",
    "train_batches",
]
