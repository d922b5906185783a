"""Key maps from ViT checkpoints (big_vision / vision_transformer `.npz`, timm state dicts).

`convert` picks the layout by the keys present: timm's `patch_embed.*` / `blocks.*` names, or
else the Flax names of the two Google codebases. Those two differ in details the map settles
from the keys: vision_transformer numbers a block's modules globally (`LayerNorm_0`,
`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`) where big_vision's linen numbers
them per type (`..._0`, `..._0`, `LayerNorm_1`, `MlpBlock_0`); big_vision keeps `pos_embedding`
at the top without a class-token position, vision_transformer keeps it under
`Transformer/posembed_input` with one; big_vision train checkpoints prefix weights with `params/`
(old vision_transformer ones with `opt/target/`) and store the rest of the train state beside
them, which is not weights and is skipped; a scanned encoder (`Transformer/encoderblock/...`,
blocks stacked on a leading axis) is unstacked.

The map builds a `key_table.MultiTable` of every checkpoint key the variant must have, keyed
by jtransfer path, each leaf made from one or more checkpoint keys (query, key and value
kernels make one `qkv` kernel; the class token and its position make `cls_token`), and
`key_table.build` checks it against the checkpoint in one go, so an error lists *every*
missing, unexpected and misshapen key and any position embedding that cannot map. The
variant fixes width, depth, MLP size and heads; what a model may legitimately choose
differently (patch size, input channels, position grid, class count) is read from the
checkpoint and left to `graft`, which resamples or reports it against the model.

The class token's position embedding is added to `cls_token` (jtransfer's ViT keeps only the
grid in `pos_embedding`; see models/vit.py). Whether a checkpoint's position embedding has a
class-token slot is fixed by the format for big_vision (never), and told by the token count
otherwise: with a class token, L = 1 + g*g has one, L = g*g is ambiguous (a square grid
without a slot, or a slot and a non-square grid) and is an error, as is any non-square grid.
"""

from __future__ import annotations

import math
import re

import numpy as np

from jtransfer.models.vit_spec import VARIANTS, variant
from jtransfer.pretrained.key_table import (
    MultiTable,
    build,
    identity,
    linear_to_dense,
    oihw_to_hwio,
)

MODELS = tuple(VARIANTS)


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n and n > 0 else None


def _posemb_prefix(key: str, shape: tuple[int, ...], class_token: str | None, slot: bool) -> int:
    """Positions before the grid in the (1, L, D) embedding at `key`: 1 for a class-token slot.

    `slot` says whether the format can have one (then it has one iff `class_token` is present,
    which the count must confirm). Raises ValueError if the grid is not square or ambiguous.
    """
    tokens = shape[1]
    if slot and class_token is not None:
        if _square_side(tokens) is not None:
            raise ValueError(
                f"{key} {shape} is ambiguous: with a class token ({class_token}) present, "
                f"{tokens} positions are either a square grid without a class-token slot or "
                f"a slot and a non-square grid of {tokens - 1}"
            )
        if _square_side(tokens - 1) is not None:
            return 1
    elif _square_side(tokens) is not None:
        return 0
    raise ValueError(f"{key} {shape}: the positions do not form a square grid")


def _posemb_entries(
    table: MultiTable,
    state_dict: dict[str, np.ndarray],
    posemb_key: str,
    cls_key: str,
    slot: bool,
    width: int,
) -> list[tuple[str, str]]:
    """Adds `embed/pos_embedding` (a grid) and `embed/cls_token` (its position folded in).

    Returns (key, problem) for a position embedding that cannot map (then it is left out).
    """
    embed = ("params", "backbone", "embed")
    class_token = cls_key if cls_key in state_dict else None
    if class_token is not None:
        table[(*embed, "cls_token")] = ((cls_key,), ((1, 1, width),), identity)
    posemb = state_dict.get(posemb_key)
    if posemb is None:  # reported as missing; the shape is never compared
        table[(*embed, "pos_embedding")] = ((posemb_key,), ((1, 1, width),), identity)
        return []
    shape = tuple(posemb.shape)
    if len(shape) != 3 or shape[0] != 1 or shape[2] != width:
        return [(posemb_key, f"{posemb_key}: expected (1, positions, {width}), got {shape}")]
    try:
        prefix = _posemb_prefix(posemb_key, shape, class_token, slot)
    except ValueError as e:
        return [(posemb_key, str(e))]
    side = math.isqrt(shape[1] - prefix)
    table[(*embed, "pos_embedding")] = (
        (posemb_key,),
        (shape,),
        lambda p: p[:, prefix:].reshape(1, side, side, width),
    )
    if prefix:
        table[(*embed, "cls_token")] = (
            (cls_key, posemb_key),
            ((1, 1, width), shape),
            lambda cls, p: cls + p[:, :1],
        )
    return []


