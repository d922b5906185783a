"""Sweeps that train, end to end: killed and rerun, the compilation cache between runs of one
shape, and a Slurm submission through submitit's local executor.

Runs are configs/transfer.py at 32 px on a 16-image folder, a few steps each.
"""

import json
import os
import pickle
import re
import subprocess
import sys
import time

import pytest
from cli import ROOT, env
from images import dark_and_light
from sweeps import sweep_command, write_config

from jtransfer import sweep_launch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return dark_and_light(tmp_path_factory.mktemp("images"))


def _records(workdir, name) -> list[dict]:
    path = os.path.join(workdir, "logs", f"{name}.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def _final(workdir, name) -> str:
    return os.path.join(workdir, "runs", name, "final_eval.json")


def test_a_killed_sweep_rerun_finishes_only_what_is_left(tmp_path, folder):
    """SIGKILL to the sweep while its second run trains: that run is told to save (SIGTERM on
    its parent's death) and exits 75; the same command then skips the finished run, resumes the
    interrupted one and runs the last, the two at once, on their own CPUs. All three runs share
    their step's shape, so only the first compiles it; the others load it from the sweep's
    compilation cache."""
    names = ["seed=0", "seed=1", "seed=2"]
    config = write_config(tmp_path, folder, [{"seed": k} for k in range(3)], steps=12)
    workdir = tmp_path / "w"
    cmd = sweep_command(config, workdir)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    checkpoints = workdir / "runs" / "seed=1" / "checkpoints"
    for line in proc.stdout:
        lines.append(line)
        if "start seed=1" in line:
            break
    else:
        pytest.fail("".join(lines))
    deadline = time.time() + 300
    while not (checkpoints.is_dir() and any(n.isdigit() for n in os.listdir(checkpoints))):
        assert time.time() < deadline and proc.poll() is None, "".join(lines)
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    while not _records(workdir, "seed=1"):  # the run saves and exits on its own
        assert time.time() < deadline, "the run outlived its sweep"
        time.sleep(0.2)
    assert _records(workdir, "seed=1")[0]["exit"] == 75
    assert os.path.exists(_final(workdir, "seed=0"))
    assert not os.path.exists(_final(workdir, "seed=1"))
    first_done = os.stat(_final(workdir, "seed=0")).st_mtime_ns

    rerun = [*cmd, "--parallel=2"]  # the two runs left at once, each pinned to its own CPUs
    out = subprocess.run(rerun, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 runs, 1 finished before, 2 to run" in out.stdout
    assert "start seed=0" not in out.stdout
    assert os.stat(_final(workdir, "seed=0")).st_mtime_ns == first_done
    assert all(os.path.exists(_final(workdir, n)) for n in names)
    log = (workdir / "logs" / "seed=1.log").read_text()
    assert re.search(r"resumed from step \d+ of 12", log), log
    with open(_final(workdir, "seed=1")) as f:
        assert json.load(f)["step"] == 12

    pinned = [set(_records(workdir, n)[-1]["cpus"]) for n in ("seed=1", "seed=2")]
    assert pinned[0] | pinned[1] <= os.sched_getaffinity(0)
    assert len(os.sched_getaffinity(0)) < 2 or not pinned[0] & pinned[1]

    # The compilation cache: the first run compiled; a run of the same shape loaded.
    first, last = _records(workdir, "seed=0")[0], _records(workdir, "seed=2")[0]
    assert first["cache_misses"] > 0 and last["cache_hits"] > 0
    assert last["compile_seconds"] < first["compile_seconds"] / 2, (first, last)
    md = (workdir / "results.md").read_text()
    assert "| 3 | " in md  # one setting, three seeds


def test_a_slurm_sweep_through_submitits_local_executor(tmp_path, folder):
    config = write_config(tmp_path, folder, [{"seed": 0}, {"strategy": "linear_probe"}], steps=4)
    workdir = tmp_path / "w"
    cmd = sweep_command(
        config, workdir, "--launcher=slurm", "--submitit_cluster=local", "--slurm=timeout_min=10"
    )
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted 2 runs" in out.stdout
    assert "done  seed=0: accuracy" in out.stdout
    assert "done  strategy=linear_probe: accuracy" in out.stdout
    assert os.path.exists(_final(workdir, "seed=0"))
    assert os.path.exists(_final(workdir, "strategy=linear_probe"))
    assert _records(workdir, "strategy=linear_probe")[0]["exit"] == 0
    assert os.listdir(workdir / "slurm")  # submitit's job folders


def test_a_slurm_job_on_preemption_has_its_run_save_and_requeues_itself(tmp_path):
    """What submitit calls on the job's preemption signal: the run gets SIGTERM (jtransfer.main
    saves and exits 75 on it) and the job comes back as a new submission of the same run."""
    saved = tmp_path / "saved"
    child = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(saved)!r}, 'w').close(), "
        "sys.exit(75)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    job = sweep_launch.SlurmJob([sys.executable, "-c", child], str(tmp_path), str(tmp_path / "l"))
    job._proc = subprocess.Popen(job.command, stdout=subprocess.PIPE, text=True)
    assert job._proc.stdout.readline() == "ready\n"
    again = job.checkpoint()
    assert saved.exists()  # the run was told to save, and the job waited for it to exit
    assert isinstance(again.function, sweep_launch.SlurmJob)
    assert again.function.command == job.command and again.function._proc is None
    assert pickle.loads(pickle.dumps(job))._proc is None
