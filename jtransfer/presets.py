"""Named freezing strategies → (policy pairs, norm_eval regex) for configs.

Each model family lists its backbone subtrees from input to output (`models.stage_names`:
`stem, stage1, ...` for CNNs, `embed, block1, ...` for ViT), so one preset serves all of them:
`k` freezes the first subtree and the k after it, as MMDetection's `frozen_stages`. The
BatchNorm layers of a frozen subtree normalise with their running statistics and keep them
(MMDetection's `norm_eval`), which is what a frozen layer should do on a small dataset; for
families without BatchNorm the returned `norm_eval` is empty.
"""

from __future__ import annotations

from jtransfer import models

FREEZE_PRESETS = ("full", "head", "K (int)", "stages:K")


def _subtrees_regex(names: list[str]) -> str:
    return f"backbone/({'|'.join(names)})"


def freeze(preset: str | int, model: str) -> tuple[list[tuple[str, str]], str]:
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
    frozen = _subtrees_regex(names[: k + 1])
    return [(frozen + "/.*", "frozen"), (".*", "train")], frozen + "(/.*)?" if bn else ""
