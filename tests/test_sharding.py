"""Device sharding, multi-process shares and the refinement pool (CPU only).

The multi-device and multi-process checks run in subprocesses: the virtual
device count (``XLA_FLAGS``) and ``jax.distributed`` must be set before JAX
starts, which in the pytest process has already happened.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxseg.run.pool import RefinePool
from jaxseg.run.sharding import detect_cluster, initialize_distributed, local_device_ids

TESTS = os.path.dirname(os.path.abspath(__file__))
CHILD_TIMEOUT_S = 240  # a hung collective fails the test instead of blocking CI


def small_config():
    from jaxseg.config import SegmentConfig
    from jaxseg.maps.tta import TTAConfig
    from jaxseg.refinement.classifier import ClassifierConfig
    from jaxseg.refinement.config import RefineConfig
    return SegmentConfig(tta=TTAConfig(input_size=32, canvas_size=64), refine=RefineConfig(
        classifier=ClassifierConfig(num_samples=512, steps=20)))


def small_dataset(count=5):
    """``[(stem, image [H, W, 3] uint8, labels)]``: sizes and label counts differ (3 or 4
    labels: one class bucket, so one compiled program per process)."""
    rng = np.random.RandomState(0)
    names = ["cat", "dog", "sofa", "car"]
    data = []
    for index in range(count):
        shape = (36 + 4 * index, 48 - 3 * index, 3)
        image = (rng.rand(*shape) * 255).astype(np.uint8)
        image[: shape[0] // 2, : shape[1] // 2] //= 3  # a dark block gives the cut an edge
        data.append((f"img{index:02d}", image, names[: 3 + index % 2]))
    return data


def run_child(call: str, env: dict, timeout: float = CHILD_TIMEOUT_S) -> subprocess.Popen:
    """Starts ``python -c`` running ``test_sharding.<call>`` with ``env`` added."""
    code = f"import sys; sys.path.insert(0, {TESTS!r}); import test_sharding; test_sharding.{call}"
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", **env)
    return subprocess.Popen([sys.executable, "-c", code], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen, timeout: float = CHILD_TIMEOUT_S) -> str:
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        pytest.fail(f"child timed out after {timeout} s:\n{err[-3000:]}")
    assert child.returncode == 0, err[-3000:]
    return out


# ---------------------------------------------------------------- children


def child_devices(folder: str, out_path: str) -> None:
    """4 virtual devices: relevance and masks of batches spread over them, saved (npz)."""
    import jax
    from jaxseg.clip.handle import load_clip
    from jaxseg.run.sharding import data_mesh
    from jaxseg.segmenter import Segmenter

    clip = load_clip(folder)
    data = small_dataset(4)
    images = [image for _, image, _ in data]
    segmenter = Segmenter(clip, small_config(), data_mesh())
    spread = segmenter.relevance_stage(images, [names for _, _, names in data], batch_size=1)
    arrays = {"local_devices": len(jax.local_devices()), "devices": len(segmenter.devices)}
    for i, (image, output) in enumerate(zip(images, spread)):
        arrays.update({f"scores{i}": output.scores, f"unaries{i}": output.unaries,
                       f"mask{i}": segmenter.refine_stage(image, output).mask})
    np.savez(out_path, **arrays)


def child_process(folder: str, port: int, index: int, out_dir: str) -> None:
    """One of two ``jax.distributed`` processes: segments its share, then waits for all."""
    from jaxseg.run.sharding import barrier
    assert initialize_distributed(f"127.0.0.1:{port}", 2, index, timeout_s=60)
    import jax
    from jaxseg.run.imageio import atomic_write
    from jaxseg.clip.handle import load_clip
    from jaxseg.segmenter import segment

    clip = load_clip(folder)
    config = small_config()
    mine = small_dataset()[index::2]
    for stem, image, labels in mine:
        with atomic_write(os.path.join(out_dir, f"{stem}.npy")) as handle:
            np.save(handle, segment(clip, image, labels, config).mask)
    with open(os.path.join(out_dir, f"done_{index}.json"), "w") as handle:
        json.dump({"stems": [stem for stem, _, _ in mine], "process_index": jax.process_index(),
                   "process_count": jax.process_count()}, handle)
    barrier("jaxseg-test-done")
    # Both lists exist once everyone passed the barrier.
    assert all(os.path.exists(os.path.join(out_dir, f"done_{i}.json")) for i in range(2))


def child_initialize_late() -> None:
    import jax
    jax.devices()
    try:
        initialize_distributed("127.0.0.1:1", 2, 0)
    except ValueError as error:
        print(json.dumps({"error": str(error)}))


# ---------------------------------------------------------------- tests


def test_four_virtual_devices_give_the_one_device_results_exactly(tiny_checkpoint, tiny_clip,
                                                                  tmp_path):
    from jaxseg.segmenter import Segmenter
    out_path = str(tmp_path / "spread.npz")
    finish(run_child(f"child_devices({tiny_checkpoint[0]!r}, {out_path!r})",
                     {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}))
    spread = np.load(out_path)
    assert (spread["local_devices"], spread["devices"]) == (4, 4)
    # The same batches of one image each, all on this process's single device.
    segmenter = Segmenter(tiny_clip, small_config())
    masks = []
    for i, (_, image, labels) in enumerate(small_dataset(4)):
        [output] = segmenter.relevance_stage([image], [labels])
        np.testing.assert_array_equal(spread[f"scores{i}"], output.scores)
        # The unaries agree to float16 rounding (the classifier's small matrix products may
        # split their sums differently while four devices share the CPU's threads); the
        # masks, the promise, are identical.
        np.testing.assert_allclose(spread[f"unaries{i}"], output.unaries, atol=2e-4)
        masks.append(segmenter.refine_stage(image, output).mask)
        np.testing.assert_array_equal(spread[f"mask{i}"], masks[-1])
    # The masks are not trivially equal (all background): some labels won pixels.
    assert any(len(np.unique(mask)) > 1 for mask in masks)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_write_the_single_process_masks(tiny_checkpoint, tiny_clip, tmp_path):
    from jaxseg.segmenter import segment
    port = free_port()
    children = [run_child(f"child_process({tiny_checkpoint[0]!r}, {port}, {index}, "
                          f"{str(tmp_path)!r})", {}) for index in range(2)]
    for child in children:
        finish(child)
    done = [json.load(open(tmp_path / f"done_{index}.json")) for index in range(2)]
    assert [d["process_index"] for d in done] == [0, 1]
    assert all(d["process_count"] == 2 for d in done)
    shares = [set(d["stems"]) for d in done]
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    data = small_dataset()
    assert shares[0] | shares[1] == {stem for stem, _, _ in data}
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".npy") == sorted(
        f"{stem}.npy" for stem, _, _ in data)
    config = small_config()
    for stem, image, labels in data:
        expected = segment(tiny_clip, image, labels, config).mask
        np.testing.assert_array_equal(np.load(tmp_path / f"{stem}.npy"), expected)


def test_local_device_ids_follow_the_launcher_layout():
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
             "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
             "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert detect_cluster(slurm) == "slurm"
    # srun --ntasks-per-node 1: one process with all four GPUs of its node.
    assert local_device_ids("slurm", slurm) == [0, 1, 2, 3]
    # srun --ntasks-per-node 4: JAX's one GPU per process (its local rank).
    assert local_device_ids("slurm", {**slurm, "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}) is None
    # Uneven steps: this node (index 1) runs one task.
    assert local_device_ids("slurm", {**slurm, "SLURM_STEP_TASKS_PER_NODE": "3,1"}) == [0, 1, 2, 3]
    mpi = {"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "2",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "1"}
    assert detect_cluster(mpi) == "openmpi"
    assert local_device_ids("openmpi", mpi, gpus=lambda env: 8) == list(range(8))
    assert local_device_ids("openmpi", {**mpi, "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}) is None
    assert local_device_ids("slurm", {**slurm, "CUDA_VISIBLE_DEVICES": ""},
                            gpus=lambda env: 0) is None  # no GPU: nothing to pass
    assert local_device_ids("tpu", slurm) is None and local_device_ids(None, slurm) is None


def test_initialize_distributed_rejects_bad_flags(monkeypatch):
    for name in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "TPU_PROCESS_ADDRESSES",
                 "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert detect_cluster() is None  # this machine is no TPU VM
    assert initialize_distributed() is False
    assert initialize_distributed(auto=True) is False
    with pytest.raises(ValueError, match="missing --num-processes, --process-id"):
        initialize_distributed("127.0.0.1:1234")
    with pytest.raises(ValueError, match="missing --coordinator-address"):
        initialize_distributed(num_processes=2, process_id=0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        initialize_distributed("127.0.0.1", 2, 0)
    with pytest.raises(ValueError, match="process id 2"):
        initialize_distributed("127.0.0.1:1234", 2, 2)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host-a,host-b")
    assert detect_cluster() == "tpu"


def test_initialize_after_jax_started_is_a_clear_error():
    out = finish(run_child("child_initialize_late()", {}))
    assert "must run before any JAX computation" in json.loads(out.strip().splitlines()[-1])[
        "error"]


# ---------------------------------------------------------------- refinement pool


def slow_square(value: int, seconds: float) -> int:
    time.sleep(seconds)
    return value * value


def fail_on_three(value: int) -> int:
    if value == 3:
        raise ValueError("three")
    return value


def worker_settings() -> tuple:
    import jax
    return jax.default_backend(), jax.config.values["jax_compilation_cache_dir"]


@pytest.fixture(scope="module")
def pool():
    with RefinePool(workers=2, max_in_flight=3) as refine_pool:
        yield refine_pool


def test_pool_keeps_order_and_bounds_in_flight_jobs(pool):
    taken = []

    def jobs():
        for value in range(8):
            taken.append(value)
            yield value, (value, 0.2 if value % 2 == 0 else 0.0)  # later jobs finish first

    results = []
    for tag, future in pool.imap(slow_square, jobs()):
        assert len(taken) - len(results) <= pool.max_in_flight
        results.append((tag, future.result()))
    assert results == [(value, value * value) for value in range(8)]
    outcomes = [(tag, future.exception()) for tag, future in pool.imap(
        fail_on_three, ((v, (v,)) for v in range(5)))]
    assert [tag for tag, _ in outcomes] == list(range(5))
    assert isinstance(outcomes[3][1], ValueError) and outcomes[2][1] is None


def test_pool_refinement_equals_inline(pool, tiny_clip):
    from jaxseg.segmenter import Segmenter, refine_mask
    config = small_config()
    segmenter = Segmenter(tiny_clip, config)
    data = small_dataset(3)
    # One image per call: the program ``segment`` compiles (shared with the test above).
    jobs = [(i, (image, segmenter.relevance_stage([image], [labels])[0], segmenter.config))
            for i, (_, image, labels) in enumerate(data)]
    pooled = [future.result()[0] for _, future in pool.imap(refine_mask, jobs)]
    with RefinePool(workers=0) as inline:
        inline_masks = [future.result()[0] for _, future in inline.imap(refine_mask, jobs)]
    for mine, theirs in zip(pooled, inline_masks):
        np.testing.assert_array_equal(mine, theirs)
    assert any(len(np.unique(mask)) > 1 for mask in pooled), [np.unique(m) for m in pooled]


def test_pool_rejects_negative_workers():
    with pytest.raises(ValueError, match="workers must be >= 0"):
        RefinePool(workers=-1)


def test_pool_workers_use_the_cpu_and_the_parent_compile_cache(tmp_path):
    import jax
    before = jax.config.values["jax_compilation_cache_dir"]
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    try:
        with RefinePool(workers=1) as one:
            [(_, future)] = list(one.imap(worker_settings, [(0, ())]))
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert future.result() == ("cpu", str(tmp_path))
