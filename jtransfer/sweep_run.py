"""One run of a sweep: `jtransfer.main` with the sweep's compilation cache, pinned, recorded.

    python -m jtransfer.sweep_run --cache_dir=SWEEP/jax_cache --record=SWEEP/logs/NAME.jsonl \
        [--cpus=0,1] -- --config=configs/x.py:a=1 --workdir=SWEEP/runs/NAME

Everything after `--` is `jtransfer.main`'s command line, run in this process. Before it:
- the persistent JAX compilation cache is pointed at `--cache_dir`, with no minimum compile time
  or entry size, so a run whose steps have the shape of an earlier run's loads them instead of
  compiling them (any process of any run of the sweep shares it). It gets a size limit, which
  is what makes JAX take a file lock around each read and write: without it, two runs that
  compile the same step at once (two seeds under `--parallel`) could interleave their writes;
- the process is pinned to `--cpus` (before TensorFlow and XLA size their thread pools);
- under the local launcher, the process asks Linux to send it SIGTERM when the sweep dies
  (`PR_SET_PDEATHSIG`), so a killed sweep leaves no run training on: each saves its state and
  exits 75, as on any SIGTERM, and the next sweep resumes it.
At exit, one JSON line is appended to `--record`: the exit status, wall seconds, and what
fetching the compiled executables cost (XLA compilation, or loading from the cache) with the
cache's hits and misses, from JAX's monitoring events; the sweep's results show it per run.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import signal
import socket
import sys
import time

CACHE_BYTES = 16 << 30  # least recently used entries go beyond this
PARENT_ENV = "JTRANSFER_SWEEP_PARENT"  # pid of the sweep that expects to be this process's parent
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the sweep died before prctl: nobody would signal us
        sys.exit(75)


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        sys.exit("usage: python -m jtransfer.sweep_run [options] -- JTRANSFER.MAIN FLAGS")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m jtransfer.sweep_run")
    parser.add_argument("--cache_dir", required=True, help="persistent JAX compilation cache")
    parser.add_argument("--record", required=True, help="JSON lines file to append a record to")
    parser.add_argument("--cpus", default="", help="comma-separated CPU ids to pin to")
    return parser.parse_args(argv[:cut]), argv[cut + 1 :]


def main(argv: list[str]) -> None:
    args, main_argv = _parse(argv)
    _die_with_parent()
    cpus = [int(c) for c in args.cpus.split(",") if c]
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)

    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.abspath(args.cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if importlib.util.find_spec("filelock"):  # a size limit makes JAX lock the cache's files
        jax.config.update("jax_compilation_cache_max_size", CACHE_BYTES)
    compiled = {"compile_seconds": 0.0, "cache_hits": 0, "cache_misses": 0}

    def on_duration(event: str, seconds: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiled["compile_seconds"] += seconds

    def on_event(event: str, **_) -> None:
        if event in ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"):
            compiled[event.rsplit("/", 1)[1]] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)

    from jtransfer import main as jtransfer_main

    started, status = time.time(), 1
    sys.argv = ["jtransfer.main", *main_argv]
    try:
        jtransfer_main.run()
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    finally:
        record = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started, 2),
            "exit": status,
            **{k: round(v, 3) for k, v in compiled.items()},
            "host": socket.gethostname(),
            "cpus": cpus or None,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.record)), exist_ok=True)
        with open(args.record, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
