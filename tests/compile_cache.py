"""One persistent JAX compilation cache per test process, its subprocesses included.

Command-line runs in the tests pass ``CACHE_ARGS`` instead of ``--no-compile-cache``: the
many short runs of one tiny model (several device counts, processes, resumed runs) then
compile each program once. The folder is made by the first importer and handed to child
processes through the environment; it is never the user's cache. Each pytest-xdist
worker (``-n 2``) makes its own, so two workers never write one entry at the same time.
"""

import os
import tempfile

_VARIABLE = "JAXSEG_TEST_COMPILE_CACHE"
if _VARIABLE not in os.environ:
    os.environ[_VARIABLE] = tempfile.mkdtemp(prefix="jaxseg-test-jit-")
CACHE_ARGS = ["--compile-cache", os.environ[_VARIABLE]]
