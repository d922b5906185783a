"""Exact resume through the command line: killed (SIGKILL) or preempted (SIGTERM) at a random
step, a rerun of the same command ends with the parameters and BatchNorm statistics of a run
never interrupted, bit for bit; also across a gradual-unfreezing phase boundary. A workdir
holding another config's checkpoints is refused before anything trains.

One uninterrupted reference run (module fixture) serves every comparison. The config unfreezes
the top backbone stage at step 12 of 16 (phase 0: the head; phase 1: head and stage), on a
16-image folder in batches of 4, so the runs cross epochs too.
"""

import json
import os
import random
import re

import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
from cli import command, popen, run
from images import dark_and_light

from jtransfer import distributed
from jtransfer.policy import flatten
from jtransfer.pretrained.orbax_reader import read_run

pytestmark = pytest.mark.slow
STEPS, BOUNDARY = 16, 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return dark_and_light(tmp_path_factory.mktemp("images"))


def _command(folder, workdir, *overrides):
    # 4 steps per epoch: unfreeze=[3] starts phase 1 at step 12, where the top's BatchNorm
    # starts training too (bn=train).
    config = (
        f"configs/transfer.py:data={folder},strategy=gradual,unfreeze=[3],res=32,batch=4,bn=train"
    )
    return command(
        workdir,
        None,
        f"--config.total_steps={STEPS}",
        "--config.checkpoint_every=3",
        "--config.log_every=1",
        "--config.schedule.warmup_steps=2",
        *overrides,
        config=config,
    )


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory) -> tuple[str, dict]:
    workdir = tmp_path_factory.mktemp("reference")
    out = run(_command(folder, workdir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"step {BOUNDARY:>6}: phase 1 begins" in out.stdout, out.stdout
    return str(workdir), read_run(workdir)


def _saved_steps(workdir) -> list[int]:
    """The complete checkpoints (orbax names a step directory by its number once complete)."""
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _interrupt(cmd, workdir, at_step: int, sig: int) -> tuple[int, str]:
    """Runs `cmd`, sends `sig` once the progress line of `at_step` or a later one appears and a
    checkpoint is complete (saves are asynchronous); returns (status, output)."""
    proc = popen(cmd)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            match = re.match(r"step\s+(\d+)/", line)
            if match and int(match.group(1)) >= at_step and _saved_steps(workdir):
                proc.send_signal(sig)
                break
        else:
            pytest.fail(f"the run ended before step {at_step}:\n{''.join(lines)}")
        lines += proc.stdout.readlines()
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, "".join(lines)


def _assert_identical(reference: dict, workdir) -> None:
    resumed = read_run(workdir)
    for collection in ("params", "batch_stats"):
        flat_a, flat_b = flatten(reference[collection]), flatten(resumed[collection])
        assert flat_a.keys() == flat_b.keys()
        different = [p for p in flat_a if not np.array_equal(flat_a[p], flat_b[p])]
        assert not different, f"{collection} differ from the uninterrupted run: {different[:5]}"


def _resumed_from(output: str) -> tuple[int, int]:
    match = re.search(r"resumed from step (\d+) of \d+ \(phase (\d+)\)", output)
    assert match, output
    return int(match.group(1)), int(match.group(2))


def test_other_config_in_workdir_is_refused_naming_the_fields(folder, reference):
    workdir, _ = reference
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    out = run(
        _command(folder, workdir, "--config.seed=1", "--config.lr=0.5", "--config.eval_every=5")
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "seed: 0 -> 1" in out.stderr and "lr: 0.01 -> 0.5" in out.stderr, out.stderr[-3000:]
    assert "eval_every" not in out.stderr  # harmless fields may change
    assert "training steps" not in out.stdout
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_sigkill_in_phase_0_resumes_across_the_boundary_bit_identical(folder, reference, tmp_path):
    kill_at = random.randint(4, BOUNDARY - 3)  # checkpoints at 3, 6, 9: all in phase 0
    status, output = _interrupt(_command(folder, tmp_path), tmp_path, kill_at, 9)
    assert status == -9, output
    assert not os.path.exists(tmp_path / "final_eval.json")

    resumed_at = _saved_steps(tmp_path)[-1]
    seconds_before = _saved_train_seconds(tmp_path, resumed_at)
    out = run(_command(folder, tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert _resumed_from(out.stdout) == (resumed_at, 0), f"killed after step {kill_at}"
    assert f"step {BOUNDARY:>6}: phase 1 begins" in out.stdout
    _assert_identical(reference[1], tmp_path)
    _assert_logged_once(reference[0], tmp_path)
    # train_seconds counts the training before the kill too.
    with open(tmp_path / "final_eval.json") as f:
        final = json.load(f)
    assert final["train_seconds"] > seconds_before > 0


def test_sigterm_saves_exits_75_and_resumes_bit_identical(folder, reference, tmp_path):
    term_at = random.randint(BOUNDARY + 1, STEPS - 3)  # phase 1: the checkpoint records it
    status, output = _interrupt(_command(folder, tmp_path), tmp_path, term_at, 15)
    assert status == distributed.PREEMPTED_EXIT_CODE, output
    saved = re.search(r"preempted: state saved at step (\d+)", output)
    assert saved and term_at <= int(saved.group(1)) < STEPS, output
    assert int(saved.group(1)) in _saved_steps(tmp_path)

    out = run(_command(folder, tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert _resumed_from(out.stdout) == (int(saved.group(1)), 1)
    _assert_identical(reference[1], tmp_path)
    _assert_logged_once(reference[0], tmp_path)


def _metric_rows(workdir) -> list[tuple[int, tuple[str, ...]]]:
    """(step, metric names) of every metrics.jsonl row, in order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [(row["step"], tuple(sorted(k for k in row if k != "step"))) for row in rows]


def _event_steps(workdir) -> dict[str, list[int]]:
    """Tag -> the steps of its TensorBoard scalar events, in the order they were written."""
    steps: dict[str, list[int]] = {}
    for name in sorted(os.listdir(os.path.join(workdir, "tensorboard"))):
        path = os.path.join(workdir, "tensorboard", name)
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return steps


def _assert_logged_once(reference_dir, workdir) -> None:
    """Every step is logged once, exactly as by the uninterrupted run, in both records."""
    rows = _metric_rows(workdir)
    assert rows == _metric_rows(reference_dir)
    train_steps = [step for step, names in rows if "train/loss" in names]
    assert train_steps == list(range(1, STEPS + 1))
    assert _event_steps(workdir) == _event_steps(reference_dir)


def _saved_train_seconds(workdir, step: int) -> float:
    path = os.path.join(workdir, "checkpoints", str(step), "default")
    return float(ocp.StandardCheckpointer().restore(path)["train_seconds"])


def test_a_finished_run_says_so_and_changes_nothing(folder, reference):
    workdir, _ = reference
    before = {
        name: (os.path.getmtime(os.path.join(workdir, name)), _read(workdir, name))
        for name in ("metrics.jsonl", "final_eval.json", "config.json")
    }
    checkpoints = _saved_steps(workdir)
    out = run(_command(folder, workdir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"finished at step {STEPS}; nothing to do" in out.stdout
    assert "training steps" not in out.stdout
    for name, (mtime, content) in before.items():
        assert (os.path.getmtime(os.path.join(workdir, name)), _read(workdir, name)) == (
            mtime,
            content,
        ), name
    assert _saved_steps(workdir) == checkpoints


def _read(workdir, name) -> str:
    with open(os.path.join(workdir, name)) as f:
        return f.read()


def test_config_json_alone_guards_the_workdir(folder, reference, tmp_path):
    """A run that died before its first checkpoint left config.json: another config is still
    refused there."""
    with open(tmp_path / "config.json", "w") as f:
        f.write(_read(reference[0], "config.json"))
    out = run(_command(folder, tmp_path, "--config.seed=3"))
    assert out.returncode == 2
    assert "seed: 0 -> 3" in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["config.json"]
