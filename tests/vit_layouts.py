"""Key -> shape tables of ViT checkpoints as the reference codebases write them, for any size.

Written from the formats (timm's `VisionTransformer.state_dict()`, vision_transformer's and
big_vision's Flax trees), not from jtransfer's key map, so tests built on them check the map.
scripts/make_golden_vit.py makes its npz fixtures from these tables and checks the timm one
against timm itself; tests use them to write checkpoints of any size, ViT-B included.
"""

from __future__ import annotations

from jtransfer.models.vit_spec import Variant

LAYOUTS = ("timm", "vit_jax", "big_vision")


def timm_shapes(v: Variant, grid: int = 14, num_classes: int = 1000) -> dict[str, tuple]:
    """timm `vit_*` (class token, class-token position in `pos_embed`), state-dict order."""
    d, m = v.width, v.mlp_dim
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 1 + grid * grid, d),
        "patch_embed.proj.weight": (d, 3, v.patch, v.patch),
        "patch_embed.proj.bias": (d,),
    }
    for i in range(v.depth):
        for name, out, inp in (
            ("norm1", d, None),
            ("attn.qkv", 3 * d, d),
            ("attn.proj", d, d),
            ("norm2", d, None),
            ("mlp.fc1", m, d),
            ("mlp.fc2", d, m),
        ):
            shapes[f"blocks.{i}.{name}.weight"] = (out, inp) if inp else (out,)
            shapes[f"blocks.{i}.{name}.bias"] = (out,)
    return shapes | {
        "norm.weight": (d,),
        "norm.bias": (d,),
        "head.weight": (num_classes, d),
        "head.bias": (num_classes,),
    }


def npz_shapes(
    v: Variant, layout: str, grid: int = 14, num_classes: int = 1000
) -> dict[str, tuple]:
    """`vit_jax`: vision_transformer (global module numbering, class-token slot in
    `Transformer/posembed_input`); `big_vision`: a big_vision train checkpoint (`params/`
    prefix, scanned encoder, top-level `pos_embedding` without a class-token slot)."""
    big_vision = layout == "big_vision"
    d, heads, m = v.width, v.num_heads, v.mlp_dim
    attn, ln2, mlp = ("_0", "_1", "_0") if big_vision else ("_1", "_2", "_3")
    block = {"LayerNorm_0/scale": (d,), "LayerNorm_0/bias": (d,)}
    for n in ("query", "key", "value"):
        block[f"MultiHeadDotProductAttention{attn}/{n}/kernel"] = (d, heads, d // heads)
        block[f"MultiHeadDotProductAttention{attn}/{n}/bias"] = (heads, d // heads)
    block |= {
        f"MultiHeadDotProductAttention{attn}/out/kernel": (heads, d // heads, d),
        f"MultiHeadDotProductAttention{attn}/out/bias": (d,),
        f"LayerNorm{ln2}/scale": (d,),
        f"LayerNorm{ln2}/bias": (d,),
        f"MlpBlock{mlp}/Dense_0/kernel": (d, m),
        f"MlpBlock{mlp}/Dense_0/bias": (m,),
        f"MlpBlock{mlp}/Dense_1/kernel": (m, d),
        f"MlpBlock{mlp}/Dense_1/bias": (d,),
    }
    shapes = {
        "embedding/kernel": (v.patch, v.patch, 3, d),
        "embedding/bias": (d,),
        "cls": (1, 1, d),
    }
    if big_vision:
        shapes["pos_embedding"] = (1, grid * grid, d)
        shapes |= {f"Transformer/encoderblock/{k}": (v.depth, *s) for k, s in block.items()}
    else:
        shapes["Transformer/posembed_input/pos_embedding"] = (1, 1 + grid * grid, d)
        for i in range(v.depth):
            shapes |= {f"Transformer/encoderblock_{i}/{k}": s for k, s in block.items()}
    shapes |= {
        "Transformer/encoder_norm/scale": (d,),
        "Transformer/encoder_norm/bias": (d,),
        "head/kernel": (d, num_classes),
        "head/bias": (num_classes,),
    }
    return {f"params/{k}": s for k, s in shapes.items()} if big_vision else shapes


def layout_shapes(v: Variant, layout: str, **kwargs) -> dict[str, tuple]:
    """The table of `layout`, one of `LAYOUTS`."""
    return timm_shapes(v, **kwargs) if layout == "timm" else npz_shapes(v, layout, **kwargs)
