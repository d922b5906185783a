"""ViT architecture table and subtree names, shared by the Flax model and the pretrained key maps.

Kept apart from the model (no Flax import) so that the key maps can build the table of every
checkpoint key a variant must have from the same numbers the model is built from. Sizes are the
ViT paper's (Ti from DeiT); a variant name is `vit_{size}{patch}`, e.g. `vit_b16`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Variant:
    width: int  # token dimension D
    depth: int  # number of encoder blocks
    mlp_dim: int
    num_heads: int
    patch: int
    resolution: int = 224  # native square input size of the public checkpoints


_SIZES = {  # size -> (width, depth, mlp_dim, num_heads)
    "ti": (192, 12, 768, 3),
    "s": (384, 12, 1536, 6),
    "b": (768, 12, 3072, 12),
    "l": (1024, 24, 4096, 16),
}

VARIANTS: dict[str, Variant] = {
    f"vit_{size}{patch}": Variant(*dims, patch=patch)
    for size, dims in _SIZES.items()
    for patch in (16, 32)
}


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown ViT variant {name!r}; valid: {sorted(VARIANTS)}")
    return VARIANTS[name]


def stage_names(name: str) -> list[str]:
    """Subtree prefixes under `backbone/`, input to output: `embed`, `block1`..`blockL`, `norm`.

    Freezing presets freeze "the first k" of these.
    """
    return ["embed", *(f"block{i}" for i in range(1, variant(name).depth + 1)), "norm"]


def layer_names(name: str) -> list[str]:
    """The units of layer-wise learning-rate decay, input to output; for ViT the stages."""
    return stage_names(name)


def feature_levels(name: str, patch_size: int | None = None) -> dict[int, str]:
    """Stride -> stage for a feature pyramid: the one map, the final `norm`'s patch tokens, at
    the patch stride (the variant's, or `patch_size` where the model overrides it)."""
    return {patch_size or variant(name).patch: "norm"}
