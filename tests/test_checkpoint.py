"""Resuming a workdir: only the run that made it, whatever harmless fields changed."""

import pytest

from jtransfer.checkpoint import ResumeConfigError, check_resume_config

SAVED = {
    "seed": 0,
    "batch_size": 32,
    "model": {"name": "efficientnet_lite0"},
    "policy": [["head/.*", "train"], [".*", "frozen"]],
    "log_every": 20,
    "data": {"name": "digits", "data_dir": "/a"},
}


def _with(**changes) -> dict:
    new = {**SAVED, "model": dict(SAVED["model"]), "data": dict(SAVED["data"])}
    for key, value in changes.items():
        section, _, field = key.rpartition("__")
        (new[section] if section else new)[field] = value
    return new


def test_the_same_config_resumes():
    check_resume_config(SAVED, _with())


def test_harmless_fields_may_change():
    check_resume_config(SAVED, _with(log_every=1, eval_every=5, data__data_dir="/b"))


def test_differing_fields_are_named_with_both_values():
    new = _with(seed=1, model__name="vit_b16", policy=[[".*", "train"]], log_every=1)
    with pytest.raises(ResumeConfigError) as e:
        check_resume_config(SAVED, new)
    message = str(e.value)
    assert "seed: 0 -> 1" in message
    assert "model.name: 'efficientnet_lite0' -> 'vit_b16'" in message
    assert "policy: [['head/.*', 'train'], ['.*', 'frozen']] -> [['.*', 'train']]" in message
    assert "log_every" not in message


def test_a_field_one_config_lacks_is_a_difference():
    new = _with(grad_accum_steps=4)
    with pytest.raises(ResumeConfigError, match="grad_accum_steps: <absent> -> 4"):
        check_resume_config(SAVED, new)
