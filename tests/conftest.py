"""One persistent JAX compilation cache for the whole test session.

Many tests start runs that compile the same programs: a reference run and the interrupted and
resumed runs compared with it, the same quickstart step in several command-line tests. Every
process of the session (the xdist workers, and each `python -m jtransfer...` they start, which
inherit the environment) reads and writes one cache, so a program is compiled once. A cached
executable is the one the compiler would produce, so no result changes. The directory is made
by the first process to import this file (xdist's controller, before its workers start) and
removed by it at exit.
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jtransfer-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# A size limit makes JAX lock the cache's files, which several processes share.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
