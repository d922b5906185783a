"""scripts/launch_tpu.sh without a cloud: `--dry-run` prints every command it would run, and the
scripts it would run on the TPU workers are run here, in a fake home directory, with `sudo` and
`lsof` replaced by stubs that record their arguments (nothing outside the temporary directory is
touched; the stubbed `sudo` runs only `lsof`).

What must hold: setup installs a Python that jax supports (with uv, not apt) after stopping
unattended-upgrades; run passes a gs:// workdir and the caller's arguments intact, appends to the
log, refuses while the run is alive or the TPU is held, and clears a stale libtpu lock file; stop
signals only a process that is this run, and returns once it has exited.
"""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
import tomllib

import pytest
from packaging.specifiers import SpecifierSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "launch_tpu.sh")
ENV = {"TPU": "jt-v5e", "ZONE": "us-west4-a", "BUCKET": "my-bucket"}
WORKDIR = "gs://my-bucket/runs/pets"
CONFIG = "configs/transfer.py:data=oxford_iiit_pet,batch=512"
PP = "--config.pp_train=decode|resize(32)|value_range(-1, 1)"  # quotes must survive


def _dry_run(*args: str, **env: str) -> list[list[str]]:
    """The argument lists of the commands `launch_tpu.sh --dry-run ARGS` prints."""
    out = subprocess.run(
        ["bash", SCRIPT, "--dry-run", *args],
        env={**os.environ, **ENV, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    commands = []
    for line in out.stdout.splitlines():
        assert line.startswith("+ "), line  # a dry run prints commands only
        words = subprocess.run(  # the shell's own reading of the quoted line
            ["bash", "-c", 'eval "words=($1)"; printf "%s\\0" "${words[@]}"', "_", line[2:]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        commands.append(words.split("\0")[:-1])
    return commands


def _remote(command: list[str], worker: str = "all") -> str:
    """The script of a `gcloud compute tpus tpu-vm ssh` command, checked to be one."""
    assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", ENV["TPU"]], command
    assert command[6:8] == [f"--zone={ENV['ZONE']}", f"--worker={worker}"], command
    assert command[8].startswith("--command=") and len(command) == 9, command
    script = command[8].removeprefix("--command=")
    subprocess.run(["bash", "-n", "-c", script], check=True)  # valid shell
    return script


def test_setup_ships_the_code_and_installs_a_python_jax_supports():
    archive, scp, remove, ssh = _dry_run("setup")
    assert archive[:4] == ["git", "-C", ROOT, "archive"] and archive[-1] == "HEAD"
    tarball = archive[archive.index("-o") + 1]
    assert scp == [
        "gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"{ENV['TPU']}:~/jtransfer.tar.gz",
        f"--zone={ENV['ZONE']}", "--worker=all",
    ]  # fmt: skip
    assert remove == ["rm", "-f", tarball]
    script = _remote(ssh)
    lines = [line.strip() for line in script.splitlines()]
    stop = next(i for i, s in enumerate(lines) if "systemctl stop unattended-upgrades" in s)
    wait = next(i for i, s in enumerate(lines) if s.startswith("while pgrep -x"))
    venv = next(i for i, s in enumerate(lines) if "uv venv --python 3.12 ~/jtransfer-venv" in s)
    install = next(i for i, s in enumerate(lines) if "uv pip install" in s)
    assert stop < wait < venv < install
    assert "-e ~/jtransfer'[tpu]'" in lines[install]
    assert "https://astral.sh/uv/0.13.9/install.sh" in script
    for absent in ("apt-get install", "python3 -m venv", "gcsfuse"):
        assert absent not in script
    assert "uv venv --python 3.13 " in _remote(_dry_run("setup", PYTHON_VERSION="3.13")[-1])


def test_the_python_setup_installs_is_one_jax_and_the_project_accept():
    """requires-python admits no Python that the installed jax refuses, and setup's admits both."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = SpecifierSet(tomllib.load(f)["project"]["requires-python"])
    jax_needs = SpecifierSet(importlib.metadata.metadata("jax")["Requires-Python"])
    for minor in range(8, 16):
        version = f"3.{minor}"
        assert version not in project or version in jax_needs, version
    setup_python = re.search(r"uv venv --python (\S+)", _remote(_dry_run("setup")[-1])).group(1)
    assert setup_python in project and setup_python in jax_needs


def test_run_checks_every_worker_then_starts_with_a_gs_workdir():
    check, start = _dry_run("run", "pets", CONFIG, PP)
    assert "libtpu_lockfile" in _remote(check)
    script = _remote(start)
    assert f"--workdir={WORKDIR}" in script and ">> ~/pets.log" in script
    assert "gcs" not in script.replace("gs://", "")  # no FUSE mount anywhere
    with pytest.raises(subprocess.CalledProcessError):
        _dry_run("run", "pets;rm", CONFIG)  # a RUN name the shell could misread


def test_logs_and_stop_address_the_right_workers():
    (logs,) = _dry_run("logs", "pets")
    assert _remote(logs, worker="0") == "tail -n 50 -F ~/pets.log"
    (stop,) = _dry_run("stop", "pets")
    assert f"WORKDIR={WORKDIR} " in _remote(stop)


@pytest.fixture
def worker(tmp_path):
    """A fake worker: a home with a venv whose python records its arguments, stubs for sudo
    (records, runs only lsof) and lsof (prints $FAKE_TPU_HOLDERS)."""
    home, stubs = tmp_path / "home", tmp_path / "stubs"
    (home / "jtransfer").mkdir(parents=True)
    (home / "jtransfer-venv" / "bin").mkdir(parents=True)
    stubs.mkdir()
    scripts = {
        home / "jtransfer-venv" / "bin" / "python": (
            f'#!/bin/sh\n"{sys.executable}" -c '
            "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n"
        ),
        stubs / "sudo": (
            f'#!/bin/sh\necho "$*" >> "{tmp_path}/sudo.log"\n'
            'if [ "$1" = lsof ]; then shift; exec lsof "$@"; fi\n'
        ),
        stubs / "lsof": '#!/bin/sh\nprintf "%s" "$FAKE_TPU_HOLDERS"\n',
    }
    for path, text in scripts.items():
        path.write_text(text)
        path.chmod(0o755)
    env = dict(os.environ, HOME=str(home), PATH=f"{stubs}:{os.environ['PATH']}")
    env["FAKE_TPU_HOLDERS"] = ""

    def run_remote(command: list[str], **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", _remote(command)],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    return home, tmp_path / "sudo.log", run_remote


def _fake_run(workdir: str = WORKDIR, on_term: float = 0.0) -> subprocess.Popen:
    """A process whose command line is a jtransfer run's; on SIGTERM it exits after `on_term` s."""
    code = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (time.sleep({on_term}), sys.exit(75)))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    cmd = [sys.executable, "-c", code, "-m", "jtransfer.main", f"--workdir={workdir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"  # its SIGTERM handler is installed
    return proc


def test_run_appends_to_the_log_and_passes_the_arguments_intact(worker):
    home, sudo_log, run_remote = worker
    (home / "pets.log").write_text("the run before the preemption\n")
    check, start = _dry_run("run", "pets", CONFIG, PP)
    assert run_remote(check).returncode == 0
    assert "rm -f /tmp/libtpu_lockfile" in sudo_log.read_text().splitlines()
    assert run_remote(start).returncode == 0
    for _ in range(100):  # the fake python runs detached
        lines = (home / "pets.log").read_text().splitlines()
        if len(lines) == 3:
            break
        time.sleep(0.1)
    assert lines[0] == "the run before the preemption"
    assert re.fullmatch(r"=== \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ launch_tpu.sh run pets", lines[1])
    assert json.loads(lines[2]) == [
        "-m",
        "jtransfer.main",
        "--distributed=on",
        f"--config={CONFIG}",
        f"--workdir={WORKDIR}",
        "--config.data.data_dir=gs://my-bucket/tensorflow_datasets",
        PP,
    ]
    assert (home / "pets.pid").read_text().strip().isdigit()


def test_run_refuses_a_live_run_and_a_held_tpu(worker):
    home, sudo_log, run_remote = worker
    check, _ = _dry_run("run", "pets", CONFIG)
    live, other = _fake_run(), _fake_run(workdir="gs://my-bucket/runs/other")
    try:
        (home / "pets.pid").write_text(f"{live.pid}\n")
        out = run_remote(check)
        assert out.returncode == 1
        assert f"pets is still running (pid {live.pid}); stop it first" in out.stderr
        (home / "pets.pid").write_text(f"{other.pid}\n")  # another run's: no bar to this one
        assert run_remote(check).returncode == 0
    finally:
        for proc in (live, other):
            proc.kill()
            proc.wait()
    out = run_remote(check, FAKE_TPU_HOLDERS="4242\n")
    assert out.returncode == 1 and "the TPU is in use by pid 4242" in out.stderr
    assert sudo_log.read_text().count("rm -f /tmp/libtpu_lockfile") == 1  # the passing check's
    (home / "jtransfer-venv" / "bin" / "python").unlink()
    out = run_remote(check)
    assert out.returncode == 1 and "run setup first" in out.stderr


def test_stop_signals_only_this_run_and_waits_for_it_to_exit(worker):
    home, _, run_remote = worker
    (stop,) = _dry_run("stop", "pets")
    stranger = subprocess.Popen(["sleep", "30"])  # a process that reused a dead run's PID
    (home / "pets.pid").write_text(f"{stranger.pid}\n")
    out = run_remote(stop)
    assert out.returncode == 0 and "pets is not running" in out.stdout
    assert stranger.poll() is None  # not signalled
    stranger.kill()
    stranger.wait()

    (home / "pets.log").write_text("preempted: state saved at step 120\n")
    saving = _fake_run(on_term=1.5)
    (home / "pets.pid").write_text(f"{saving.pid}\n")
    began = time.perf_counter()
    out = run_remote(stop)
    assert out.returncode == 0, out.stderr
    assert time.perf_counter() - began >= 1.5  # it waited for the exit
    assert saving.wait(timeout=1) == 75
    assert "pets stopped: preempted: state saved at step 120" in out.stdout
    assert not (home / "pets.pid").exists()