def _leading(state_dict: dict[str, np.ndarray], key: str, axis: int, default: int) -> int:
    value = state_dict.get(key)
    return value.shape[axis] if value is not None and value.ndim > axis else default


def _timm_table(state_dict: dict[str, np.ndarray], name: str) -> tuple[MultiTable, list]:
    v = variant(name)
    d, m = v.width, v.mlp_dim
    patch = "patch_embed.proj.weight"
    p, c = _leading(state_dict, patch, 2, v.patch), _leading(state_dict, patch, 1, 3)
    table: MultiTable = {}
    problems = _posemb_entries(table, state_dict, "pos_embed", "cls_token", True, d)
    bb = ("params", "backbone")
    table[(*bb, "embed", "patch", "kernel")] = ((patch,), ((d, c, p, p),), oihw_to_hwio)

    def add(torch_name: str, path: tuple[str, ...], dout: int, din: int | None = None) -> None:
        """A torch Linear (din given) or LayerNorm (din None) as a Flax Dense or LayerNorm."""
        weight = ("kernel", (dout, din), linear_to_dense) if din else ("scale", (dout,), identity)
        table[(*path, weight[0])] = ((f"{torch_name}.weight",), (weight[1],), weight[2])
        table[(*path, "bias")] = ((f"{torch_name}.bias",), ((dout,),), identity)

    table[(*bb, "embed", "patch", "bias")] = (("patch_embed.proj.bias",), ((d,),), identity)
    for i in range(v.depth):
        block = (*bb, f"block{i + 1}")
        add(f"blocks.{i}.norm1", (*block, "norm1"), d)
        add(f"blocks.{i}.attn.qkv", (*block, "attn", "qkv"), 3 * d, d)
        add(f"blocks.{i}.attn.proj", (*block, "attn", "proj"), d, d)
        add(f"blocks.{i}.norm2", (*block, "norm2"), d)
        add(f"blocks.{i}.mlp.fc1", (*block, "mlp", "fc1"), m, d)
        add(f"blocks.{i}.mlp.fc2", (*block, "mlp", "fc2"), d, m)
    add("norm", (*bb, "norm"), d)
    if "head.weight" in state_dict or "head.bias" in state_dict:
        add("head", ("params", "head", "dense"), _leading(state_dict, "head.bias", 0, 1000), d)
    return table, problems


