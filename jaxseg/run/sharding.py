"""Scaling a dataset run: the devices of one host, several hosts.

Pseudo-labelling a dataset is embarrassingly parallel: every image is segmented on its
own, so no step needs data from another image or another host. The layout follows:

- **Devices of one host** (:func:`data_mesh`): the ``jaxseg.Segmenter`` shares its batches
  round-robin among this process's local devices, each running the same compiled
  single-device program on its own batch (no SPMD partitioning, no collectives), so an
  image's mask does not depend on the device count.
- **Several hosts** (:func:`initialize_distributed`, :func:`all_processes`):
  ``jax.distributed.initialize`` connects the processes; each runs a disjoint share of the
  planned batches (``jaxseg.run.plan``) on its *own* devices. A global mesh would make
  every batch a cross-host program and gain nothing, since no result crosses images. The
  only cross-host operation is the final :func:`all_processes` (a :func:`barrier` that
  also tells whether every process completed), which every process reaches also after an
  error.
- **Launchers**: SLURM and Open MPI start one process per node (all its GPUs) or one per
  GPU; :func:`local_device_ids` tells ``jax.distributed`` which, since by itself it gives
  every process the one GPU of its local rank. Cloud TPU VMs are found through JAX's own
  detection (the TPU VM metadata server, or GKE's ``TPU_WORKER_HOSTNAMES``).
"""

from __future__ import annotations

import glob
import os
import re
from typing import Callable, Mapping, Optional

import jax
import numpy as np
from jax.sharding import Mesh

BARRIER_TIMEOUT_S = 3600  # a backstop: a dead peer is normally reported by JAX at once
_ADDRESS = re.compile(r"^\[?[\w.:-]+\]?:\d{1,5}$")


def detect_cluster(env: Mapping[str, str] = os.environ) -> Optional[str]:
    """The multi-process launcher this process runs under, or None.

    Conservative: SLURM and Open MPI are reported only when they started more than one
    process, so a one-task job stays a plain single-process run.

    Returns:
      ``"slurm"`` (an ``srun`` step of several tasks), ``"openmpi"`` (``mpirun`` with
      several ranks), ``"tpu"`` (a Cloud TPU VM, whose slice JAX discovers itself) or None.
    """

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
    from jax._src import cloud_tpu_init  # set when jax was imported on a TPU VM

    if (cloud_tpu_init.running_in_cloud_tpu_vm or env.get("TPU_PROCESS_ADDRESSES")
            or env.get("TPU_WORKER_HOSTNAMES")):
        return "tpu"
    return None


def _tasks_on_this_node(launcher: str, env: Mapping[str, str]) -> int:
    """How many processes the launcher started on this node."""
    if launcher == "openmpi":
        return int(env.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1"))
    # SLURM_STEP_TASKS_PER_NODE is e.g. "2(x3),1": this node's entry by SLURM_NODEID.
    counts = []
    for part in env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "1")).split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match:
            counts += [int(match.group(1))] * int(match.group(2) or 1)
    node = int(env.get("SLURM_NODEID", "0"))
    return counts[node] if node < len(counts) else 1


def visible_gpus(env: Mapping[str, str] = os.environ) -> int:
    """GPUs this process may use, known without starting CUDA: ``CUDA_VISIBLE_DEVICES``,
    else the NVIDIA driver's list of GPUs (0 when neither says)."""
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        return len([gpu for gpu in env["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()])
    return len(glob.glob("/proc/driver/nvidia/gpus/*"))


def local_device_ids(launcher: Optional[str], env: Mapping[str, str] = os.environ,
                     gpus: Callable[[Mapping[str, str]], int] = visible_gpus
                     ) -> Optional[list[int]]:
    """The GPUs ``jax.distributed`` should give this process.

    One process on this node (``srun --ntasks-per-node 1``, ``mpirun --npernode 1``): every
    visible GPU. Several: None, JAX's rule of one GPU per process (its local rank). TPUs and
    CPUs: None (JAX never restricts them).
    """
    if launcher not in ("slurm", "openmpi") or _tasks_on_this_node(launcher, env) != 1:
        return None
    count = gpus(env)
    return list(range(count)) if count > 0 else None


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
    :func:`detect_cluster` finds a launcher (SLURM, Open MPI, Cloud TPU VM), giving each
    process its GPUs by :func:`local_device_ids`. Otherwise nothing happens and the run is
    a single process.

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
        jax.distributed.initialize(local_device_ids=local_device_ids(detect_cluster()),
                                   initialization_timeout=timeout_s)
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


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
    """Waits until every process reached ``barrier(name)``; a no-op for one process.

    Uses the coordination service of ``jax.distributed`` with a timeout, so a process
    never waits forever for a peer that died; the processes must call the same barriers in
    the same order.
    """
    if jax.process_count() > 1:
        from jax._src import distributed

        distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def all_processes(name: str, flag: bool, timeout_s: int = BARRIER_TIMEOUT_S) -> bool:
    """Whether ``flag`` holds in every process: each posts its own to the coordination
    service of ``jax.distributed`` and waits at barrier ``name`` (see :func:`barrier`);
    ``flag`` itself for one process."""
    if jax.process_count() == 1:
        return flag
    from jax._src import distributed

    client = distributed.global_state.client
    client.key_value_set(f"{name}/{jax.process_index()}", "1" if flag else "0")
    barrier(name, timeout_s)
    flags = [value for _, value in client.key_value_dir_get(f"{name}/")]
    return len(flags) == jax.process_count() and all(value == "1" for value in flags)
