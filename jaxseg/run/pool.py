"""Host work in worker processes: a bounded window of refinement jobs beside the devices.

Workers are started with the ``"spawn"`` method (forking a process that has initialised
JAX copies its runtime threads' locks in whatever state they are in, and the child can
deadlock) and run JAX on the CPU with one XLA thread each (one worker per core). They
never outlive the run: each watches its parent's pid from a thread and exits within
half a second of the parent's death, so a run killed by SIGKILL, SIGTERM or the OOM killer
leaves no process behind. They ignore SIGINT: Ctrl-C stops the run through the parent,
which finishes the jobs in flight.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import signal
import threading
import time
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar

import jax

Tag = TypeVar("Tag")
_PARENT_POLL_SECONDS = 0.5


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which SLURM and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Refinement workers by default: every core but two (the device feeder and the writers
    keep those), at least one."""
    return max(1, available_cores() - 2)


# Settings copied from the parent into each worker: its persistent compilation
# cache, so workers of a later run load the refinement programs instead of compiling.
_WORKER_CONFIG = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
                  "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


def exit_with_parent(parent: int) -> None:
    """Ends this process when ``parent`` dies, however it dies.

    The initializer of every worker pool (:class:`RefinePool`'s, and the benchmark
    scripts'), so that a killed run leaves no worker computing on. A thread polls the
    parent's pid. Linux's ``PR_SET_PDEATHSIG`` would be quicker, but it fires when the
    *thread* that started the worker ends: ``multiprocessing.Pool`` starts replacement
    workers (``maxtasksperchild``) from a helper thread, whose end at ``terminate()``
    killed an idle worker holding the task queue's lock, and ``terminate()`` then waited
    on that lock forever.

    Args:
      parent: the pid of the process that started this one.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="jaxseg-parent-watch", daemon=True).start()


def _init_worker(config: dict, parent: int) -> None:
    exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One XLA thread per worker: the pool already runs one worker per core.
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [
        os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false",
        "intra_op_parallelism_threads=1"]))
    # Refinement uses JAX too; a worker must not open the accelerator (a TPU
    # admits one process, a GPU would be preallocated once per worker).
    jax.config.update("jax_platforms", "cpu")
    for name, value in config.items():
        jax.config.update(name, value)


class RefinePool:
    """Runs host work (refinement) in worker processes, a bounded window at a time.

    Workers (see the module docstring) get the parent's persistent compilation cache
    settings, so configure that cache before creating the pool. Jobs and results are
    pickled, so the function must be defined at module level (e.g.
    :func:`jaxseg.segmenter.refine_mask`).

    Use as a context manager; ``workers=0`` runs every job inline in the calling
    thread (no processes, the same results).

    Args:
      workers: worker processes; None: :func:`default_workers`.
      max_in_flight: jobs submitted but not yet handed back, at most (default
        ``2 * workers``, enough to keep every worker busy); bounds the images and
        score maps held in memory.
    """

    def __init__(self, workers: Optional[int] = None, max_in_flight: Optional[int] = None):
        self.workers = default_workers() if workers is None else workers
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: refine inline), got {workers}")
        self.max_in_flight = 2 * max(1, self.workers) if max_in_flight is None else max_in_flight
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._executor = None
        if self.workers:
            parent_config = {name: jax.config.values[name] for name in _WORKER_CONFIG}
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(parent_config, os.getpid()))

    def __enter__(self) -> "RefinePool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stops the workers (waits for running jobs, drops queued ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _submit(self, function: Callable, args: Sequence) -> concurrent.futures.Future:
        if self._executor is not None:
            return self._executor.submit(function, *args)
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(function(*args))
        except Exception as error:  # noqa: BLE001 - handed to the caller through the future.
            future.set_exception(error)
        return future

    def imap(self, function: Callable, jobs: Iterable[tuple[Tag, Sequence]]
             ) -> Iterator[tuple[Tag, concurrent.futures.Future]]:
        """Runs ``function(*args)`` for each ``(tag, args)``; yields ``(tag, future)`` in order.

        ``jobs`` is read lazily: a job is taken only while fewer than
        ``max_in_flight`` are pending, so a generator fed by the device stage is
        throttled by the refinement (a bounded queue end to end). Each yielded
        future is done; ``future.result()`` returns the value or raises the job's
        own error, so one failing image does not stop the others.
        """
        pending: collections.deque = collections.deque()
        jobs = iter(jobs)
        exhausted = False
        while True:
            # Take more work until the window is full, or hand back a finished one first.
            while (not exhausted and len(pending) < self.max_in_flight
                   and not (pending and pending[0][1].done())):
                try:
                    tag, args = next(jobs)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((tag, self._submit(function, args)))
            if not pending:
                return
            tag, future = pending.popleft()
            concurrent.futures.wait([future])
            yield tag, future
