"""A dataset run killed any way leaves no process behind and resumes to the same outputs."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_segment_cli import FAST, REPO, comparable, random_images

from jaxseg.cli import segment
from jaxseg.run.pool import exit_with_parent
from compile_cache import CACHE_ARGS

GROUP_GRACE_S = 15


def group_members(group: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry))
    return members


@pytest.fixture
def sigint_default():
    """Children start with Ctrl-C's default action, as from a terminal.

    A suite started in the background of a non-interactive shell (``pytest ... &``) ignores
    SIGINT, and a child inherits an ignored signal: its Python then never raises
    KeyboardInterrupt (as POSIX asks of background jobs), and a run sent SIGINT finishes
    with status 0. A handled signal is reset to its default in the child.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_checkpoint):
    """A folder dataset of 24 images and its uninterrupted outputs (enough that a run
    signalled at its first output still has work left)."""
    root = tmp_path_factory.mktemp("signals")
    paths = random_images(root / "data" / "images", 24)
    (root / "data" / "labels.json").write_text(json.dumps(
        {f"img{i}": [["cat"], ["cat", "dog"], [], ["dog", "sofa", "cat"]][i % 4]
         for i in range(len(paths))}))
    common = [*FAST, "--dataset", "folder", "--root", str(root / "data"), "--batch-size", "2",
              "--model", tiny_checkpoint[0], "--quiet"]
    assert segment.main([*common, *CACHE_ARGS, "--out", str(root / "reference")]) == 0
    return root, common


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_run_leaves_no_process_and_resumes_to_the_same_outputs(dataset, tmp_path,
                                                                       sigint_default, signum):
    root, common = dataset
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxseg.segment", *common, "--refine-workers", "2",
         "--compile-cache", str(cache), "--out", str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (out.is_dir() and any(name.endswith(".json") for name in os.listdir(out))):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no output within 180 s"
        time.sleep(0.02)
    assert len(group_members(process.pid)) >= 3  # the run and its two refinement workers
    process.send_signal(signum)
    status = process.wait(timeout=60)
    err = process.stderr.read().decode()
    process.stderr.close()
    deadline = time.monotonic() + GROUP_GRACE_S
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_members(process.pid) == [], "processes of the run outlived it"
    if signum == signal.SIGKILL:
        assert status == -signal.SIGKILL
    else:
        assert status == (143 if signum == signal.SIGTERM else 130), err
        assert "received: stopping once the work in progress ends" in err, err
        assert "already complete" in err and "run the same command again" in err, err
        assert not [name for name in os.listdir(out) if ".tmp-" in name]
    finished = sum(name.endswith(".json") for name in os.listdir(out))
    assert 0 < finished <= 8
    assert os.listdir(cache), "the compilation cache is written as programs compile"
    (out / ".img7.png.tmp-424242").write_bytes(b"left by a killed run")
    assert segment.main([*common, *CACHE_ARGS, "--out", str(out)]) == 0
    assert comparable(out) == comparable(root / "reference")


# The command line with each batch's collection held in one device call of about 15 s.
SLOW_DEVICE_RUN = """
import sys
import time

import jax
import jax.numpy as jnp

from jaxseg.cli import segment
from jaxseg.segmenter import Segmenter


def main(started, finished, *argv):
    busy = jax.jit(lambda x, steps: jax.lax.fori_loop(0, steps, lambda i, y: jnp.sin(y) + 1, x))
    x = jnp.float32(0.5)
    busy(x, 10).block_until_ready()
    begin = time.perf_counter()
    busy(x, 10**7).block_until_ready()
    steps = min(2**31 - 1, int(10**7 * 15.0 / (time.perf_counter() - begin)))
    collect = Segmenter.collect

    def slow_collect(self, batch):
        open(started, "w").close()
        busy(x, steps).block_until_ready()
        open(finished, "w").close()
        return collect(self, batch)

    Segmenter.collect = slow_collect
    return segment.main(list(argv))


if __name__ == "__main__":  # refinement workers (spawned) import this file too
    sys.exit(main(*sys.argv[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals a process group")
def test_an_interrupted_run_waits_for_the_device_call_in_progress(dataset, tmp_path,
                                                                  sigint_default):
    """Ctrl-C while a batch is on the device: the run ends with status 130 after that call.

    A process that exits while one of its threads is inside XLA aborts ("terminate called
    after throwing ...", SIGABRT) instead of exiting with its status. The run used to wait
    10 s for its threads and then exit, so a device call (or compile) longer than that,
    e.g. a batch of TTA views of ViT-B/16 on a CPU, ended an interrupted run in SIGABRT.
    A second Ctrl-C while it waits used to escape the wait and lose the summary line.
    """
    root, common = dataset
    script = tmp_path / "slow_device_run.py"
    script.write_text(SLOW_DEVICE_RUN)
    started, finished = tmp_path / "started", tmp_path / "finished"
    process = subprocess.Popen(
        [sys.executable, str(script), str(started), str(finished), *common, *CACHE_ARGS,
         "--refine-workers", "1", "--out", str(tmp_path / "out")],
        env=dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while not started.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no batch reached the device within 180 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)  # impatient: the device call takes ~15 s
    status = process.wait(timeout=120)
    err = process.stderr.read().decode()
    process.stderr.close()
    assert status == 130, err
    assert finished.exists(), "the run exited inside the device call"
    assert err.count("Ctrl-C received: stopping") == 2 and "stopped by interrupt" in err, err
    assert "already complete" in err, err  # the summary line


def test_a_worker_outlives_the_thread_that_started_it():
    """Workers end with their parent process, not with the thread that started them.

    ``multiprocessing.Pool`` starts replacement workers from a helper thread; when Linux's
    PR_SET_PDEATHSIG (used before) killed them as that thread ended, an idle one could die
    holding the task queue's lock and leave ``Pool.terminate()`` waiting forever. The
    executor here starts its worker in the thread of its first ``submit``, and reports a
    killed worker instead of hanging.
    """
    executor = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent,
        initargs=(os.getpid(),))
    with executor:
        first = {}
        starter = threading.Thread(target=lambda: first.update(
            pid=executor.submit(os.getpid).result(timeout=120)))
        starter.start()
        starter.join()
        time.sleep(1.0)  # twice the parent watcher's poll
        assert executor.submit(os.getpid).result(timeout=60) == first["pid"]


def test_a_stopping_run_lets_a_second_interrupt_pass_but_not_a_third():
    from jaxseg.run.runner import RunSummary, _wait_through

    def impatient(presses):
        """A wait cut short by ``presses`` interrupts, then done."""
        left = [presses]

        def wait():
            if left[0]:
                left[0] -= 1
                raise KeyboardInterrupt()
        return wait

    stopping = RunSummary(interrupted=KeyboardInterrupt())
    _wait_through([impatient(1), impatient(0)], stopping)  # the second press waits on
    with pytest.raises(KeyboardInterrupt):
        _wait_through([impatient(1), impatient(1)], RunSummary(interrupted=KeyboardInterrupt()))
    # A run that was not stopping counts the first press as its stop, and reports it.
    finished = RunSummary()
    _wait_through([impatient(2)], finished)
    assert isinstance(finished.interrupted, KeyboardInterrupt)
