"""`digits`: an offline TFDS dataset built from scikit-learn's 8x8 handwritten digits.

Tests and the quickstart need a real dataset that goes through the same TFDS code paths as
ImageNet-scale ones (builder, prepared files, `tfds.data_source`) without a network. scikit-learn
ships 1797 grayscale 8x8 digits (values 0..16) inside the package, so this builder "downloads"
nothing: it reads them, scales to 0..255 uint8 and writes a fixed split.

Splits (stratified by class, `train_test_split(test_size=0.2, random_state=0)`):
train 1437 examples, test 360 examples (35-37 per class).

The default file format is array_record, so `tfds.data_source('digits')` gives random access.
Defining the class registers it with TFDS; importing `jtransfer.data` does that.
"""

from typing import Any

import numpy as np
import tensorflow_datasets as tfds


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's digits as a TFDS dataset: 8x8x1 uint8 images, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, *, file_format: str | None = None, **kwargs: Any):
        super().__init__(file_format=file_format, **kwargs)
        # Default to array_record only for a fresh build: a prepared copy keeps its own format.
        if file_format is None and not self.is_prepared():
            self.info.set_file_format("array_record", override=True)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="scikit-learn's 8x8 handwritten digits, values scaled 0..16 -> 0..255.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
        train, test = train_test_split(
            np.arange(len(images)), test_size=0.2, stratify=digits.target, random_state=0
        )
        return {
            "train": self._generate_examples(images, digits.target, np.sort(train)),
            "test": self._generate_examples(images, digits.target, np.sort(test)),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i])}
