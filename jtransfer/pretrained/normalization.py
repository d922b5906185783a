"""The input normalisation a set of weights was trained with, and whether a pp string gives it.

Weights only work on inputs scaled the way they were trained: a torchvision ResNet fed [-1, 1]
pixels, or a ViT fed ImageNet mean/std ones, still runs and still trains, just worse, with no
error anywhere. So every registered source records its normalisation as data (`Normalization`),
from which the configs build their pp strings, and `mismatch` compares an explicit pp string
with it.

The comparison measures rather than parses: the pp's `value_range` and `normalize` ops (the
only ops that change pixel values; the rest resize, crop and flip) are run, through the real
ops of `jtransfer.data`, on a probe image holding pixel values 0 and 255, and so is the
record's own pp; two pp strings agree when they map those pixels to the same values, whatever
their text (`value_range(-1, 1)` and `value_range(0, 1)|normalize(0.5, 0.5)` agree).
"""

from __future__ import annotations

import dataclasses

import numpy as np

_VALUE_OPS = ("value_range", "normalize")
_TOLERANCE = 1e-4  # on the normalised values, which are O(1)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """uint8 pixels [0, 255] -> `value_range`, then `(x - mean) / std` per channel if given."""

    value_range: tuple[float, float]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    origin: str = ""  # where the weights' own preprocessing says so

    def pp(self) -> str:
        """The pp ops that produce these inputs from decoded uint8 images."""
        lo, hi = (float(v) for v in self.value_range)
        ops = f"value_range({lo}, {hi})"
        if self.mean is not None:
            ops += f"|normalize({tuple(self.mean)}, {tuple(self.std)})"
        return ops

    def describe(self) -> str:
        """Short: '[-1, 1]' or 'mean (0.485, 0.456, 0.406) std (0.229, 0.224, 0.225)'."""
        lo, hi = self.value_range
        if self.mean is None:
            return f"[{lo:g}, {hi:g}]"
        scale = "" if (lo, hi) == (0, 1) else f"[{lo:g}, {hi:g}] "
        text = f"{scale}mean {_compact(self.mean)} std {_compact(self.std)}"
        if len(set(self.mean)) == len(set(self.std)) == 1:  # the same affine map per channel
            m, s = self.mean[0], self.std[0]
            text += f" = [{(lo - m) / s:g}, {(hi - m) / s:g}]"
        return text


def _compact(values: tuple[float, ...]) -> str:
    return f"{values[0]:g}" if len(set(values)) == 1 else f"({', '.join(f'{v:g}' for v in values)})"


def _value_ops(pp: str) -> str:
    return "|".join(s.strip() for s in pp.split("|") if s.split("(")[0].strip() in _VALUE_OPS)


def _probe(value_ops: str) -> np.ndarray:
    """What `value_ops` make of the pixels 0 and 255 in every channel: (2, 3) float32."""
    import tensorflow as tf

    from jtransfer import data

    image = tf.constant([[[0, 0, 0], [255, 255, 255]]], tf.uint8)
    if value_ops:
        image = data.parse_pp(value_ops)({"image": image})["image"]
    return tf.cast(image, tf.float32).numpy()[0]


def mismatch(pp: str, normalization: Normalization) -> str | None:
    """None if `pp` feeds the model inputs normalised as `normalization`, else what it does."""
    ops = _value_ops(pp)
    if np.allclose(_probe(ops), _probe(normalization.pp()), rtol=0, atol=_TOLERANCE):
        return None
    return ops or "no value_range/normalize (uint8 pixels 0..255)"
