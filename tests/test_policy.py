import logging
import re

import numpy as np
import pytest

from jtransfer.epochs import Epochs
from jtransfer.policy import NormEval, Policy, PolicyError, Rule, merge, overlay, select, split

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


def test_late_rules_cut_the_run_into_phases():
    policy = Policy.from_pairs(
        [
            ("head/.*", "train"),
            ("backbone/stage10/.*", {"start_step": 5}),
            ("backbone/stage1/.*", {"start_epoch": 2}),
            (".*", "frozen"),
        ],
        epochs=Epochs(num_examples=8, batch_size=2),  # 4 steps per epoch
    )
    assert policy.phase_starts() == [0, 5, 8]
    mask = lambda step: policy.trainable_mask(PARAMS, step)  # noqa: E731
    assert not mask(4)["backbone"]["stage10"]["block1"]["conv"]["kernel"]
    assert mask(5)["backbone"]["stage10"]["block1"]["conv"]["kernel"]
    assert not mask(7)["backbone"]["stage1"]["block1"]["conv"]["kernel"]
    assert mask(8)["backbone"]["stage1"]["block1"]["conv"]["kernel"]
    assert not mask(100)["backbone"]["stem"]["conv"]["kernel"]
    assert set(policy.trainable_rules(0)) == {"rule0"}
    assert set(policy.trainable_rules(5)) == {"rule0", "rule1"}
    assert policy.labels(PARAMS, 4)["backbone"]["stage10"]["block1"]["conv"]["kernel"] == "frozen"
    assert policy.labels(PARAMS, 5)["backbone"]["stage10"]["block1"]["conv"]["kernel"] == "rule1"
    assert "train from step 5" in policy.report(PARAMS)


def test_bad_phase_rules():
    with pytest.raises(PolicyError, match="start_step must be >= 0"):
        Policy.from_pairs([(".*", {"start_step": -1})])
    with pytest.raises(PolicyError, match="needs the split and batch size"):
        Policy.from_pairs([(".*", {"start_epoch": 1})])
    with pytest.raises(PolicyError, match="frozen rule has no start_step"):
        Policy.from_pairs([(".*", {"trainable": False, "start_step": 3})])


BATCH_STATS = {
    "backbone": {
        "stem": {"bn": {"mean": np.zeros(8), "var": np.ones(8)}},
        "stage1": {"block1": {"bn": {"mean": np.zeros(8), "var": np.ones(8)}}},
    }
}


def test_norm_eval_entries_and_their_phases():
    norm = NormEval.from_config(
        ["backbone/stem", ("backbone/stage1", {"until_epoch": 1}), ("x", 7)], epochs=Epochs(9, 3)
    )
    assert norm.entries == (("backbone/stem", None), ("backbone/stage1", 3), ("x", 7))
    assert norm.phase_starts() == [0, 3, 7]
    assert re.search(norm.regex(2), "backbone/stage1/block1/bn")
    assert not re.search(norm.regex(3), "backbone/stage1/block1/bn")
    assert re.search(norm.regex(3), "backbone/stem/bn")
    assert NormEval.from_config("backbone/.*").entries == (("backbone/.*", None),)
    assert NormEval.from_config("").regex() == ""


def test_norm_eval_naming_no_batch_norm_is_an_error():
    NormEval.from_config("backbone/stage1").check(BATCH_STATS)
    with pytest.raises(PolicyError, match=r"name no BatchNorm layer: \['backbone/stage9'\]"):
        NormEval.from_config(["backbone/stem", "backbone/stage9"]).check(BATCH_STATS)
    with pytest.raises(PolicyError, match="this model has no BatchNorm"):
        NormEval.from_config("backbone/.*").check({})
    with pytest.raises(PolicyError, match="until_step must be > 0"):
        NormEval.from_config([("backbone/stem", 0)])
    with pytest.raises(PolicyError, match="bad norm_eval regex"):
        NormEval.from_config("(")


def test_select_and_overlay():
    mask = Policy.from_pairs([("head/.*", "train"), (".*", "frozen")]).trainable_mask(PARAMS)
    head = select(PARAMS, mask)
    assert list(head) == ["head"] and set(head["head"]["dense"]) == {"kernel", "bias"}
    new = overlay(PARAMS, {"head": {"dense": {"bias": np.ones(2)}}})
    assert new["head"]["dense"]["bias"].tolist() == [1, 1]
    assert new["backbone"]["stem"]["conv"]["kernel"] is PARAMS["backbone"]["stem"]["conv"]["kernel"]
