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
- `bitfit`: biases (and, by switch, normalisation scales) plus the head (Ben Zaken et al. 2022);
- `peft`: parameter-efficient fine-tuning, where what trains is added to a frozen backbone
  (`models.peft`): LoRA factors (`lora`), bottleneck adapters (`adapter`) or visual prompts
  (`vpt`, ViT only), plus the head; returns the model options that add them as well.

The BatchNorm layers of a frozen subtree normalise with their running statistics and keep them
(MMDetection's `norm_eval`, Keras's frozen BatchNorm) until the subtree starts training; for
families without BatchNorm the returned BatchNorm policy is empty. Phase boundaries are given in
epochs (`start_epoch`, `until_epoch`), which the trainer turns into steps.

What "the head" means follows the task: with `neck=True` (segmentation, detection) the new
layers are the feature pyramid `neck` and the `head` together, and they train or freeze as one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jtransfer import models
from jtransfer.errors import JTransferError
from jtransfer.models.peft import DEFAULT_SCALE, SUBTREES

FREEZE_PRESETS = ("full", "head", "K (int)", "stages:K")

Pairs = list[tuple[str, Any]]


def _subtrees(names: Sequence[str]) -> str:
    return f"backbone/({'|'.join(names)})"


def new_layers(neck: bool = False) -> str:
    """The pattern of what a transfer run adds on top of the backbone: the head, and for dense
    tasks the neck (the feature pyramid) with it."""
    return "(neck|head)/.*" if neck else "head/.*"


def freeze(preset: str | int, model: str, *, neck: bool = False) -> tuple[Pairs, list]:
    """`'full'` (fine-tune all), `'head'` (only the new layers train: a linear probe, or the neck
    and head of a dense model with `neck`) or `k` / `'stages:k'` (freeze the first backbone
    subtree and the k that follow it)."""
    bn = models.has_batch_norm(model)
    if preset == "full":
        return [(".*", "train")], []
    if preset == "head":
        return [(new_layers(neck), "train"), (".*", "frozen")], ["backbone/.*"] if bn else []
    if isinstance(preset, str) and preset.startswith("stages:"):
        preset = preset.split(":", 1)[1]
    try:
        k = int(preset)
    except (TypeError, ValueError):
        raise JTransferError(
            f"unknown freeze preset {preset!r}; valid: {list(FREEZE_PRESETS)}"
        ) from None
    names = models.stage_names(model)
    if not 0 <= k < len(names) - 1:
        raise JTransferError(f"{model} has stages 0..{len(names) - 2} to freeze, got {k}")
    frozen = _subtrees(names[: k + 1])
    return [(frozen + "/.*", "frozen"), (".*", "train")], [frozen + "(/.*)?"] if bn else []


def gradual_unfreezing(
    model: str, epochs: Sequence[float], *, neck: bool = False
) -> tuple[Pairs, list]:
    """The head (and `neck`) train from the start; at `epochs[i]` the (i+1)-th backbone subtree
    from the top starts training too. Subtrees beyond `len(epochs)` stay frozen."""
    names = models.stage_names(model)[::-1]  # top first
    epochs = list(epochs)
    if not epochs or any(e <= 0 for e in epochs) or epochs != sorted(set(epochs)):
        raise JTransferError(f"unfreezing epochs must be positive and increasing, got {epochs}")
    if len(epochs) > len(names):
        raise JTransferError(
            f"{model} has {len(names)} subtrees to unfreeze, got {len(epochs)} epochs"
        )
    bn = models.has_batch_norm(model)
    pairs: Pairs = [(new_layers(neck), "train")]
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


def lp_ft(model: str, epoch: float, *, neck: bool = False) -> tuple[Pairs, list]:
    """Linear probe (the new layers alone) until `epoch`, then full fine-tuning."""
    if not epoch > 0:
        raise JTransferError(f"the fine-tuning phase must start after epoch 0, got {epoch}")
    norm_eval = [("backbone/.*", {"until_epoch": epoch})] if models.has_batch_norm(model) else []
    return [(new_layers(neck), "train"), (".*", {"start_epoch": epoch})], norm_eval


