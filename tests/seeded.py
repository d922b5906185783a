"""Deterministic random weights and images for golden fixtures, reproducible with numpy alone.

scripts/make_golden_{timm,vit}.py load `seeded_state_dict(shapes, seed)` into a reference model
and store the key -> shape table, the seeds and the reference logits; the parity tests rebuild
the same weights and images from them without torch (`load_golden`). So a fixture holds seeds
and outputs, not weights.

Values are drawn per key in table order, scaled so that activations stay O(1) through a deep
network and every input reaches the logits: He-normal convolutions and linear layers, norm
scales in [0.5, 1], small biases and running means, running variances in [0.5, 1.5] (never the
trivial 0 / 1 of a fresh BatchNorm), and class tokens and position embeddings as large as a
patch embedding's output, so that a misplaced token or position shows. Keys come in two
layouts, and both the leaf name and the fan-in depend on which (`_leaf`, `_fan_in`).

A fixture that cannot tell its inputs apart proves nothing (weights drawn too small once made
a ViT's logits nearly independent of its image), so every fixture script passes its reference
through `assert_inputs_matter` before storing its logits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.numpy

from jtransfer import pretrained

TOLERANCE = 1e-3  # max |logit - reference| in the parity tests
SEPARATION = 100  # distinct inputs' reference logits differ by more than this many TOLERANCEs

# big_vision scans its ViT encoder: one `encoderblock` (no index) whose leaves have a leading
# layer axis.
_SCANNED = re.compile(r"(^|/)encoderblock/")
# Flax attention's query/key/value kernels are (in, heads, head_dim): one input axis.
_QKV = re.compile(r"/(query|key|value)/kernel$")


def _leaf(key: str) -> str:
    """The leaf name of a torch (`a.b.weight`) or Flax (`a/b/kernel`) key."""
    return re.split(r"[./]", key)[-1]


def _fan_in(key: str, shape: tuple[int, ...]) -> int:
    """Inputs feeding one output of a weight: torch's are (out, in, kh, kw) or (out, in); Flax's
    HWIO or (in, out), the output last, except where `_SCANNED` or `_QKV` say otherwise."""
    if _leaf(key) == "weight":
        return math.prod(shape[1:])
    if _SCANNED.search(key):
        shape = shape[1:]
    return shape[0] if _QKV.search(key) else math.prod(shape[:-1])


def seeded_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """A float32 state dict (int64 `num_batches_tracked`) for the torch or Flax `shapes`."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        leaf = _leaf(key)
        if leaf == "num_batches_tracked":
            out[key] = np.zeros(shape, np.int64)
            continue
        if leaf == "running_var":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("running_mean", "bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "scale" or (leaf == "weight" and len(shape) == 1):  # a norm's scale
            value = rng.uniform(0.5, 1.0, shape)
        elif leaf in ("weight", "kernel"):
            value = rng.normal(0.0, math.sqrt(2 / _fan_in(key, shape)), shape)
        else:  # class tokens, position embeddings
            value = rng.normal(0.0, 0.5, shape)
        out[key] = value.astype(np.float32)
    return out


def seeded_images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """NHWC float32 in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def assert_inputs_matter(
    name: str, forward: Callable[[np.ndarray], np.ndarray], images: np.ndarray
) -> np.ndarray:
    """`forward(images)`, the reference logits of a fixture, once they are shown to depend on the
    input enough for a parity test at `TOLERANCE` to notice a mix-up: each image's logits differ
    from the next one's, and from those of the same images with RGB read as BGR, by more than
    `SEPARATION` tolerances. Needs two images or more."""
    if len(images) < 2:
        raise ValueError(f"{name}: {len(images)} image(s); a fixture needs two or more")
    logits = forward(images)
    gaps = {
        "next image": np.abs(np.diff(logits, axis=0)).max(axis=-1).min(),
        "BGR": np.abs(forward(np.ascontiguousarray(images[..., ::-1])) - logits).max(-1).min(),
    }
    shown = ", ".join(f"{k} {v:.3g}" for k, v in gaps.items())
    print(f"{name}: logits differ (max |difference|, worst image) from the {shown}")
    small = [f"{k} {v:.3g}" for k, v in gaps.items() if not v > SEPARATION * TOLERANCE]
    if small:
        raise AssertionError(
            f"{name}: the reference logits hardly depend on the input ({', '.join(small)}; need > "
            f"{SEPARATION * TOLERANCE:g}): a parity test at {TOLERANCE:g} could not see a mix-up"
        )
    return logits


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
