"""The command line in a subprocess: each run gets its own JAX device count and environment."""

import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
    "--config.pp_train=decode|resize(32)|value_range(-1, 1)",
    "--config.pp_eval=decode|resize(32)|value_range(-1, 1)",
    "--config.log_every=1",
    "--config.schedule.warmup_steps=5",
]


def command(workdir, data_dir, *overrides, config="configs/quickstart.py") -> list[str]:
    """`python -m jtransfer.main ...`; `data_dir` None: the config's (image folders need none)."""
    data = [] if data_dir is None else [f"--config.data.data_dir={data_dir}"]
    return [
        sys.executable,
        "-m",
        "jtransfer.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *data,
        *overrides,
    ]


def env(devices: int = 1) -> dict[str, str]:
    out = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    # the session's flags (tests/conftest.py), with this run's device count last, which wins
    flags = os.environ.get("XLA_FLAGS", "")
    out["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    return out


def run(cmd, devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, env=env(devices), capture_output=True, text=True, timeout=timeout
    )


_TRACE_IMPORTS = """import atexit, os, sys
def _write(path=os.environ["TRACED_IMPORTS"]):
    with open(path, "w") as f:
        f.write("\\n".join({name.split(".")[0] for name in list(sys.modules)}))
atexit.register(_write)
"""


def run_tracing_imports(cmd, devices: int = 1) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`run`, and the top-level packages the process had imported when it exited. A
    `sitecustomize` on its PYTHONPATH records them (`-X importtime` would miss what is imported
    while stderr is silenced)."""
    with tempfile.TemporaryDirectory() as trace:
        with open(os.path.join(trace, "sitecustomize.py"), "w") as f:
            f.write(_TRACE_IMPORTS)
        path = os.pathsep.join(filter(None, [trace, os.environ.get("PYTHONPATH")]))
        traced = os.path.join(trace, "imported.txt")
        with mock.patch.dict(os.environ, PYTHONPATH=path, TRACED_IMPORTS=traced):
            out = run(cmd, devices)
        with open(traced) as f:
            return out, set(f.read().split())


def popen(cmd, devices: int = 1) -> subprocess.Popen:
    """The run with stdout and stderr merged into one line-by-line readable pipe."""
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def losses(workdir) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["train/loss"] for r in rows if "train/loss" in r]
