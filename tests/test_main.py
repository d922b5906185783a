"""End to end through the command line, in subprocesses (each its own JAX device count)."""

import sys

import pytest
from cli import FAST, command, losses, run, run_tracing_imports
from images import dark_and_light


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_unknown_config_key_names_close_match(tmp_path):
    out = run(command(tmp_path, tmp_path, "--config.batch_sise=8"))
    _one_error_line(out, "unknown config key 'batch_sise'")
    assert 'Did you mean "batch_size"' in out.stderr


def test_bad_config_argument(tmp_path):
    out = run(command(tmp_path, tmp_path, config="configs/transfer.py:modle=x"))
    _one_error_line(out, "did you mean 'model'")


@pytest.mark.slow
def test_eight_devices_and_an_fsdp_mesh_give_the_losses_of_one_device(tmp_path, data_dir):
    """Sharding must not change the math: 1 device, 8 data-parallel devices, and 8 devices as
    a data=2 x fsdp=4 mesh (sharded parameters: reduce-scatter instead of all-reduce; that run
    also skips the prefetch thread, which must not change the batches). The learning rate is
    lowered because float32 gradients of a network with train-mode BatchNorm are themselves only
    ~3e-3 accurate (measured against float64, on 1 and on 8 devices alike); at the quickstart's
    0.02 that rounding, not the sharding, separates the trajectories by ~1e-3 at step 10. Each
    run prints its own lines only (TF_CPP_MIN_LOG_LEVEL, set here, does not silence TensorFlow's
    oneDNN and absl start-up lines; `console.quiet_libraries` does)."""
    runs = {
        "1 device": (1, []),
        "8 devices": (8, []),
        "fsdp": (8, ["--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.prefetch=0"]),
    }
    per_run = {}
    for name, (devices, overrides) in runs.items():
        workdir = tmp_path / name.replace(" ", "_")
        cmd = command(workdir, data_dir, "--config.total_steps=10", "--config.lr=0.002", *FAST)
        out = run(cmd + overrides, devices)
        assert out.returncode == 0, out.stderr[-3000:]
        # Only the run's own lines (and TFDS's progress bars while it prepares digits): none of
        # TensorFlow's, absl's or orbax's start-up lines.
        for noise in ("oneDNN", "absl::InitializeLog", "Type handler registry", "dataset_info"):
            assert noise not in out.stderr + out.stdout, out.stderr[-3000:]
        per_run[name] = losses(workdir)
    assert "mesh data=2 × fsdp=4 × model=1: " in out.stdout
    assert len(per_run["1 device"]) == 10
    for other in ("8 devices", "fsdp"):
        for a, b in zip(per_run["1 device"], per_run[other], strict=True):
            assert abs(a - b) <= 1e-4 * abs(a), per_run


def test_commands_import_tensorflow_without_keras_which_stays_importable():
    """TensorFlow would import all of Keras 3 (and matplotlib, scikit-learn) at its own import;
    a command imports it without (`console.quiet_libraries`), and Keras still loads when asked."""
    code = (
        "import sys\n"
        "sys.argv = ['-m']\n"  # as Python sets it while importing `python -m jtransfer.main`
        "import jtransfer.main, jtransfer.train\n"
        "print('keras' in sys.modules, 'sklearn' in sys.modules)\n"
        "import tensorflow as tf\n"
        "print(tf.keras.layers.Dense(2)(tf.ones((1, 3))).shape)\n"
    )
    out = run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["False False", "(1, 2)"], out.stdout


def _one_error_line(out, message: str) -> None:
    """Refused as bad input: exit status 2, one `error:` line naming the value, no traceback."""
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("error: "), out.stderr[-3000:]
    assert message in lines[-1], lines[-1]


@pytest.mark.parametrize(
    "arg, message",
    [
        (
            "strategy=linear_prob",
            "strategy='linear_prob' is not one of ['scratch', 'full', 'linear_probe'",
        ),
        ("model=efficientnet_lite9", "unknown model 'efficientnet_lite9'"),
        ("resolution=32", "unknown config argument 'resolution'; did you mean 'res'?"),
        ("res=0", "config argument res must be a whole number > 0, got 0"),
    ],
)
def test_a_bad_config_argument_is_one_line_and_writes_nothing(tmp_path, arg, message):
    """Refused as the flags are parsed, before TensorFlow is imported (seconds of waiting)."""
    workdir = tmp_path / "run"
    out, imported = run_tracing_imports(
        command(workdir, tmp_path, config=f"configs/transfer.py:{arg}")
    )
    _one_error_line(out, message)
    assert not workdir.exists()
    assert "jax" in imported and "tensorflow" not in imported


@pytest.mark.parametrize(
    "fields,message",
    [
        (
            ("--config.batch_size=0", "--config.num_epochs=-1"),
            "batch_size must be a whole number >= 1, got 0; num_epochs must be >= 0",
        ),
    ],
)
def test_a_bad_field_value_is_one_line_and_writes_nothing(tmp_path, fields, message):
    workdir = tmp_path / "run"
    out = run(command(workdir, tmp_path, *fields))
    _one_error_line(out, message)
    assert not workdir.exists()


def test_a_schedule_longer_than_the_run_is_one_line_and_writes_nothing(tmp_path):
    folder = dark_and_light(tmp_path / "images")  # an image folder prints nothing as it opens
    workdir = tmp_path / "run"
    config = f"configs/transfer.py:data={folder},res=32"
    out = run(
        command(
            workdir,
            None,
            "--config.total_steps=4",
            "--config.schedule.warmup_steps=10",
            config=config,
        )
    )
    _one_error_line(out, "warmup_steps=10 must be in [0, total_steps=4]")
    assert not workdir.exists()


def test_a_missing_data_path_is_one_line(tmp_path):
    workdir = tmp_path / "run"
    out = run(command(workdir, None, f"--config.data.name={tmp_path}/no/such/folder"))
    _one_error_line(out, f"{tmp_path}/no/such/folder")
    assert not workdir.exists()
