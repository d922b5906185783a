"""Where a sweep's runs run: here (`local`), on Slurm through submitit (`slurm`), or printed.

Each run is one process, `jtransfer.sweep_run` around `jtransfer.main` (`Sweep.command`), whose
output goes to `logs/<name>.log`. What the launchers add:

- `local`: `parallel` runs at a time, each pinned to its share of this process's CPUs (runs
  compile on one core and step on all they have, so two pinned runs on two cores finish sooner
  than two in a row). A run holds an exclusive lock (`logs/<name>.lock`, flock) for as long as
  its process lives, passed on to it, so a second sweep on the same workdir, or this one rerun
  after a kill while the old run is still saving, never starts a run twice: it takes the runs
  nobody holds and waits for the rest. The runs are in their own sessions, so Ctrl-C reaches only
  the sweep, which passes SIGTERM on: each run saves, and the sweep exits 75 (rerun to finish).
- `slurm`: one submitit job array (the library writes and submits the sbatch script); a job runs
  the run's command and, on the preemption or time-out signal submitit relays, SIGTERMs it (it
  saves) and asks submitit to requeue it, which resumes it. Tested with submitit's local executor.
- `print`: the commands of the runs not finished, one line each, for another scheduler.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from jtransfer import metrics
from jtransfer.errors import JTransferError
from jtransfer.sweep_run import PARENT_ENV

PREEMPTED = 75  # jtransfer.main's status after saving on SIGTERM (distributed.PREEMPTED_EXIT_CODE)


def require_submitit() -> None:
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise JTransferError(
            "--launcher=slurm submits through the submitit package, which is not installed: "
            "pip install submitit (or pip install -e '.[slurm]')"
        ) from None


def print_commands(sweep, pending) -> None:
    done = len(sweep.runs) - len(pending)
    if done:
        print(f"# {done} of {len(sweep.runs)} runs finished; the others:", file=sys.stderr)
    for run in pending:
        print(shlex.join(sweep.command(run, python="python")))


def cpu_shares(cpus: Sequence[int], parallel: int) -> list[list[int]]:
    """`parallel` disjoint, contiguous shares of `cpus` (as even as can be); with more runs than
    CPUs, each run gets one CPU, shared round-robin."""
    cpus = sorted(cpus)
    if parallel > len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(parallel)]
    base, extra = divmod(len(cpus), parallel)
    shares, start = [], 0
    for i in range(parallel):
        size = base + (i < extra)
        shares.append(cpus[start : start + size])
        start += size
    return shares


def _summary(workdir: str) -> str:
    try:
        with open(os.path.join(workdir, "final_eval.json")) as f:
            final = json.load(f)
    except OSError:
        return ""
    results = {k: v for k, v in final.items() if isinstance(v, dict)}
    return metrics.summary(next(iter(results.values()))) if results else ""


def _tail(path: str) -> str:
    """The last 'error: ...' line of a log, or its last line."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class _Running:
    def __init__(self, run, proc: subprocess.Popen, lock: int, log, started: float):
        self.run, self.proc, self.lock, self.log, self.started = run, proc, lock, log, started


