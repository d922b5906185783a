"""Several processes through the command line: two local processes of 4 CPU devices each, joined
by `jax.distributed` on 127.0.0.1, train like one process of 8 devices and stop together on
a SIGTERM to either; a coordinator that never answers is an error within the initialization
timeout, not a hang."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
from cli import FAST, command, losses, popen, run

from jtransfer import distributed
from jtransfer.policy import flatten
from jtransfer.pretrained.orbax_reader import read_run

# Every BatchNorm layer in inference mode: train-mode BatchNorm makes float32 gradients only
# ~3e-3 accurate (see test_main), which would hide the process split behind rounding; it also
# adds a cross-process all-reduce per layer, which on CPU (gloo over TCP) multiplies the run time
# by six. The trainable stages still train, so gradients and updates cross the processes.
SHORT = [
    *FAST,
    "--config.total_steps=4",
    "--config.schedule.warmup_steps=2",
    "--config.norm_eval=('backbone/.*',)",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _final_eval(workdir) -> dict:
    with open(os.path.join(workdir, "final_eval.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_two_processes_of_four_devices_train_like_one_of_eight(tmp_path, data_dir):
    cmd = command(tmp_path / "one", data_dir, *SHORT)
    out = run(cmd, devices=8)
    assert out.returncode == 0, out.stderr[-3000:]

    workdir = tmp_path / "two"
    procs = _two_processes(workdir, data_dir)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, output in zip(procs, outputs, strict=True):
        assert p.returncode == 0, output[-3000:]
    assert "final eval" in outputs[0]
    # Every console line of the run comes from process 0 alone.
    for line in ("training steps", "parameter policy", "mesh data", "grafted", "final eval"):
        assert line in outputs[0] and line not in outputs[1], (line, outputs[1][-3000:])

    one, two = read_run(tmp_path / "one"), read_run(workdir)
    for collection in ("params", "batch_stats"):
        a, b = flatten(one[collection]), flatten(two[collection])
        assert a.keys() == b.keys()
        for path in a:
            scale = max(np.abs(a[path]).max(), 1e-30)
            assert np.abs(a[path] - b[path]).max() <= 1e-5 * scale, (collection, path)
    assert len(losses(workdir)) == 4  # one writer: process 0
    eval_one, eval_two = _final_eval(tmp_path / "one")["eval"], _final_eval(workdir)["eval"]
    assert eval_two["count"] == eval_one["count"] == 360
    # Parameters 1e-5 apart may flip a near tie; more than one flipped example would be a bug.
    assert abs(eval_two["accuracy"] - eval_one["accuracy"]) * 360 <= 1 + 1e-9


def _two_processes(workdir, data_dir, *overrides) -> list[subprocess.Popen]:
    cmd = command(workdir, data_dir, *SHORT, *overrides)
    address = f"--coordinator_address=127.0.0.1:{_free_port()}"
    return [popen([*cmd, address, "--num_processes=2", f"--process_id={i}"], 4) for i in (0, 1)]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(tmp_path, data_dir):
    """JAX's preemption service carries the notice to the other process; both save the same
    step (a checkpoint is a collective) and exit 75."""
    procs = _two_processes(tmp_path, data_dir, "--config.total_steps=40")
    lines = []
    try:
        for line in procs[0].stdout:
            lines.append(line)
            if re.match(r"step\s+3/", line):
                procs[1].send_signal(signal.SIGTERM)
                break
        outputs = ["".join(lines) + procs[0].communicate(timeout=300)[0]]
        outputs.append(procs[1].communicate(timeout=300)[0])
    finally:
        for p in procs:
            p.kill()
            p.wait()
    # Process 0 says where the run stopped; both saved that step together (one checkpoint).
    saved = re.search(r"preempted: state saved at step (\d+)", outputs[0])
    assert saved and "preempted" not in outputs[1], outputs[0][-3000:] + outputs[1][-3000:]
    assert [p.returncode for p in procs] == [distributed.PREEMPTED_EXIT_CODE] * 2
    assert os.listdir(tmp_path / "checkpoints") == [saved.group(1)]


@pytest.mark.parametrize("process_id", [0, 1])
def test_unreachable_coordinator_fails_within_the_timeout(tmp_path, process_id):
    """Process 1 finds nobody at the address; process 0 (the coordinator) waits for a process
    1 that never comes. Either way the run ends with an error, after about the timeout."""
    address = f"127.0.0.1:{_free_port()}"
    cmd = command(tmp_path, tmp_path, f"--coordinator_address={address}", "--num_processes=2")
    start = time.perf_counter()
    out = run([*cmd, f"--process_id={process_id}", "--initialization_timeout=3"], timeout=120)
    elapsed = time.perf_counter() - start
    assert out.returncode != 0
    assert elapsed < 60, elapsed  # imports included; the default timeout would be 300 s
    if process_id == 1:
        assert f"could not reach the coordinator at {address}" in out.stderr, out.stderr[-3000:]
    else:
        assert f"coordinator {address}, process 0 of 2, waiting up to 3 s" in out.stderr
