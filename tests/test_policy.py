import logging

import numpy as np
import pytest

from jtransfer.policy import Policy, PolicyError, Rule, merge, split

PARAMS = {
    "backbone": {
        "stem": {"conv": {"kernel": np.zeros((3, 3, 3, 8))}},
        "stage1": {"block1": {"conv": {"kernel": np.zeros((1, 1, 8, 8))}}},
        "stage10": {"block1": {"conv": {"kernel": np.zeros((1, 1, 8, 4))}}},
    },
    "head": {"dense": {"kernel": np.zeros((4, 2)), "bias": np.zeros(2)}},
}


def test_first_full_match_wins():
    policy = Policy.from_pairs(
        [("backbone/stage1/.*", "frozen"), ("backbone/.*", {"lr_mult": 0.1}), (".*", "train")]
    )
    assigned = policy.assign(PARAMS)
    assert assigned["backbone/stage1/block1/conv/kernel"] == 0
    # full matching: 'stage1' does not swallow 'stage10'
    assert assigned["backbone/stage10/block1/conv/kernel"] == 1
    assert assigned["head/dense/bias"] == 2
    labels = policy.labels(PARAMS)
    assert labels["backbone"]["stage1"]["block1"]["conv"]["kernel"] == "frozen"
    assert labels["backbone"]["stem"]["conv"]["kernel"] == "rule1"
    mask = policy.trainable_mask(PARAMS)
    assert mask["backbone"]["stage1"]["block1"]["conv"]["kernel"] is False
    assert mask["head"]["dense"]["kernel"] is True


def test_unmatched_parameters_and_dead_rules_are_listed():
    with pytest.raises(PolicyError) as e:
        Policy.from_pairs([("head/.*", "train"), ("neck/.*", "frozen")]).assign(PARAMS)
    msg = str(e.value)
    assert "backbone/stem/conv/kernel" in msg and "backbone/stage10/block1/conv/kernel" in msg
    assert "neck/.*" in msg


def test_rule_shadowed_by_earlier_rule_is_dead():
    with pytest.raises(PolicyError, match="head/dense/.*"):
        Policy.from_pairs([(".*", "train"), ("head/dense/.*", "frozen")]).assign(PARAMS)


def test_bad_rules():
    with pytest.raises(PolicyError, match="lr_mult must be >= 0"):
        Policy.from_pairs([(".*", {"lr_mult": -1})])
    with pytest.raises(PolicyError, match="unknown rule fields"):
        Policy.from_pairs([(".*", {"lr": 1})])
    with pytest.raises(PolicyError, match="bad policy regex"):
        Policy.from_pairs([("(", "train")])
    with pytest.raises(PolicyError, match="'frozen', 'train'"):
        Policy.from_pairs([(".*", "freeze")])


def test_lr_mult_zero_warns(caplog):
    with caplog.at_level(logging.WARNING):
        Policy.from_pairs([(".*", {"lr_mult": 0.0})]).warn_if_misleading()
    assert "not a freeze" in caplog.text


def test_report_counts_leaves_and_parameters():
    report = Policy.from_pairs([("head/.*", "train"), (".*", "frozen")]).report(PARAMS)
    lines = report.splitlines()
    assert lines[1].split()[-2:] == ["2", "10"]  # head: kernel 8 + bias 2
    assert lines[2].split()[-2:] == ["3", "312"]  # 216 + 64 + 32
    assert lines[-1].startswith("trainable 10 of 322 parameters")


def test_split_merge_roundtrip():
    mask = Policy.from_pairs([("head/.*", "train"), (".*", "frozen")]).trainable_mask(PARAMS)
    trainable, frozen = split(PARAMS, mask)
    assert trainable["backbone"]["stem"]["conv"]["kernel"] is None
    assert frozen["head"]["dense"]["bias"] is None
    back = merge(trainable, frozen)
    assert (
        back["backbone"]["stem"]["conv"]["kernel"] is PARAMS["backbone"]["stem"]["conv"]["kernel"]
    )
    assert back["head"]["dense"]["bias"] is PARAMS["head"]["dense"]["bias"]


def test_rule_describe():
    assert Rule(lr_mult=0.1).describe() == "train (lr=0.1)"
