"""Joining a multi-process run, and stopping cleanly when the cluster preempts it.

`initialize` calls `jax.distributed.initialize` only when asked: an explicit coordinator (flag
or `JAX_COORDINATOR_ADDRESS`, for GPU clusters), or `mode='on'`, which lets JAX detect the
cluster itself (Cloud TPU VM pods, Slurm, Open MPI). On a laptop nothing happens. JAX's own
failure to reach a coordinator is a process abort after the timeout, with a message blaming
"another task"; so a process other than the coordinator first opens a plain TCP connection to
it, retried until the same deadline, and fails with an error that names the address.

`Preemption` answers "stop after this step?". In one process a Python SIGTERM handler sets a
flag that the loop reads between steps. With several processes each host may receive SIGTERM
at a different step, and a checkpoint is a collective that all of them must enter at the same
step: JAX's preemption service (it catches SIGTERM itself) agrees on that step, and
`reached_preemption_sync_point` must be asked at every step on every host.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from types import FrameType

import jax
from jax.experimental import multihost_utils

MODES = ("auto", "on", "off")
# Exit status of a run that saved its state and stopped early on SIGTERM: sysexits.h's
# EX_TEMPFAIL ("temporary failure, the user is invited to retry"). Rerun the same command.
PREEMPTED_EXIT_CODE = 75


class DistributedInitError(RuntimeError):
    """This process could not join the multi-process run."""


def initialize(
    *,
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> None:
    """Joins the run the flags or environment describe; see the module docstring for when.

    Unset arguments fall back to `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
    `JAX_PROCESS_ID`, then to JAX's cluster detection.
    """
    if mode not in MODES:
        raise ValueError(f"distributed mode must be one of {MODES}, got {mode!r}")
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if mode == "off" or (mode == "auto" and not address):
        return
    deadline = time.monotonic() + timeout_s
    if address and index not in (None, 0):
        _wait_for_coordinator(address, deadline, f"process {index} of {count}")
    print(
        f"joining the distributed run: coordinator {address or '(detected)'}, process "
        f"{index if index is not None else '(detected)'} of {count or '(detected)'}, "
        f"waiting up to {timeout_s} s for every process",
        file=sys.stderr,
        flush=True,
    )
    remaining = max(1, int(deadline - time.monotonic()))
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=count,
        process_id=index,
        initialization_timeout=remaining,
    )


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _wait_for_coordinator(address: str, deadline: float, who: str) -> None:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise DistributedInitError(f"coordinator address {address!r} is not host:port")
    while True:
        left = deadline - time.monotonic()
        try:
            socket.create_connection((host, int(port)), timeout=max(left, 0.1)).close()
            return
        except OSError as e:
            if left <= 0:
                raise DistributedInitError(
                    f"{who} could not reach the coordinator at {address} within the "
                    f"initialization timeout ({e}); is process 0 running and listening there?"
                ) from e
            time.sleep(min(0.5, max(left, 0)))


class Preemption:
    """`with Preemption() as p: ... if p.reached(step): save and stop`."""

    def __init__(self) -> None:
        self._requested = False
        self._installed = False
        self._previous: object = signal.SIG_DFL

    def __enter__(self) -> Preemption:
        # In a multi-process run JAX's preemption service owns SIGTERM; a Python handler would
        # replace its handler and leave the hosts without an agreed step.
        if jax.process_count() == 1:
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._previous = signal.SIG_DFL if previous is None else previous  # None: set in C
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        self._requested = True

    def reached(self, step: int) -> bool:
        """True when the run should save `step` and stop; call it after every step."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested


class Preempted(Exception):
    """Raised after the state of `step` was saved on a preemption notice."""

    def __init__(self, step: int):
        super().__init__(f"preempted: state saved at step {step}; rerun the command to resume")
        self.step = step
