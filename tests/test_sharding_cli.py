"""The mesh and sharding rules through the command line, on 8 fake devices."""

import pytest
from cli import FAST, command, losses, run


@pytest.mark.slow
def test_fsdp_mesh_gives_the_losses_of_the_data_mesh(tmp_path):
    """Sharded parameters change only the order of the gradient sums (reduce-scatter instead
    of all-reduce); the learning rate is low for the reason given in test_main's eight-device
    test. The FSDP run also skips the prefetch thread, which must not change the batches."""
    meshes = {
        "data": [],
        "fsdp": ["--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.prefetch=0"],
    }
    out_losses = {}
    for name, overrides in meshes.items():
        workdir = tmp_path / name
        cmd = command(
            workdir, tmp_path / "tfds", "--config.total_steps=8", "--config.lr=0.002", *FAST
        )
        out = run(cmd + overrides, devices=8)
        assert out.returncode == 0, out.stderr[-3000:]
        out_losses[name] = losses(workdir)
    assert "mesh data=2 × fsdp=4 × model=1: " in out.stdout
    assert len(out_losses["data"]) == 8
    for a, b in zip(out_losses["data"], out_losses["fsdp"], strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), out_losses


def test_a_batch_the_mesh_cannot_split_stops_the_run_at_startup(tmp_path):
    out = run(command(tmp_path, tmp_path, "--config.batch_size=12"), devices=8)
    assert out.returncode != 0
    assert "batch_size 12 is not divisible by the data-parallel size 8" in out.stderr
