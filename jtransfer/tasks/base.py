"""What a task is to the trainer: a model to build, a loss, predictions, and how to evaluate.

The trainer (`jtransfer.train`) and the phase builder (`jtransfer.phase`) know no task: they
call these methods. A task module holds everything that differs between classification,
segmentation and detection — the head it puts on the backbone, its loss (with the per-example
padding weight and, where it has one, the ignore label), the batch features its data must carry,
the evaluator a run uses by default, and how `predict` shows an output (`describe` as text, `draw`
as a picture) — so adding a task is one new module and one registry entry.

Batches are dicts of arrays: 'image' float32 (B, H, W, 3) and the task's `features`; evaluation
batches also carry 'mask' (B,), 1 for a real example and 0 for the padding of the last batch.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from jtransfer.errors import JTransferError

# `config.compute_dtype` → the models' `dtype` field: the dtype of activations and of the
# parameters' copies inside the forward pass. Parameters, gradients and optimizer state stay
# float32, as do pooled features and the outputs the losses read.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

Batch = dict[str, jax.Array]


class Task(abc.ABC):
    """One kind of prediction over images; built by `tasks.build(config, class_names)`."""

    name: ClassVar[str]
    features: ClassVar[tuple[str, ...]]  # what a batch carries besides 'image'
    default_evaluator: ClassVar[str]  # the evaluator type `config.evals` gets when empty

    def __init__(self, config: ml_collections.ConfigDict, class_names: Sequence[str]):
        self.config = config
        self.class_names = list(class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def model_options(self, norm_eval: str = "") -> dict[str, Any]:
        """The keyword options every model builder takes: `config.model`'s fields, the
        computation dtype, and the BatchNorm layers held in inference mode."""
        options = {k: v for k, v in self.config.model.items() if k != "name"}
        if norm_eval:
            options["norm_eval"] = norm_eval
        dtype = self.config.compute_dtype
        if dtype not in COMPUTE_DTYPES:
            raise JTransferError(f"unknown compute_dtype {dtype!r}; valid: {list(COMPUTE_DTYPES)}")
        if dtype != "float32":
            options["dtype"] = COMPUTE_DTYPES[dtype]
        return options

    @abc.abstractmethod
    def build_model(self, norm_eval: str = "") -> nn.Module:
        """The network: `backbone`, optional `neck`, and the task's `head`; `norm_eval` is a
        regex of BatchNorm layers held in inference mode (the phase's)."""

    @abc.abstractmethod
    def loss(self, outputs: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss to minimise, {name: scalar} shown in the progress log) of a batch.

        A batch with 'mask' counts only its real examples.
        """

    @abc.abstractmethod
    def predict(self, outputs: Any, image_size: tuple[int, int]) -> dict[str, jax.Array]:
        """What the model predicts for each example of a batch of `image_size` (H, W) inputs,
        as arrays with a leading batch axis (jit-able)."""

    @abc.abstractmethod
    def describe(self, prediction: dict[str, np.ndarray], top_k: int) -> list[str]:
        """Lines of text for one example's prediction (arrays without the batch axis)."""

    @abc.abstractmethod
    def draw(self, image: np.ndarray, prediction: dict[str, np.ndarray]) -> Image.Image:
        """A picture of one example's prediction on `image`, the (H, W, 3) uint8 view of what
        the model saw."""

    def check_source(self, source) -> None:
        """The dataset must carry the task's features and at least two classes."""
        missing = [f for f in ("image", *self.features) if f not in source.features]
        if missing:
            raise JTransferError(
                f"the {self.name} task needs the features {list(self.features)}, but the dataset "
                f"has {sorted(source.features)} (missing {missing})"
            )


def example_weights(batch: Batch) -> jax.Array:
    """(B,) float32: the padding weights of an evaluation batch, ones for a training batch."""
    if "mask" in batch:
        return batch["mask"].astype(jnp.float32)
    return jnp.ones(batch["image"].shape[0], jnp.float32)
