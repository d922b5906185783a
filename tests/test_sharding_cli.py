"""The mesh through the command line, on 8 fake devices (its end-to-end losses: test_main)."""

from cli import command, run


def test_a_batch_the_mesh_cannot_split_stops_the_run_at_startup(tmp_path):
    out = run(command(tmp_path, tmp_path, "--config.batch_size=12"), devices=8)
    assert out.returncode != 0
    assert "batch_size 12 is not divisible by the data-parallel size 8" in out.stderr
