"""Named freezing strategies → (policy pairs, norm_eval regex) for configs.

Every model family names its subtrees `backbone/stem`, `backbone/stage1..N`, `backbone/top`
(where it has one) and `head`, so one preset serves all of them. The BatchNorm layers of a
frozen subtree normalise with their running statistics and keep them (MMDetection's
`norm_eval`), which is what a frozen layer should do on a small dataset.
"""

from __future__ import annotations

FREEZE_PRESETS = ("full", "head", "stages:K")


def _frozen_stages_regex(k: int) -> str:
    if k < 0:
        raise ValueError(f"frozen stages must be >= 0, got {k}")
    stages = "|".join(f"stage{i}" for i in range(1, k + 1))
    return f"backbone/(stem{'|' + stages if stages else ''})"


def freeze(preset: str | int) -> tuple[list[tuple[str, str]], str]:
    """`'full'` (fine-tune all), `'head'` (linear probe) or `k` / `'stages:k'` (freeze the stem
    and the first k stages, as MMDetection's `frozen_stages`)."""
    if preset == "full":
        return [(".*", "train")], ""
    if preset == "head":
        return [("head/.*", "train"), (".*", "frozen")], "backbone/.*"
    if isinstance(preset, str) and preset.startswith("stages:"):
        preset = preset.split(":", 1)[1]
    try:
        k = int(preset)
    except (TypeError, ValueError):
        raise ValueError(
            f"unknown freeze preset {preset!r}; valid: {list(FREEZE_PRESETS)}"
        ) from None
    frozen = _frozen_stages_regex(k)
    return [(frozen + "/.*", "frozen"), (".*", "train")], frozen + "(/.*)?"
