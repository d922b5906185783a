"""Resuming a workdir: only the run that made it, whatever harmless fields changed; and saves
that are complete or absent, on file systems that can rename a directory atomically and on those
that cannot (Cloud Storage, gcsfuse), where orbax commits each step with a marker file instead.

The commit-file protocol is exercised on the local disk (`commit_file=True`): it is the very code
orbax runs for `gs://` (`CommitFileTemporaryPath`: the step written in place under its final
name, then `commit_success.txt`), and with Python's renames made to fail it still saves, which the
rename protocol cannot. A save killed after every byte is written but before its commit (the
worst moment) must leave a step that neither the trainer's resume nor the reader takes.
"""

import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jtransfer import checkpoint
from jtransfer.checkpoint import (
    Checkpointer,
    ResumeConfigError,
    check_resume_config,
    is_complete,
    needs_commit_file,
)
from jtransfer.pretrained.orbax_reader import OrbaxCheckpointError, read_run

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


def _state(step: int) -> dict:
    """A train state like train.py's, different at every step."""
    rng = np.random.default_rng(step)
    return {
        "step": np.int32(step),
        "params": {"dense": {"kernel": rng.standard_normal((256, 128), np.float32)}},
        "batch_stats": {"bn": {"mean": rng.standard_normal(128).astype(np.float32)}},
        "rng": np.array([7, step], np.uint32),
    }


def _assert_equal(restored, expected) -> None:
    flat_r, flat_e = jax.tree.leaves_with_path(restored), jax.tree.leaves_with_path(expected)
    assert [p for p, _ in flat_r] == [p for p, _ in flat_e]
    for (path, a), (_, b) in zip(flat_r, flat_e, strict=True):
        a = np.asarray(a)
        assert a.dtype == b.dtype and np.array_equal(a, b), path


def test_a_checkpoint_of_another_layout_is_an_error_naming_it(tmp_path):
    saver = Checkpointer(str(tmp_path), asynchronous=False)
    saver.save(3, {"step": jnp.int32(3), "opt_state": [jnp.ones(3)]})
    packed = {"step": jnp.int32(0), "opt_state": {"packed": {"float32": jnp.zeros(3)}}}
    with pytest.raises(checkpoint.CheckpointLayoutError, match=r"step 3 in .* do not match\)"):
        saver.restore(3, packed)
    with pytest.raises(checkpoint.CheckpointLayoutError, match=r"shape: \(4,\) is not compat"):
        saver.restore(3, {"step": jnp.int32(0), "opt_state": [jnp.ones(4)]})
    saver.close()


def test_mounts_that_cannot_rename_a_directory_atomically_commit_by_file(tmp_path):
    root = os.path.realpath(tmp_path)
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/root / ext4 rw,relatime 0 0\n"
        f"my-bucket {root}/gcs fuse.gcsfuse rw,nosuid,nodev 0 0\n"
        f"other {root}/with\\040space fuse.s3fs rw 0 0\n"
        f"tmpfs {root}/gcs/cache tmpfs rw 0 0\n"
    )
    assert needs_commit_file(f"{root}/gcs/runs/a/checkpoints", str(mounts))
    assert needs_commit_file(f"{root}/with space/checkpoints", str(mounts))
    assert not needs_commit_file(f"{root}/gcs/cache/x", str(mounts))  # the deepest mount counts
    assert not needs_commit_file(f"{root}/gcsx/checkpoints", str(mounts))
    assert not needs_commit_file(f"{root}/local", str(mounts))
    assert not needs_commit_file(f"{root}/local", str(tmp_path / "no-mount-table"))
    assert needs_commit_file("gs://bucket/runs/a/checkpoints", str(mounts))