def _strip_train_state(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights of a train checkpoint (under `params/` or `opt/target/`), unprefixed."""
    for prefix in ("params/", "opt/target/"):
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def _unscan(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`Transformer/encoderblock/...` stacked over blocks -> `Transformer/encoderblock_{i}/...`."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("Transformer/encoderblock/"):
            rest = key.split("/", 2)[2]
            out.update({f"Transformer/encoderblock_{i}/{rest}": x for i, x in enumerate(value)})
        else:
            out[key] = value
    return out


def _big_vision_table(state_dict: dict[str, np.ndarray], name: str) -> tuple[MultiTable, list]:
    v = variant(name)
    d, m, heads = v.width, v.mlp_dim, v.num_heads
    p = _leading(state_dict, "embedding/kernel", 0, v.patch)
    c = _leading(state_dict, "embedding/kernel", 2, 3)
    table: MultiTable = {}
    if "pos_embedding" in state_dict:  # big_vision: added before the class token, no slot
        problems = _posemb_entries(table, state_dict, "pos_embedding", "cls", False, d)
    else:
        posemb = "Transformer/posembed_input/pos_embedding"
        problems = _posemb_entries(table, state_dict, posemb, "cls", True, d)
    bb = ("params", "backbone")
    table[(*bb, "embed", "patch", "kernel")] = (("embedding/kernel",), ((p, p, c, d),), identity)
    table[(*bb, "embed", "patch", "bias")] = (("embedding/bias",), ((d,),), identity)

    def add(src: str, path: tuple[str, ...], shape: tuple[int, ...], leaf: str = "kernel") -> None:
        """A Flax Dense (`shape` of its kernel) or LayerNorm (`leaf='scale'`) with its bias."""
        table[(*path, leaf)] = ((f"{src}/{leaf}",), (shape,), identity)
        table[(*path, "bias")] = ((f"{src}/bias",), ((shape[-1],),), identity)

    classic = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in state_dict
    attn, ln2, mlp = ("_1", "_2", "_3") if classic else ("_0", "_1", "_0")
    for i in range(v.depth):
        src, block = f"Transformer/encoderblock_{i}", (*bb, f"block{i + 1}")
        mha = f"{src}/MultiHeadDotProductAttention{attn}"
        add(f"{src}/LayerNorm_0", (*block, "norm1"), (d,), "scale")
        qkv = tuple(f"{mha}/{n}" for n in ("query", "key", "value"))
        table[(*block, "attn", "qkv", "kernel")] = (
            tuple(f"{k}/kernel" for k in qkv),
            ((d, heads, d // heads),) * 3,
            lambda *w: np.concatenate([x.reshape(d, d) for x in w], axis=1),
        )
        table[(*block, "attn", "qkv", "bias")] = (
            tuple(f"{k}/bias" for k in qkv),
            ((heads, d // heads),) * 3,
            lambda *b: np.concatenate([x.reshape(d) for x in b]),
        )
        table[(*block, "attn", "proj", "kernel")] = (
            (f"{mha}/out/kernel",),
            ((heads, d // heads, d),),
            lambda w: w.reshape(d, d),
        )
        table[(*block, "attn", "proj", "bias")] = ((f"{mha}/out/bias",), ((d,),), identity)
        add(f"{src}/LayerNorm{ln2}", (*block, "norm2"), (d,), "scale")
        add(f"{src}/MlpBlock{mlp}/Dense_0", (*block, "mlp", "fc1"), (d, m))
        add(f"{src}/MlpBlock{mlp}/Dense_1", (*block, "mlp", "fc2"), (m, d))
    add("Transformer/encoder_norm", (*bb, "norm"), (d,), "scale")
    features = d
    if "pre_logits/kernel" in state_dict or "pre_logits/bias" in state_dict:
        # A representation layer (ViT's ImageNet-21k checkpoints): kept under the head, which a
        # transfer run re-initialises, so such a checkpoint grafts with the usual dont_load.
        features = _leading(state_dict, "pre_logits/kernel", 1, d)
        add("pre_logits", ("params", "head", "pre_logits"), (d, features))
    if "head/kernel" in state_dict or "head/bias" in state_dict:
        classes = _leading(state_dict, "head/bias", 0, 1000)
        add("head", ("params", "head", "dense"), (features, classes))
    return table, problems


def _apply(
    table: MultiTable, problems: list[tuple[str, str]], state_dict: dict, name: str, layout: str
) -> dict:
    """`key_table.build`, with the position-embedding `problems` (key, reason) reported too."""
    return build(
        state_dict,
        table,
        f"{layout} checkpoint does not match {name}",
        optional={key for key, _ in problems},
        problems=[("position embedding", reason) for _, reason in problems],
    )


def from_timm(state_dict: dict[str, np.ndarray], name: str) -> dict:
    """The jtransfer variables tree of a timm `vit_*` state dict (class-token models)."""
    return _apply(*_timm_table(state_dict, name), state_dict, name, "timm")


def from_big_vision(state_dict: dict[str, np.ndarray], name: str) -> dict:
    """The jtransfer variables tree of a big_vision or vision_transformer `.npz` checkpoint."""
    state_dict = _unscan(_strip_train_state(state_dict))
    return _apply(*_big_vision_table(state_dict, name), state_dict, name, "big_vision")


_TIMM_KEY = re.compile(r"(patch_embed|blocks)\.")


def convert(state_dict: dict[str, np.ndarray], name: str) -> dict:
    """`from_timm` if the keys are timm's, else `from_big_vision`.

    Raises ValueError listing every missing, unexpected and misshapen key, and any position
    embedding whose grid cannot be told, if the checkpoint is not variant `name`.
    """
    if any(_TIMM_KEY.match(k) for k in state_dict):
        return from_timm(state_dict, name)
    return from_big_vision(state_dict, name)
