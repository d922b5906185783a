"""Deterministic random weights and images for golden fixtures, reproducible with numpy alone.

scripts/make_golden_timm.py loads `seeded_state_dict(shapes, seed)` into a torch reference model
and stores the key -> shape table, the seeds and the reference logits; the parity tests rebuild
the same weights and images from them without torch (`load_golden`). So a fixture holds seeds
and outputs, not weights. Values are drawn per key in table order, scaled so that activations
stay O(1) through a deep network and a 1e-3 logit tolerance means something: He-normal
convolutions and linear layers, norm scales in [0.5, 1], small biases and running means,
running variances in [0.5, 1.5] (never the trivial 0 / 1 of a fresh BatchNorm).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import safetensors.numpy

from jtransfer import pretrained


def seeded_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """A float32 state dict (int64 `num_batches_tracked`) for the torch `shapes`, from `seed`."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = np.zeros(shape, np.int64)
            continue
        if leaf == "running_var":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("running_mean", "bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif len(shape) == 1:  # a norm's scale
            value = rng.uniform(0.5, 1.0, shape)
        else:  # (out, in, ...) weights
            value = rng.normal(0.0, math.sqrt(2 / math.prod(shape[1:])), shape)
        out[key] = value.astype(np.float32)
    return out


def seeded_images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """NHWC float32 in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def shape_table(keys: np.ndarray, shapes: np.ndarray) -> dict[str, tuple[int, ...]]:
    """A fixture's `keys` and comma-joined `shapes` string arrays back as {key: shape}."""
    return {
        str(k): tuple(int(d) for d in str(s).split(",") if d)
        for k, s in zip(keys, shapes, strict=True)
    }


def load_golden(name: str, directory: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(variables, images, expected logits) of the fixture tests/golden/{name}.npz.

    The weights are regenerated, written to `directory/{name}.safetensors` and read back
    through `jtransfer.pretrained.load(path, model=name)`, so the reader and key map are part
    of what the logits check.
    """
    golden = np.load(Path(__file__).parent / "golden" / f"{name}.npz")
    shapes = shape_table(golden["keys"], golden["shapes"])
    path = directory / f"{name}.safetensors"
    safetensors.numpy.save_file(seeded_state_dict(shapes, int(golden["weight_seed"])), path)
    images = seeded_images(int(golden["input_seed"]), tuple(golden["input_shape"]))
    return pretrained.load(str(path), model=name), images, golden["logits"]
