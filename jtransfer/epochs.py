"""Epochs as steps: the one conversion every part of a run uses.

A config says "10 epochs", a policy rule "start training at epoch 2", a BatchNorm policy "hold
until epoch 1"; the trainer counts steps. An epoch here is a number of *examples seen*: epoch e
begins at the step by which `e * num_examples` examples have passed, `floor(e * n / batch)`.
That is the same step for the run's length and for its phase boundaries, and a fractional
epoch (`lp_epochs=2.5`) means what it says. (The input pipeline permutes the data once per
`n // batch` steps, dropping the remainder; the two agree whenever the batch divides the split.)
"""

from __future__ import annotations

import dataclasses

from jtransfer.errors import JTransferError


@dataclasses.dataclass(frozen=True)
class Epochs:
    """Converts epochs of a split of `num_examples` into steps of global batch `batch_size`."""

    num_examples: int
    batch_size: int

    def to_steps(self, epochs: float) -> int:
        if epochs < 0:
            raise JTransferError(f"epochs must be >= 0, got {epochs}")
        return int(epochs * self.num_examples // self.batch_size)

    def total_steps(self, num_epochs: float, total_steps: int = 0) -> int:
        """The run's length: `total_steps` if > 0, else `num_epochs` converted."""
        if total_steps:
            return int(total_steps)
        steps = self.to_steps(num_epochs)
        if steps < 1:
            raise JTransferError(
                f"num_epochs={num_epochs} of {self.num_examples} examples in batches of "
                f"{self.batch_size} is less than one step; set num_epochs or total_steps higher"
            )
        return steps