def test_a_url_reaches_orbax_unchanged_and_commits_by_file(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(ocp, "CheckpointManager", lambda d, options, **_: seen.append((d, options)))
    monkeypatch.chdir(tmp_path)
    Checkpointer("gs://bucket/runs/a/checkpoints")
    Checkpointer("runs/b/checkpoints", commit_file=False)
    (url, url_options), (local, local_options) = seen
    assert url == "gs://bucket/runs/a/checkpoints"
    assert url_options.atomicity_options == checkpoint.COMMIT_FILE
    assert local == os.path.join(os.path.realpath(tmp_path), "runs/b/checkpoints")
    assert local_options.atomicity_options == checkpoint.RENAME


def test_a_commit_file_save_renames_nothing(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise OSError("this file system cannot rename")

    monkeypatch.setattr(os, "rename", refuse)
    monkeypatch.setattr(os, "replace", refuse)
    ckpt = Checkpointer(str(tmp_path / "commit"), asynchronous=False, commit_file=True)
    ckpt.save(3, _state(3))
    assert ckpt.latest_step() == 3
    _assert_equal(ckpt.restore(3, jax.device_put(_state(0))), _state(3))
    ckpt.close()
    assert is_complete(tmp_path / "commit" / "3")
    with pytest.raises(OSError, match="cannot rename"):  # the default protocol renames
        Checkpointer(str(tmp_path / "rename"), asynchronous=False, commit_file=False).save(
            3, _state(3)
        )


# Saves step 1, then step 2 with its commit stalled: every byte of step 2 is written when
# "committing" is printed, and the parent kills the process there.
_KILLED_MID_SAVE = """
import sys, time
import jax
from orbax.checkpoint._src.path import atomicity
from jtransfer.checkpoint import Checkpointer
sys.path.insert(0, sys.argv[3])
from test_checkpoint import _state

directory, commit_file = sys.argv[1], sys.argv[2] == "1"
ckpt = Checkpointer(directory, commit_file=commit_file)
ckpt.save(1, jax.device_put(_state(1)))
ckpt.close()

async def stall(self):
    print("committing", flush=True)
    time.sleep(600)

atomicity.CommitFileTemporaryPath.finalize = stall
atomicity.AtomicRenameTemporaryPath.finalize = stall
ckpt = Checkpointer(directory, commit_file=commit_file)
ckpt.save(2, jax.device_put(_state(2)))
ckpt.close()
"""


def _kill_mid_save(directory, commit_file: bool) -> None:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    tests = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, "-c", _KILLED_MID_SAVE, str(directory), str(int(commit_file)), tests]
    child = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watchdog = threading.Timer(120, child.kill)
    watchdog.start()
    lines = []
    try:
        for line in child.stdout:
            lines.append(line)
            if line.strip() == "committing":
                break
        else:
            pytest.fail("the save never reached its commit:\n" + "".join(lines))
    finally:
        child.kill()
        child.wait()
        watchdog.cancel()


@pytest.mark.parametrize("commit_file", [True, False], ids=["commit_file", "rename"])
def test_sigkill_mid_save_resumes_bit_exact_from_the_last_complete_step(tmp_path, commit_file):
    directory = tmp_path / "checkpoints"
    _kill_mid_save(directory, commit_file)

    names = sorted(os.listdir(directory))
    if commit_file:  # step 2 is there under its final name, every array written, uncommitted
        assert names == ["1", "2"] and (directory / "2" / "default" / "_METADATA").exists()
    else:
        assert names[0] == "1" and names[1].startswith("2.orbax-checkpoint-tmp")
    assert not is_complete(directory / names[1])

    # The reader takes the last complete step, and refuses the half-written one by name.
    _assert_equal(read_run(tmp_path), {k: _state(1)[k] for k in ("params", "batch_stats")})
    refused = "(is a checkpoint whose save did not finish|holds no orbax checkpoint whose save)"
    with pytest.raises(OrbaxCheckpointError, match=f"{directory}/{names[1]} {refused}"):
        read_run(directory / names[1])

    # The trainer's resume: the last complete step, bit for bit. The half-written step is
    # deleted (the next save waits for that).
    ckpt = Checkpointer(str(directory), asynchronous=False, commit_file=commit_file)
    assert ckpt.latest_step() == 1
    _assert_equal(ckpt.restore(1, jax.device_put(_state(0))), _state(1))
    ckpt.save(3, jax.device_put(_state(3)))
    ckpt.close()
    assert sorted(os.listdir(directory)) == ["1", "3"] and is_complete(directory / "3")
    _assert_equal(read_run(tmp_path)["params"], _state(3)["params"])
