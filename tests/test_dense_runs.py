"""Segmentation and detection end to end through the command line, on the offline data at small
sizes: the configs, sources, dense models, losses and evaluators of a real run; frozen parameters
and held statistics bit-identical; one device and eight giving the same losses; a run killed
with SIGKILL resuming bit-identical.

The quick runs check the pipeline, not the figures (those are in the README, measured with the
full configs).
"""

import json
import os
import re

import numpy as np
import pytest
from cli import command, losses, popen, run
from shared_data import shared_data

from jtransfer.policy import flatten
from jtransfer.pretrained.orbax_reader import read_run

pytestmark = pytest.mark.slow
QUICK = ["--config.log_every=1", "--config.schedule.warmup_steps=1", "--config.eval_batch_size=8"]


def _segmentation(workdir, *overrides, arg=""):
    pets = shared_data("oxford_pets3")
    config = f"configs/segmentation.py:data={pets},res=64,batch=4{arg}"
    return command(workdir, None, "--config.total_steps=4", *QUICK, *overrides, config=config)


def _detection(workdir, *overrides, arg=""):
    bccd = shared_data("bccd")
    config = f"configs/detection.py:data={bccd},res=128,batch=4,boxes=40{arg}"
    return command(workdir, None, "--config.total_steps=4", *QUICK, *overrides, config=config)


def _final(workdir) -> dict:
    with open(os.path.join(workdir, "final_eval.json")) as f:
        return json.load(f)


def test_segmentation_with_frozen_stages_on_one_and_eight_devices(tmp_path):
    """Frozen stages and held statistics stay bit-identical, the rest trains, every test image
    is evaluated, and eight devices give the losses of one."""
    per_run, arg = {}, ",strategy=frozen_stages,stages=3"
    for devices in (1, 8):
        workdir = tmp_path / str(devices)
        only_losses = [] if devices == 1 else ["--config.data.eval_split=test[:8]"]
        cmd = _segmentation(workdir, "--config.batch_size=8", *only_losses, arg=arg)
        out = run(cmd, devices)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"mesh data={devices} " in out.stdout  # the run had the devices it was given
        per_run[devices] = losses(workdir)
    assert len(per_run[1]) == 4
    for a, b in zip(per_run[1], per_run[8], strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), per_run

    workdir = tmp_path / "1"
    final = _final(workdir)["eval"]
    assert final["count"] == 298  # every test image of the paper's split
    assert 0 <= final["mean_iou"] <= 1 and set(final) >= {"iou/background", "iou/pet"}
    from jtransfer import pretrained

    start = flatten(pretrained.load("efficientnet_lite0/imagenet"))
    end = flatten(read_run(workdir))
    frozen = [p for p in end if re.match(r"params/backbone/(stem|stage1|stage2|stage3)/", p)]
    assert len(frozen) > 20
    for path in frozen:
        np.testing.assert_array_equal(end[path], start[path], err_msg=path)
    # Every backbone BatchNorm is held at this batch size: statistics unchanged everywhere.
    stats = [p for p in end if p.startswith("batch_stats/backbone/")]
    for path in stats:
        np.testing.assert_array_equal(end[path], start[path], err_msg=path)
    trained = [p for p in end if p.startswith("params/backbone/stage7/")]
    assert any(not np.array_equal(end[p], start[p]) for p in trained)


def test_detection_reports_coco_metrics_and_resumes_bit_identical_after_sigkill(tmp_path):
    cmd = _detection(tmp_path / "whole", "--config.total_steps=6", "--config.checkpoint_every=2")
    out = run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    final = _final(tmp_path / "whole")["eval"]
    assert final["count"] == 72  # bccd's test split
    assert {"mAP", "mAP50", "AP50/WBC", "AP50/RBC", "AP50/Platelets"} <= set(final)
    assert "final evaluation at step 6" in out.stdout and "mAP50" in out.stdout

    workdir = tmp_path / "killed"
    cmd = _detection(workdir, "--config.total_steps=6", "--config.checkpoint_every=2")
    proc = popen(cmd)
    try:
        for line in proc.stdout:
            if re.match(r"step\s+[3-5]/", line) and os.path.isdir(workdir / "checkpoints" / "2"):
                proc.kill()
                break
    finally:
        proc.kill()
        proc.wait()
    assert not os.path.exists(workdir / "final_eval.json")
    out = run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from step" in out.stdout
    whole, resumed = flatten(read_run(tmp_path / "whole")), flatten(read_run(workdir))
    assert whole.keys() == resumed.keys()
    for path, value in whole.items():
        np.testing.assert_array_equal(resumed[path], value, err_msg=path)
