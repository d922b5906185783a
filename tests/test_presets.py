import os

import pytest

from jtransfer import base_config, config_files
from jtransfer.epochs import Epochs
from jtransfer.errors import JTransferError
from jtransfer.policy import Policy
from jtransfer.presets import (
    STRATEGY_KNOBS,
    apply_strategy,
    bitfit,
    freeze,
    gradual_unfreezing,
    layerwise_lr_decay,
    lp_ft,
)

PATHS = {
    "backbone": {
        "stem": {"conv": {"kernel": 0}},
        "stage1": {"block1": {"kernel": 0}},
        "stage2": {"block1": {"kernel": 0}},
        "top": {"conv": {"kernel": 0}},
    },
    "head": {"dense": {"kernel": 0}},
}


def test_frozen_stages_freeze_stem_and_first_k():
    pairs, norm_eval = freeze(1, "efficientnet_lite0")
    labels = Policy.from_pairs(pairs).trainable_mask(PATHS)
    assert not labels["backbone"]["stem"]["conv"]["kernel"]
    assert not labels["backbone"]["stage1"]["block1"]["kernel"]
    assert labels["backbone"]["stage2"]["block1"]["kernel"] and labels["head"]["dense"]["kernel"]
    assert norm_eval == ["backbone/(stem|stage1)(/.*)?"]


def test_presets_follow_the_family():
    pairs, norm_eval = freeze(2, "vit_s16")
    assert pairs[0][0] == "backbone/(embed|block1|block2)/.*" and norm_eval == []
    assert freeze("head", "bit_r50x1")[1] == []  # no BatchNorm to hold
    assert freeze("head", "resnet50")[1] == ["backbone/.*"]
    # a dense model's neck is new too: it trains with the head
    assert freeze("head", "resnet50", neck=True)[0][0] == ("(neck|head)/.*", "train")
    assert freeze("stages:0", "resnet50")[0][0][0] == "backbone/(stem)/.*"


def test_bad_presets():
    with pytest.raises(ValueError, match="unknown freeze preset 'some'"):
        freeze("some", "resnet50")
    with pytest.raises(ValueError, match="stages 0..7 to freeze, got 8"):
        freeze(8, "efficientnet_lite0")


def test_gradual_unfreezing_goes_top_down_with_batch_norm_following():
    pairs, norm_eval = gradual_unfreezing("efficientnet_lite0", [1, 2])
    assert pairs == [
        ("head/.*", "train"),
        ("backbone/top/.*", {"start_epoch": 1}),
        ("backbone/stage7/.*", {"start_epoch": 2}),
        (".*", "frozen"),
    ]
    assert norm_eval[:2] == [
        ("backbone/top(/.*)?", {"until_epoch": 1}),
        ("backbone/stage7(/.*)?", {"until_epoch": 2}),
    ]
    assert norm_eval[2] == "backbone/(stage6|stage5|stage4|stage3|stage2|stage1|stem)(/.*)?"
    policy = Policy.from_pairs(pairs, Epochs(num_examples=100, batch_size=10))
    assert policy.phase_starts() == [0, 10, 20]
    # every subtree unfrozen: no catch-all frozen rule left to match nothing
    pairs, norm_eval = gradual_unfreezing("vit_ti16", range(1, 15))
    assert pairs[-1] == ("backbone/embed/.*", {"start_epoch": 14}) and norm_eval == []


def test_bad_unfreezing_schedules():
    with pytest.raises(ValueError, match=r"positive and increasing, got \[2, 1\]"):
        gradual_unfreezing("resnet50", [2, 1])
    with pytest.raises(ValueError, match="positive and increasing"):
        gradual_unfreezing("resnet50", [0, 1])
    with pytest.raises(ValueError, match="5 subtrees to unfreeze, got 6"):
        gradual_unfreezing("resnet50", [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="must start after epoch 0"):
        lp_ft("resnet50", 0)


def test_lp_ft_is_a_probe_then_everything():
    pairs, norm_eval = lp_ft("resnet50", 2.5)
    assert pairs == [("head/.*", "train"), (".*", {"start_epoch": 2.5})]
    assert norm_eval == [("backbone/.*", {"until_epoch": 2.5})]
    assert lp_ft("vit_s16", 1)[1] == []


def test_layerwise_lr_decay_counts_blocks_from_the_top():
    pairs = layerwise_lr_decay("vit_ti16", 0.5)
    mults = {p: r["lr_mult"] for p, r in pairs[1:]}
    assert mults["backbone/norm/.*"] == 0.5
    assert mults["backbone/block12/.*"] == 0.25
    assert mults["backbone/embed/.*"] == 0.5**14
    with pytest.raises(ValueError, match=r"in \(0, 1\], got 1.5"):
        layerwise_lr_decay("vit_ti16", 1.5)


def test_bitfit_trains_biases_and_optionally_scales():
    params = {
        "backbone": {"block1": {"conv": {"kernel": 0, "bias": 0}, "norm": {"scale": 0, "bias": 0}}},
        "head": {"dense": {"kernel": 0, "bias": 0}},
    }
    mask = Policy.from_pairs(bitfit("vit_ti16")).trainable_mask(params)
    assert mask["backbone"]["block1"]["conv"]["bias"] and mask["backbone"]["block1"]["norm"]["bias"]
    assert not mask["backbone"]["block1"]["norm"]["scale"]
    assert not mask["backbone"]["block1"]["conv"]["kernel"] and mask["head"]["dense"]["kernel"]
    mask = Policy.from_pairs(bitfit("vit_ti16", norm_scales=True)).trainable_mask(params)
    assert mask["backbone"]["block1"]["norm"]["scale"]


def test_the_cached_probe_checkpoints_at_its_end_and_on_preemption_only():
    """Its head trains in about a second and a resumed run extracts the features again, so
    periodic head checkpoints would protect nothing and cost a third of the head's time."""
    config = base_config.get_config()
    apply_strategy(config, "cached_probe", STRATEGY_KNOBS)
    assert config.cache_features and config.checkpoint_every == 0
    apply_strategy(config, "linear_probe", STRATEGY_KNOBS)
    assert not config.cache_features and config.checkpoint_every == 0  # left as it was set


def test_fine_tuning_holds_the_backbone_batch_norm_unless_told_to_train_it():
    """configs/transfer.py's `bn`: frozen by default whatever the strategy holds on its own,
    the strategy's own BatchNorm policy with bn=train; never from scratch or without BatchNorm."""
    transfer = config_files.load(
        os.path.join(os.path.dirname(__file__), "..", "configs", "transfer.py")
    )
    for strategy in ("full", "gradual", "lp_ft", "llrd", "frozen_stages"):
        assert list(transfer.get_config(f"strategy={strategy}").norm_eval) == ["backbone/.*"]
    assert list(transfer.get_config("strategy=full,bn=train").norm_eval) == []
    gradual = transfer.get_config("strategy=gradual,bn=train,epochs=10").norm_eval
    assert gradual[0] == ("backbone/top(/.*)?", {"until_epoch": 1})
    assert list(transfer.get_config("strategy=scratch").norm_eval) == []
    assert list(transfer.get_config("strategy=full,model=vit_ti16").norm_eval) == []
    with pytest.raises(JTransferError, match="bn='fozen' is not one of.*did you mean 'frozen'"):
        transfer.get_config("bn=fozen")
