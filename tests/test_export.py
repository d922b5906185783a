"""Export of a run's weights to one file, and loading that file back in the native layout."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from runs import save_run

from jtransfer.export import export
from jtransfer.pretrained import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(0)
VARIABLES = {
    "params": {
        "backbone": {
            "conv": {"kernel": RNG.normal(size=(3, 3, 3, 4)).astype(np.float32)},
            "bn": {"scale": RNG.normal(size=4).astype(np.float32)},
        },
        "head": {"dense": {"kernel": RNG.normal(size=(4, 2)).astype(np.float32)}},
    },
    "batch_stats": {"backbone": {"bn": {"mean": RNG.normal(size=4).astype(np.float32)}}},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    save_run(workdir, 4, jax.tree.map(lambda x: 2 * x, VARIABLES))
    save_run(workdir, 9, VARIABLES)
    return workdir


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same(a[key], b[key])
        else:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip(run, tmp_path, suffix):
    out = tmp_path / f"weights{suffix}"
    arrays = export(run, out)
    assert sorted(arrays) == [
        "batch_stats/backbone/bn/mean",
        "params/backbone/bn/scale",
        "params/backbone/conv/kernel",
        "params/head/dense/kernel",
    ]
    _assert_same(load(str(out)), VARIABLES)
    assert list(tmp_path.iterdir()) == [out]  # no partial file left behind


def test_exported_subtree(run, tmp_path):
    out = tmp_path / "weights.npz"
    export(run, out)
    part = load(f"{out}:backbone/bn")
    bn = {"scale": VARIABLES["params"]["backbone"]["bn"]["scale"]}
    _assert_same(
        part, {"params": {"backbone": {"bn": bn}}, "batch_stats": VARIABLES["batch_stats"]}
    )


def test_command_line_with_step(run, tmp_path):
    out = tmp_path / "step4.safetensors"
    cmd = [sys.executable, "-m", "jtransfer.export", f"--workdir={run}", f"--out={out}"]
    done = subprocess.run([*cmd, "--step=4"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote 4 arrays (124 values) to {out}"
    _assert_same(load(str(out)), jax.tree.map(lambda x: 2 * x, VARIABLES))


def test_unknown_suffix(run, tmp_path):
    with pytest.raises(ValueError, match=r"weights\.pt: the suffix must be one of"):
        export(run, tmp_path / "weights.pt")
