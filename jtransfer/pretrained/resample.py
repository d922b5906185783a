"""Bring a checkpoint leaf to the model's shape where that has one right answer.

`graft` calls `resample(path, value, shape)` for every leaf whose checkpoint shape differs from
the model's; the first rule whose regex fully matches the parameter path decides, and a leaf no
rule covers stays a shape mismatch. Resampling is driven by shapes alone, so a config changes
the input size, patch size or channel count and grafting follows without another setting:

* `.../pos_embedding`, a (1, h, w, D) grid (ViT keeps the class token's position apart, folded
  into its `cls_token`, so there is no class-token slot to guess): resized to the model's grid
  with timm's interpolation, bicubic with antialiasing (PIL's/torch's `antialias=True` kernel,
  Keys a = -0.5, weights renormalised at the borders). `jax.image.resize` computes exactly that.
* `.../embed/patch/kernel`, a (p, p, C, D) patch projection: spatially resized with FlexiViT's
  pseudo-inverse resize (PI-resize), which keeps every patch's projection onto the kernel equal
  to the projection of the bilinearly resized patch onto the new kernel (exactly when
  upsampling, in the least-squares sense when downsampling). Plain bilinear resizing of the
  kernel would scale the token norms by the area ratio.
* any 4-D `kernel` under `backbone/` with 3 input channels in the checkpoint and 1 in the model
  (the first convolution of a grayscale model): summed over the input channels, so a gray
  image gives the response its RGB copy (x, x, x) gave.

A rule that matches but cannot apply raises `ResampleError` saying why; graft reports it with
the path and both shapes beside the other mismatches.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import numpy as np

from jtransfer.errors import JTransferError


class ResampleError(JTransferError):
    """A leaf matched a resampling rule but its shapes do not allow it."""


def resample_posemb(posemb: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A (1, h, w, D) position-embedding grid resized to `shape` = (1, h', w', D), bicubic."""
    if len(posemb.shape) != 4 or len(shape) != 4:
        raise ResampleError("a position embedding resamples only as a (1, h, w, D) grid")
    if posemb.shape[0] != shape[0] or posemb.shape[-1] != shape[-1]:
        raise ResampleError("only the grid (h, w) of a position embedding resamples, not D")
    if tuple(posemb.shape) == tuple(shape):
        return posemb
    return np.asarray(jax.image.resize(np.asarray(posemb, np.float32), shape, "bicubic"))


def _bilinear_matrix(old: int, new: int) -> np.ndarray:
    """(new, old): 1-D bilinear resize (half-pixel centres, no antialias), tf.image.resize's."""
    return np.asarray(jax.image.resize(np.eye(old), (new, old), "linear", antialias=False))


def resize_patch_kernel(kernel: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A (p, p, C, D) patch kernel brought to `shape`: PI-resize of (p, p), then the channels."""
    if len(kernel.shape) != 4 or len(shape) != 4 or kernel.shape[3] != shape[3]:
        raise ResampleError("a patch kernel resamples only as (p, p, C, D) with the same D")
    if kernel.shape[:2] != tuple(shape[:2]):
        # PI-resize (FlexiViT, big_vision's resample_patchemb): new = pinv(R^T) old, with R the
        # bilinear resize of a patch; R is separable, so the pseudo-inverse is per axis.
        pinv_h, pinv_w = (
            np.linalg.pinv(_bilinear_matrix(old, new).T)
            for old, new in zip(kernel.shape[:2], shape[:2], strict=True)
        )
        kernel = np.einsum("ih,jw,hwcd->ijcd", pinv_h, pinv_w, kernel.astype(np.float64))
    return sum_input_channels(kernel, shape).astype(np.float32)


def sum_input_channels(kernel: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An RGB input kernel (..., 3, out) made grayscale (..., 1, out) by summing over RGB."""
    if tuple(kernel.shape) == tuple(shape):
        return kernel
    if (
        len(kernel.shape) != 4
        or len(shape) != 4
        or (kernel.shape[2], shape[2]) != (3, 1)
        or kernel.shape[:2] + kernel.shape[3:] != tuple(shape[:2]) + tuple(shape[3:])
    ):
        raise ResampleError("a kernel adapts only from 3 input channels to 1, all else equal")
    return kernel.sum(axis=2, keepdims=True)


Resampler = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]

# (regex fully matching the parameter path without its collection, resampler); first match wins.
RULES: tuple[tuple[str, Resampler], ...] = (
    (r"(.*/)?pos_embedding", resample_posemb),
    (r"(.*/)?embed/patch/kernel", resize_patch_kernel),
    (r"backbone/.*/kernel", sum_input_channels),
)


def resample(path: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """`value` brought to `shape` by the first rule matching `path`; None if no rule matches.

    Raises ResampleError if a rule matches but the shapes do not fit it.
    """
    for pattern, resampler in RULES:
        if re.fullmatch(pattern, path):
            return resampler(np.asarray(value), tuple(shape))
    return None
