"""Scaling a dataset run: devices of one host, several hosts, and a refinement process pool.

Pseudo-labelling a dataset is embarrassingly parallel: every image is segmented on
its own, so no step ever needs data from another image or another host. The
layout follows from that:

- **Devices of one host** (:func:`data_mesh`, :func:`device_batch_size`): a
  ``jax.sharding.Mesh`` over this process's local devices with one ``"data"``
  axis. ``relevance_tta_batch(..., mesh=mesh)`` places each padded batch of
  images (and with it their TTA variants) with ``NamedSharding(mesh, P("data"))``
  and the parameters replicated, so XLA's SPMD partitioner compiles one program
  per shape bucket that runs on every device at once, without collectives.
- **Several hosts** (:func:`initialize_distributed`, :func:`process_share`,
  :func:`barrier`): ``jax.distributed.initialize`` connects the processes
  (coordination service, ``jax.process_index()``/``process_count()``, health
  checks). Each process then takes a disjoint, deterministic share of the
  dataset and shards it over its *own* devices only. A global mesh would make
  every batch a cross-host program, so each host would wait for the slowest one
  at every step, and it would gain nothing because no result crosses images.
  The only cross-host operation is the final :func:`barrier`. Outputs are
  named by image stem and shares are disjoint, so processes writing into one
  folder never collide, and the per-image resume rules still hold.
- **Host refinement** (:class:`RefinePool`): graph cut and distillation run in
  worker processes while the device computes relevance for the next batches,
  with a bounded number of images in flight so memory does not grow with the
  dataset.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import re
from typing import Any, Callable, Hashable, Iterable, Iterator, Optional, Sequence, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh

Item = TypeVar("Item")
Tag = TypeVar("Tag")

_ADDRESS = re.compile(r"^\[?[\w.:-]+\]?:\d{1,5}$")


def detect_cluster() -> Optional[str]:
    """The multi-process launcher this process runs under, from its environment, or None.

    Cheap (environment variables only) and conservative: a launcher is reported
    only when it started more than one process, so a one-task SLURM job or a
    single TPU VM stays a plain single-process run.

    Returns:
      ``"slurm"`` (an ``srun`` step of several tasks), ``"openmpi"`` (``mpirun``
      with several ranks), ``"tpu"`` (a multi-host Cloud TPU slice that exports
      its worker list) or ``None``.
    """
    env = os.environ

    def count(name: str) -> int:
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
             "SLURM_LOCALID")
    if all(name in env for name in slurm) and count("SLURM_NTASKS") > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and count("OMPI_COMM_WORLD_SIZE") > 1:
        return "openmpi"
    workers = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([host for host in workers.split(",") if host.strip()]) > 1:
        return "tpu"
    return None


def _backends_initialized() -> bool:
    # jax.distributed.initialize makes the same check; it has no public spelling.
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, *, auto: bool = False,
                           timeout_s: int = 300) -> bool:
    """Joins a multi-process JAX run; call it before any other JAX call.

    With all three explicit arguments, ``jax.distributed.initialize`` connects to
    (process 0: starts) the coordinator at ``coordinator_address``. With none of
    them and ``auto``, it initialises with JAX's own cluster detection when
    :func:`detect_cluster` finds a multi-process launcher (SLURM, Open MPI, Cloud
    TPU slice). Otherwise nothing happens and the run is a single process.

    On CPU, cross-process collectives (only :func:`barrier` uses them) are JAX's
    default gloo TCP implementation (``jax_cpu_collectives_implementation``).

    Args:
      coordinator_address: ``HOST:PORT`` of process 0, the same for every process.
      num_processes: total number of processes, >= 1.
      process_id: this process's index in ``0 .. num_processes - 1``.
      auto: detect a cluster launcher when no explicit argument is given.
      timeout_s: seconds to wait for every process to connect.

    Returns:
      True when the distributed system was initialised.

    Raises:
      ValueError: partial or invalid arguments, a second call, or a call after
        JAX's backends were initialised (by a computation or ``jax.devices()``).
    """
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
                "process_id": process_id}
    given = [name for name, value in explicit.items() if value is not None]
    if given and len(given) < 3:
        missing = ", ".join(f"--{name.replace('_', '-')}" for name in explicit if name not in given)
        raise ValueError(f"multi-process runs need --coordinator-address, --num-processes and "
                         f"--process-id together; missing {missing}")
    if given:
        if not _ADDRESS.match(coordinator_address):
            raise ValueError(f"coordinator address {coordinator_address!r} is not HOST:PORT "
                             f"(e.g. 10.0.0.1:1234)")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"process id {process_id} is outside 0 .. {num_processes - 1}; "
                             f"give each of the {num_processes} processes its own id")
    elif not (auto and detect_cluster()):
        return False
    if jax.distributed.is_initialized():
        raise ValueError("jax.distributed is already initialised; call initialize_distributed "
                         "once per process")
    if _backends_initialized():
        raise ValueError("initialize_distributed must run before any JAX computation or "
                         "jax.devices() call; move it to the start of the program")
    if given:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=timeout_s)
    else:
        jax.distributed.initialize(initialization_timeout=timeout_s)
    return True


def data_mesh(max_devices: Optional[int] = None) -> Mesh:
    """A one-axis ``("data",)`` mesh over this process's local devices.

    Args:
      max_devices: use at most this many (the first ones); None: all of them.
    """
    devices = jax.local_devices()
    if max_devices is not None:
        if max_devices < 1:
            raise ValueError(f"max_devices must be >= 1, got {max_devices}")
        devices = devices[:max_devices]
    return Mesh(np.asarray(devices), ("data",))


def device_batch_size(batch_size: int, mesh: Optional[Mesh]) -> int:
    """``batch_size`` rounded up to a multiple of the mesh's device count (one share each)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    devices = 1 if mesh is None else mesh.size
    return -(-batch_size // devices) * devices


def share_key(item: Any) -> str:
    """Sort key of a dataset item: its stem (first element of a tuple, e.g. ``Item``), or
    the file stem of a path."""
    if isinstance(item, tuple):
        return str(item[0])
    if isinstance(item, (str, os.PathLike)):
        return os.path.splitext(os.path.basename(os.fspath(item)))[0]
    return str(item)


def process_share(items: Iterable[Item], process_index: Optional[int] = None,
                  process_count: Optional[int] = None,
                  key: Callable[[Any], Hashable] = share_key) -> list[Item]:
    """This process's disjoint, deterministic share of ``items``.

    Items are sorted by ``key`` (ties by their ``repr``), so every process
    computes the same order whatever order it listed them in, and process ``i``
    takes every ``count``-th item from ``i``. The shares are disjoint, cover all
    items and differ in size by at most one.

    Args:
      items: the whole dataset, the same set on every process.
      process_index, process_count: default ``jax.process_index()`` and
        ``jax.process_count()`` (1 process unless :func:`initialize_distributed` ran).
      key: stable per-item sort key (default :func:`share_key`).
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process_index {index} is outside 0 .. {count - 1}")
    ordered = sorted(items, key=lambda item: (key(item), repr(item)))
    return ordered[index::count]


def barrier(name: str) -> None:
    """Waits until every process reached ``barrier(name)``; a no-op for one process.

    Uses a tiny all-gather over all processes' devices (``sync_global_devices``),
    so the processes must call the same barriers in the same order.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def default_workers() -> int:
    """Cores this process may run on (its CPU affinity, which SLURM and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# Settings copied from the parent into each worker: its persistent compilation
# cache, so workers of a later run load the refinement programs instead of compiling.
_WORKER_CONFIG = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
                  "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


def _init_worker(config: dict) -> None:
    # Refinement uses JAX too; a worker must not open the accelerator (a TPU
    # admits one process, a GPU would be preallocated once per worker).
    jax.config.update("jax_platforms", "cpu")
    for name, value in config.items():
        jax.config.update(name, value)


class RefinePool:
    """Runs host work (refinement) in worker processes, a bounded window at a time.

    Workers are started with the ``"spawn"`` method: forking a process that has
    initialised JAX copies its runtime threads' locks in whatever state they are
    in, and the child can deadlock; spawned workers start a fresh interpreter and
    run JAX on the CPU, with the parent's persistent compilation cache settings
    (so configure that cache before creating the pool). Jobs and results are
    pickled, so the function must be defined at module level (e.g.
    :func:`jaxseg.pipeline.refine_stage`).

    Use as a context manager; ``workers=0`` runs every job inline in the calling
    thread (no processes, the same results).

    Args:
      workers: worker processes; None: one per core (:func:`default_workers`).
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
                initializer=_init_worker, initargs=(parent_config,))

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
