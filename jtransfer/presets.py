"""Named fine-tuning strategies → the policy pairs and BatchNorm policy a config holds.

Each model family lists its backbone subtrees from input to output (`models.stage_names`:
`stem, stage1, ...` for CNNs, `embed, block1, ...` for ViT; `models.layer_names` the same at
block granularity), so one preset serves every family:

- `freeze`: `'full'` fine-tuning, `'head'` (linear probe), or `k` (MMDetection's
  `frozen_stages`: the first subtree and the k after it frozen);
- `gradual_unfreezing`: ULMFiT, top-down: the head first, then one more subtree from the top at
  each listed epoch;
- `lp_ft`: a linear probe, then everything trains from one epoch on (Kumar et al. 2022);
- `layerwise_lr_decay`: learning rate `decay ** depth`, counted in blocks from the top;
- `bitfit`: biases (and, by switch, normalisation scales) plus the head (Ben Zaken et al. 2022).

The BatchNorm layers of a frozen subtree normalise with their running statistics and keep them
(MMDetection's `norm_eval`, Keras's frozen BatchNorm) until the subtree starts training; for
families without BatchNorm the returned BatchNorm policy is empty. Phase boundaries are given in
epochs (`start_epoch`, `until_epoch`), which the trainer turns into steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jtransfer import models

FREEZE_PRESETS = ("full", "head", "K (int)", "stages:K")

Pairs = list[tuple[str, Any]]


def _subtrees(names: Sequence[str]) -> str:
    return f"backbone/({'|'.join(names)})"


def freeze(preset: str | int, model: str) -> tuple[Pairs, str]:
    """`'full'` (fine-tune all), `'head'` (linear probe) or `k` / `'stages:k'` (freeze the
    first backbone subtree and the k that follow it)."""
    bn = models.has_batch_norm(model)
    if preset == "full":
        return [(".*", "train")], ""
    if preset == "head":
        return [("head/.*", "train"), (".*", "frozen")], "backbone/.*" if bn else ""
    if isinstance(preset, str) and preset.startswith("stages:"):
        preset = preset.split(":", 1)[1]
    try:
        k = int(preset)
    except (TypeError, ValueError):
        raise ValueError(
            f"unknown freeze preset {preset!r}; valid: {list(FREEZE_PRESETS)}"
        ) from None
    names = models.stage_names(model)
    if not 0 <= k < len(names) - 1:
        raise ValueError(f"{model} has stages 0..{len(names) - 2} to freeze, got {k}")
    frozen = _subtrees(names[: k + 1])
    return [(frozen + "/.*", "frozen"), (".*", "train")], frozen + "(/.*)?" if bn else ""


def gradual_unfreezing(model: str, epochs: Sequence[float]) -> tuple[Pairs, list]:
    """The head trains from the start; at `epochs[i]` the (i+1)-th backbone subtree from the
    top starts training too. Subtrees beyond `len(epochs)` stay frozen."""
    names = models.stage_names(model)[::-1]  # top first
    epochs = list(epochs)
    if not epochs or any(e <= 0 for e in epochs) or epochs != sorted(set(epochs)):
        raise ValueError(f"unfreezing epochs must be positive and increasing, got {epochs}")
    if len(epochs) > len(names):
        raise ValueError(f"{model} has {len(names)} subtrees to unfreeze, got {len(epochs)} epochs")
    bn = models.has_batch_norm(model)
    pairs: Pairs = [("head/.*", "train")]
    norm_eval: list = []
    for name, epoch in zip(names, epochs, strict=False):
        pairs.append((f"backbone/{name}/.*", {"start_epoch": epoch}))
        if bn:
            norm_eval.append((f"backbone/{name}(/.*)?", {"until_epoch": epoch}))
    rest = names[len(epochs) :]
    if rest:
        pairs.append((".*", "frozen"))
        if bn:
            norm_eval.append(_subtrees(rest) + "(/.*)?")
    return pairs, norm_eval


def lp_ft(model: str, epoch: float) -> tuple[Pairs, list]:
    """Linear probe until `epoch`, then full fine-tuning."""
    if not epoch > 0:
        raise ValueError(f"the fine-tuning phase must start after epoch 0, got {epoch}")
    norm_eval = [("backbone/.*", {"until_epoch": epoch})] if models.has_batch_norm(model) else []
    return [("head/.*", "train"), (".*", {"start_epoch": epoch})], norm_eval


def layerwise_lr_decay(model: str, decay: float) -> Pairs:
    """`lr_mult = decay ** d` for the block d levels below the head (the head: 1)."""
    if not 0 < decay <= 1:
        raise ValueError(f"layer-wise lr decay must be in (0, 1], got {decay}")
    layers = models.layer_names(model)
    pairs: Pairs = [("head/.*", "train")]
    for depth, layer in enumerate(reversed(layers), start=1):
        pairs.append((f"backbone/{layer}/.*", {"lr_mult": decay**depth}))
    return pairs


def bitfit(model: str, norm_scales: bool = False) -> Pairs:
    """Only biases (and normalisation `scale`s with `norm_scales`) and the head train."""
    models.stage_names(model)  # an unknown model is an error here, not at the first step
    trained = "bias|scale" if norm_scales else "bias"
    return [("head/.*", "train"), (f"backbone/.*/({trained})", "train"), (".*", "frozen")]
