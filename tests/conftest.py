"""One persistent JAX compilation cache for the whole test session.

Many tests start runs that compile the same programs: a reference run and the interrupted and
resumed runs compared with it, the same quickstart step in several command-line tests. Every
process of the session (the xdist workers, and each `python -m jtransfer...` they start, which
inherit the environment) reads and writes one cache, so a program is compiled once. A cached
executable is the one the compiler would produce, so no result changes. The directory is made
by the first process to import this file (xdist's controller, before its workers start) and
removed by it at exit.

The session also compiles at XLA's backend optimisation level 0 (`XLA_FLAGS`, which the same
processes inherit; tests/cli.py adds the device count to it). A test trains a few steps, so
compiling is most of its time, and level 0 roughly halves it; what the tests compare (frozen
leaves bit for bit, one device against eight, a resumed run against a whole one) runs under
the same flags on both sides, and parity with reference implementations holds to the same
tolerances. Speed is measured at the default level, by scripts/benchmark.py and the sweeps.
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jtransfer-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
FAST_COMPILE = "--xla_backend_optimization_level=0"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
# A size limit makes JAX lock the cache's files, which several processes share.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
