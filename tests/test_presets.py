import pytest

from jtransfer.policy import Policy
from jtransfer.presets import freeze

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
    assert norm_eval == "backbone/(stem|stage1)(/.*)?"


def test_presets_follow_the_family():
    pairs, norm_eval = freeze(2, "vit_s16")
    assert pairs[0][0] == "backbone/(embed|block1|block2)/.*" and norm_eval == ""
    assert freeze("head", "bit_r50x1")[1] == ""  # no BatchNorm to hold
    assert freeze("head", "resnet50")[1] == "backbone/.*"
    assert freeze("stages:0", "resnet50")[0][0][0] == "backbone/(stem)/.*"


def test_bad_presets():
    with pytest.raises(ValueError, match="unknown freeze preset 'some'"):
        freeze("some", "resnet50")
    with pytest.raises(ValueError, match="stages 0..7 to freeze, got 8"):
        freeze(8, "efficientnet_lite0")