def layerwise_lr_decay(model: str, decay: float, *, neck: bool = False) -> Pairs:
    """`lr_mult = decay ** d` for the block d levels below the head (the head and neck: 1)."""
    if not 0 < decay <= 1:
        raise JTransferError(f"layer-wise lr decay must be in (0, 1], got {decay}")
    layers = models.layer_names(model)
    pairs: Pairs = [(new_layers(neck), "train")]
    for depth, layer in enumerate(reversed(layers), start=1):
        pairs.append((f"backbone/{layer}/.*", {"lr_mult": decay**depth}))
    return pairs


def bitfit(model: str, norm_scales: bool = False, *, neck: bool = False) -> Pairs:
    """Only biases (and normalisation `scale`s with `norm_scales`) and the new layers train."""
    models.stage_names(model)  # an unknown model is an error here, not at the first step
    trained = "bias|scale" if norm_scales else "bias"
    return [(new_layers(neck), "train"), (f"backbone/.*/({trained})", "train"), (".*", "frozen")]


# Parameter-efficient strategy -> (its knob, the model option the knob sets).
PEFT_KNOBS = {
    "lora": ("rank", "lora_rank"),
    "adapter": ("bottleneck", "adapter_dim"),
    "vpt": ("prompts", "prompts"),
}


def peft(
    strategy: str, model: str, knobs: Mapping[str, Any], *, neck: bool = False
) -> tuple[Pairs, list, dict[str, Any]]:
    """(policy, BatchNorm policy, model options) of `'lora'` (`knobs['rank']`), `'adapter'`
    (`knobs['bottleneck']`) or `'vpt'` (`knobs['prompts']`, deep prompts; ViT only): the added
    parameters and the new layers train, everything pretrained is frozen, BatchNorm included."""
    knob, option = PEFT_KNOBS[strategy]
    value = knobs[knob]
    if strategy == "lora" and value is None:
        value = models.lora_rank(model)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JTransferError(
            f"strategy {strategy!r} needs {knob} = a whole number >= 1, got {value!r}"
        )
    if strategy == "vpt" and not models.has_prompts(model):
        raise JTransferError(
            f"strategy 'vpt' (visual prompt tuning) needs a ViT, got model={model!r}: "
            "use lora or adapter for other families"
        )
    options: dict[str, Any] = {option: value}
    if strategy == "lora":
        options.update(lora_scale=DEFAULT_SCALE, lora_targets=models.lora_targets(model))
    if strategy == "vpt":
        options["deep_prompts"] = True
    pairs = [(new_layers(neck), "train"), (SUBTREES[strategy], "train"), (".*", "frozen")]
    return pairs, ["backbone/.*"] if models.has_batch_norm(model) else [], options


# The strategies' settings as config-file arguments (`configs/*.py:stages=2,...`), defaults.
STRATEGY_KNOBS = {
    "stages": 3,  # frozen_stages: the stem and this many stages are frozen
    "unfreeze": None,  # gradual: the epochs at which subtrees unfreeze; None: 1, 2, 3, ...
    "lp_epochs": None,  # lp_ft: length of the probe phase; None: half the run
    "llrd": 0.75,  # llrd: per-block decay of the learning rate
    "l2sp": 1e-3,  # l2sp: strength of the pull toward the pretrained weights
    "bitfit_scales": False,  # bitfit: normalisation scales train too
    "ema": 0.99,  # ema: decay per step
    "alphas": (0.0, 0.25, 0.5, 0.75, 1.0),  # wise_ft: interpolation weights of the fine-tune
    "rank": None,  # lora: rank of the factors; None: the model's (8; 2 on EfficientNet-Lite)
    "bottleneck": 16,  # adapter: width of each adapter's bottleneck
    "prompts": 10,  # vpt: prompt tokens per block
}

# Strategy name -> what it trains; `apply_strategy` sets a config's fields for one of them.
STRATEGIES = {
    "scratch": "everything, from a random initialisation (no pretrained weights)",
    "full": "everything",
    "linear_probe": "the new layers; backbone BatchNorm in inference mode",
    "cached_probe": "the new layers, on backbone features computed once",
    "frozen_backbone": "the new layers (a dense model's neck and head); backbone frozen",
    "frozen_stages": "all but the stem and the first `stages` stages",
    "gradual": "the new layers, then one more subtree from the top at each `unfreeze` epoch",
    "lp_ft": "the new layers for `lp_epochs`, then everything",
    "llrd": "everything, lr x `llrd ** depth` in blocks below the head",
    "l2sp": "everything, weight decay `l2sp` toward the pretrained weights",
    "bitfit": "biases (and with `bitfit_scales` normalisation scales) and the new layers",
    "ema": "everything; a moving average (`ema` decay) evaluated alongside",
    "wise_ft": "everything; (1-a) start + a final evaluated at the end for each of `alphas`",
    "lora": "LoRA factors of rank `rank` on the backbone's kernels, and the new layers",
    "adapter": "bottleneck adapters (`bottleneck` wide) after each block, and the new layers",
    "vpt": "`prompts` visual prompt tokens per block (ViT), and the new layers",
}