def _try_lock(path: str) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def local(sweep, pending: list, parallel: int) -> int:
    """Runs `pending` here, `parallel` at a time; returns 0 if every run finished, 75 if the
    sweep was stopped by a signal (the runs saved), else 1."""
    os.makedirs(os.path.join(sweep.workdir, "logs"), exist_ok=True)
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    shares = cpu_shares(affinity, parallel) if affinity and parallel > 1 else [[]] * parallel
    total, skipped = len(sweep.runs), len(sweep.runs) - len(pending)
    print(f"sweep {sweep.workdir}: {total} runs, {skipped} finished before, {len(pending)} to run")
    queue, running = list(pending), {}  # slot -> _Running
    failed, stopping, waiting_shown = [], [], False

    def stop(signum, frame) -> None:
        if not stopping:
            print(f"sweep: {signal.Signals(signum).name}: stopping; the runs save their state")
        stopping.append(signum)
        for r in running.values():
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    env = dict(os.environ, **{PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"})
    count = skipped
    try:
        while (queue and not stopping) or running:
            for slot in range(parallel):
                if slot in running or not queue or stopping:
                    continue
                for i, run in enumerate(queue):
                    lock = _try_lock(sweep.log(run, ".lock"))
                    if lock is None:
                        continue
                    queue.pop(i)
                    if sweep.finished(run):  # another sweep finished it meanwhile
                        os.close(lock)
                        break
                    count += 1
                    log = open(sweep.log(run, ".log"), "a")
                    proc = subprocess.Popen(
                        sweep.command(run, cpus=shares[slot]),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        pass_fds=(lock,),
                        start_new_session=True,
                    )
                    running[slot] = _Running(run, proc, lock, log, time.time())
                    where = f" (cpus {','.join(map(str, shares[slot]))})" if shares[slot] else ""
                    print(f"[{count:>3}/{total}] start {run.name}{where}", flush=True)
                    break
            if queue and not running and not stopping and not waiting_shown:
                print(f"sweep: {len(queue)} runs are held by another process; waiting for them")
                waiting_shown = True
            for slot, r in list(running.items()):
                code = r.proc.poll()
                if code is None:
                    continue
                del running[slot]
                r.log.close()
                os.close(r.lock)
                took = _duration(time.time() - r.started)
                if code == 0:
                    print(f"        done  {r.run.name} in {took}: {_summary(sweep.run_dir(r.run))}")
                elif code == PREEMPTED:
                    print(f"        saved {r.run.name} after {took} (stopped; rerun to resume)")
                    failed.append(r.run)
                else:
                    print(f"        FAILED {r.run.name} (exit {code}): {_tail(r.log.name)}")
                    failed.append(r.run)
                sys.stdout.flush()
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopping:
        print(f"sweep stopped; {len(queue) + len(failed)} runs left: rerun the same command")
        return PREEMPTED
    if failed:
        names = ", ".join(r.name for r in failed)
        print(f"sweep: {len(failed)} runs did not finish ({names}); logs in {sweep.workdir}/logs")
        return 1
    return 0


class SlurmJob:
    """One run as a submitit job. submitit calls `checkpoint` in the job's process on the
    preemption or time-out signal (USR2 by default); the run is told to save (SIGTERM) and the
    same job is requeued, which resumes it."""

    def __init__(self, command: list[str], cwd: str, log: str):
        self.command, self.cwd, self.log = command, cwd, log
        self._proc: subprocess.Popen | None = None

    def __call__(self) -> int:
        with open(self.log, "a") as out:
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self._proc = subprocess.Popen(
                self.command, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, env=env
            )
            code = self._proc.wait()
        if code not in (0, PREEMPTED):
            raise RuntimeError(f"exit status {code}: {_tail(self.log)} (log {self.log})")
        return code

    def checkpoint(self, *args, **kwargs):
        import submitit

        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            deadline = time.time() + 600
            # Not Popen.wait: __call__ is blocked in it, holding its lock, below this handler.
            while time.time() < deadline and os.waitpid(self._proc.pid, os.WNOHANG) == (0, 0):
                time.sleep(0.5)
        return submitit.helpers.DelayedSubmission(SlurmJob(self.command, self.cwd, self.log))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_proc": None}


def slurm(sweep, pending: list, params: dict, cluster: str = "slurm") -> int:
    """Submits `pending` as one submitit job array with executor parameters `params`, waits for
    the jobs and reports each; returns 0 if every run finished, else 1."""
    import submitit

    os.makedirs(os.path.join(sweep.workdir, "logs"), exist_ok=True)
    if not pending:
        print(f"sweep {sweep.workdir}: all {len(sweep.runs)} runs finished before")
        return 0
    executor = submitit.AutoExecutor(
        folder=os.path.join(sweep.workdir, "slurm", "%j"), cluster=cluster
    )
    try:
        executor.update_parameters(**{"name": "jtransfer-sweep", **params})
    except (ValueError, TypeError, NameError, AssertionError) as e:  # how submitit refuses them
        raise JTransferError(f"--slurm parameters {params}: {str(e).splitlines()[0]}") from None
    jobs_for = [
        SlurmJob(sweep.command(run), os.getcwd(), sweep.log(run, ".log")) for run in pending
    ]
    jobs = executor.submit_array(jobs_for)
    print(f"sweep {sweep.workdir}: submitted {len(jobs)} runs as job {jobs[0].job_id}")
    failed = 0
    for run, job in zip(pending, jobs, strict=True):
        try:
            code = job.result()
        except Exception as e:  # the job's own exception, re-raised by submitit
            print(f"        FAILED {run.name} (job {job.job_id}): {str(e).splitlines()[-1]}")
            failed += 1
            continue
        if code == PREEMPTED:
            print(f"        saved {run.name} (preempted; rerun the sweep to resume)")
            failed += 1
        else:
            print(f"        done  {run.name}: {_summary(sweep.run_dir(run))}", flush=True)
    return 1 if failed else 0
