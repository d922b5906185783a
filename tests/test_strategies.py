"""Every fine-tuning strategy of configs/transfer.py, a few steps each, end to end.

Each run starts from the real ImageNet EfficientNet-Lite0 weights on a tiny image folder at
32 px and ends with the invariants checked against the loaded values: every parameter that
never trained and every BatchNorm statistic held in inference mode is bit-identical, and what
trained has moved. Phased strategies are checked at the phase boundary too.
"""

import importlib.util
import os
import re
import shutil

import numpy as np
import pytest
from images import dark_and_light

from jtransfer import data, presets, tasks, train
from jtransfer.epochs import Epochs
from jtransfer.policy import NormEval, Policy, flatten
from jtransfer.pretrained.orbax_reader import read_run

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, BATCH = 4, 8  # 16 training images: 2 steps per epoch


def _transfer_config(arg):
    spec = importlib.util.spec_from_file_location("transfer", f"{ROOT}/configs/transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return dark_and_light(tmp_path_factory.mktemp("images"))


def _run(folder, workdir, arg, **overrides):
    config = _transfer_config(f"data={folder},res=32,batch={BATCH},{arg}")
    with config.unlocked():
        config.total_steps = STEPS
        config.eval_batch_size = 8
        config.schedule.warmup_steps = 0
        config.checkpoint_every = 2
        config.keep_checkpoints = 3
        config.log_every = 2
        for key, value in overrides.items():
            setattr(config, key, value)
    result = train.train_and_evaluate(config, str(workdir))
    return config, result


def _start(config, workdir):
    """The variables the run started from (ImageNet weights + fresh head), recomputed."""
    source = data.build_source(config.data)
    model = tasks.build(config, source.class_names).build_model()
    return train.initial_variables(model, config, (32, 32, 3))[0]


def _held_for(norm: NormEval, layer: str, steps: range) -> bool:
    return all(norm.regex(s) and re.search(norm.regex(s), layer) for s in steps)


def _check_invariants(config, workdir, step):
    """At checkpoint `step`: every leaf frozen before it and every BatchNorm statistic held
    before it is bit-identical to the start; some of the rest moved. Returns (frozen, trained)."""
    start = _start(config, workdir)
    saved = read_run(os.path.join(workdir, "checkpoints", str(step)))
    epochs = Epochs(16, BATCH)
    policy = Policy.from_pairs(config.policy, epochs)
    masks = [flatten(policy.trainable_mask(start["params"], s)) for s in range(step)]
    before, now = flatten(start["params"]), flatten(saved["params"])
    trained = [p for p in before if any(m[p] for m in masks)]
    frozen = [p for p in before if p not in trained]
    for p in frozen:
        np.testing.assert_array_equal(now[p], before[p], err_msg=p)
    assert any(not np.array_equal(now[p], before[p]) for p in trained)

    norm = NormEval.from_config(config.norm_eval, epochs)
    stats_before, stats_now = flatten(start["batch_stats"]), flatten(saved["batch_stats"])
    held = [p for p in stats_before if _held_for(norm, p.rsplit("/", 1)[0], range(step))]
    for p in held:
        np.testing.assert_array_equal(stats_now[p], stats_before[p], err_msg=p)
    moving = [p for p in stats_before if p not in held]
    if moving:
        assert any(not np.array_equal(stats_now[p], stats_before[p]) for p in moving)
    return frozen, trained


# The phased strategies train BatchNorm (bn=train), so their statistics change mode at the
# boundary; by default (bn=frozen) every backbone statistic is held, which `full` checks.
STRATEGIES = {
    "full": "strategy=full",
    "full_bn_train": "strategy=full,bn=train",
    "linear_probe": "strategy=linear_probe",
    "cached_probe": "strategy=cached_probe",
    "frozen_stages": "strategy=frozen_stages,stages=2",
    "gradual": "strategy=gradual,unfreeze=[1],bn=train",
    "lp_ft": "strategy=lp_ft,lp_epochs=1,bn=train",
    "llrd": "strategy=llrd",
    "l2sp": "strategy=l2sp",
    "bitfit": "strategy=bitfit",
    "ema": "strategy=ema",
    "wise_ft": "strategy=wise_ft,alphas=[0.0,1.0]",
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_runs_and_keeps_frozen_things_frozen(folder, tmp_path, name):
    # the few-shot evaluator rides along with one of them
    extra = {}
    if name == "ema":
        extra["evals"] = {
            "eval": {"type": "classification"},
            "fewshot": {"type": "fewshot", "shots": (1, 2), "seeds": (0, 1)},
        }
    if name in ("l2sp", "ema", "wise_ft"):
        # These act on whatever trains; training only the top keeps their compile short.
        extra["policy"], extra["norm_eval"] = presets.freeze(6, "efficientnet_lite0")
    config, result = _run(folder, tmp_path, STRATEGIES[name], **extra)
    assert result["eval"]["count"] == 10
    frozen, trained = _check_invariants(config, tmp_path, STEPS)
    if name in ("linear_probe", "cached_probe"):
        assert all(p.startswith("head/") for p in trained) and len(frozen) > 100
    if name in ("gradual", "lp_ft"):  # at the boundary, the late rules have not moved yet
        _check_invariants(config, tmp_path, 2)
    if name == "ema":
        assert result["eval_ema"]["count"] == 10
        assert set(result["fewshot"]) >= {"1shot", "2shot"} and 0 <= result["fewshot"]["2shot"] <= 1
    if name == "wise_ft":
        assert result["wise_ft_1"] == result["eval"]


def test_cached_probe_trains_the_head_the_step_by_step_probe_trains(folder, tmp_path):
    _run(folder, tmp_path / "cached", STRATEGIES["cached_probe"])
    _run(folder, tmp_path / "stepwise", STRATEGIES["cached_probe"], cache_features=False)
    cached = read_run(tmp_path / "cached")["params"]["head"]
    stepwise = read_run(tmp_path / "stepwise")["params"]["head"]
    for name in ("kernel", "bias"):
        assert np.any(cached["dense"][name])
        np.testing.assert_allclose(
            cached["dense"][name], stepwise["dense"][name], rtol=1e-4, atol=1e-6
        )


def test_features_are_not_cached_when_they_could_change(folder, tmp_path):
    with pytest.raises(ValueError, match=r"cache_features=True, but pp_train .* has random ops"):
        _run(
            folder,
            tmp_path,
            "strategy=cached_probe",
            pp_train="decode|random_crop(32)|value_range(-1, 1)",
        )
    with pytest.raises(ValueError, match="parameters below the head train"):
        _run(folder, tmp_path, "strategy=full", cache_features=True)


def test_cached_probe_checkpoints_at_epoch_boundaries_and_resumes_exactly(folder, tmp_path):
    """2 steps an epoch, a checkpoint asked every 3 steps: the compiled chunks are 2 epochs
    long, so the head is saved at step 4 (the epoch boundary after step 3) and at the end; a
    run resumed from step 4 ends with the head of the uninterrupted one, bit for bit."""
    arg, every = STRATEGIES["cached_probe"], {"checkpoint_every": 3, "total_steps": 8}
    _run(folder, tmp_path / "whole", arg, **every)
    assert sorted(os.listdir(tmp_path / "whole" / "checkpoints")) == ["4", "8"]
    resumed = tmp_path / "resumed"
    _run(folder, resumed, arg, **every)
    os.remove(resumed / "final_eval.json")
    shutil.rmtree(resumed / "checkpoints" / "8")
    _run(folder, resumed, arg, **every)
    whole = flatten(read_run(tmp_path / "whole")["params"])
    again = flatten(read_run(resumed)["params"])
    for path in whole:
        np.testing.assert_array_equal(again[path], whole[path], err_msg=path)
