"""End to end through the command line, in subprocesses (each its own JAX device count)."""

import json
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
    "--config.pp_train=decode|resize(32)|value_range(-1, 1)",
    "--config.pp_eval=decode|resize(32)|value_range(-1, 1)",
    "--config.log_every=1",
    "--config.schedule.warmup_steps=5",
]


def _command(workdir, data_dir, *overrides, config="configs/quickstart.py"):
    return [
        sys.executable,
        "-m",
        "jtransfer.main",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *overrides,
    ]


def _env(devices=1):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _run(cmd, devices=1, timeout=600):
    return subprocess.run(
        cmd, cwd=ROOT, env=_env(devices), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def test_unknown_config_key_names_close_match(tmp_path):
    out = _run(_command(tmp_path, tmp_path, "--config.batch_sise=8"))
    assert out.returncode != 0
    assert "unknown config key 'batch_sise'" in out.stderr
    assert 'Did you mean "batch_size"' in out.stderr


def test_bad_config_argument(tmp_path):
    out = _run(_command(tmp_path, tmp_path, config="configs/transfer.py:modle=x"))
    assert out.returncode != 0 and "did you mean 'model'" in out.stderr


@pytest.mark.slow
def test_eight_devices_give_the_losses_of_one(tmp_path, data_dir):
    """Sharding must not change the math. The learning rate is lowered because float32
    gradients of a network with train-mode BatchNorm are themselves only ~3e-3 accurate
    (measured against float64, on 1 and on 8 devices alike); at the quickstart's 0.02 that
    rounding, not the sharding, separates the trajectories by ~1e-3 at step 10."""
    losses = {}
    for devices in (1, 8):
        workdir = tmp_path / f"d{devices}"
        out = _run(
            _command(workdir, data_dir, "--config.total_steps=10", "--config.lr=0.002", *FAST),
            devices,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        losses[devices] = _losses(workdir)
    assert len(losses[1]) == 10
    for a, b in zip(losses[1], losses[8], strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), (losses[1], losses[8])


@pytest.mark.slow
def test_quickstart_resumes_after_sigkill(tmp_path, data_dir):
    workdir = tmp_path / "run"
    cmd = _command(
        workdir, data_dir, "--config.total_steps=40", "--config.checkpoint_every=10", *FAST
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for line in proc.stdout:
            if line.startswith("step") and int(line.split()[1].split("/")[0]) >= 25:
                break
        else:
            pytest.fail("the run ended before step 25")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not os.path.exists(workdir / "final_eval.json")

    out = _run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = [line for line in out.stdout.splitlines() if line.startswith("resumed from step")]
    assert resumed and int(resumed[0].split()[3]) in (10, 20), out.stdout
    with open(workdir / "final_eval.json") as f:
        assert json.load(f)["step"] == 40