# What the dense config files offer: a probe has no meaning for a neck and head trained from zero.
DENSE_STRATEGIES = tuple(s for s in STRATEGIES if s not in ("linear_probe", "cached_probe"))


def apply_strategy(config, strategy: str, knobs: Mapping[str, Any], *, neck: bool = False):
    """Sets `config`'s policy, BatchNorm policy and the strategy's own fields.

    `knobs` holds the strategies' settings: `epochs` (the run's length), `stages`, `unfreeze`,
    `lp_epochs`, `llrd`, `l2sp`, `bitfit_scales`, `ema`, `alphas`, `rank`, `bottleneck`,
    `prompts`; `neck`: the model is dense. The parameter-efficient strategies also set model
    options (`config.model.lora_rank`, ...) and re-initialise what they add (`dont_load`).
    """
    if strategy not in STRATEGIES:
        raise JTransferError(f"unknown strategy {strategy!r}; valid: {list(STRATEGIES)}")
    model = config.model.name
    policy, norm_eval = freeze("full", model)
    if strategy in ("linear_probe", "cached_probe", "frozen_backbone"):
        policy, norm_eval = freeze("head", model, neck=neck)
    elif strategy == "frozen_stages":
        policy, norm_eval = freeze(int(knobs["stages"]), model)
    elif strategy == "gradual":
        epochs = knobs["unfreeze"] or list(range(1, len(models.stage_names(model)) + 1))
        policy, norm_eval = gradual_unfreezing(model, epochs, neck=neck)
    elif strategy == "lp_ft":
        policy, norm_eval = lp_ft(model, knobs["lp_epochs"] or knobs["epochs"] / 2, neck=neck)
    elif strategy == "llrd":
        policy = layerwise_lr_decay(model, float(knobs["llrd"]), neck=neck)
    elif strategy == "bitfit":
        policy = bitfit(model, norm_scales=bool(knobs["bitfit_scales"]), neck=neck)
    elif strategy in PEFT_KNOBS:
        policy, norm_eval, options = peft(strategy, model, knobs, neck=neck)
        config.model.update(options)
        config.pretrained.dont_load = (*config.pretrained.dont_load, SUBTREES[strategy])
    config.policy, config.norm_eval = policy, norm_eval
    config.cache_features = strategy == "cached_probe"
    if strategy == "cached_probe":
        # No checkpoints between the end and a preemption's: the head's whole training takes
        # about a second, and a resumed run extracts the features again, which costs far more.
        config.checkpoint_every = 0
    if strategy == "scratch":
        config.pretrained.source = ""
    if strategy == "l2sp":
        config.weight_decay, config.decay_toward = float(knobs["l2sp"]), "start"
    if strategy == "ema":
        config.ema_decay = float(knobs["ema"])
    if strategy == "wise_ft":
        config.wise_ft_alphas = tuple(knobs["alphas"])


# What a pretrained backbone's BatchNorm layers do as it fine-tunes (transfer.py's `bn`):
# inference mode with the running statistics kept, or batch statistics that the running follow.
BN_MODES = ("frozen", "train")


def hold_backbone_batch_norm(config, strategy: str) -> None:
    """Every backbone BatchNorm layer in inference mode for the whole run (Keras's advice for
    fine-tuning, MMDetection's `norm_eval=True`), whatever the strategy holds on its own. Not
    from scratch, where the running statistics are those of no data."""
    if strategy != "scratch" and models.has_batch_norm(config.model.name):
        config.norm_eval = ["backbone/.*"]


def hold_batch_norm_at_small_batches(config, batch_size: int, strategy: str) -> None:
    """`hold_backbone_batch_norm` below a global batch of 16, as MMDetection and MMSegmentation
    do: batch statistics of a few images are noise."""
    if batch_size < 16:
        hold_backbone_batch_norm(config, strategy)
