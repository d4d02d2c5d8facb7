"""The dataset run loop: a pipeline that keeps every device busy while the host refines.

1. The batches come planned (``jaxseg.run.plan``); a batch runs when any of its images
   is incomplete in the output folder (one listing of it), whole, so that it keeps the
   composition that fixes its masks; its complete images are not written again.
2. Reader threads decode the images of the next batches.
3. The device thread dispatches each batch to the next device (``Segmenter.dispatch``,
   asynchronous; at most ``_IN_FLIGHT`` batches per device) and hands it on.
4. The collector thread waits for each batch's results (``Segmenter.collect``) and
   queues its incomplete images for refinement.
5. The calling thread refines them in a process pool (``jaxseg.run.pool``), a bounded
   window at a time, and hands the masks to writer threads.

Interrupted by ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM as the command line turns it),
the run stops taking work, lets the jobs in flight finish, and returns its summary with
``interrupted`` set: finished images are kept, and writes are atomic, so nothing is left
half-written. It returns only once its threads have ended, each after the device call it
is in (which cannot be cut short): a process that exits while a thread is inside XLA
aborts (SIGABRT) instead of exiting with its status.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import queue
import threading
import time
import traceback
from typing import Callable, Optional, Sequence

import numpy as np

from jaxseg.run import imageio
from jaxseg.run.datasets import Item
from jaxseg.run.outputs import EXTRAS, complete_stems, output_names, write_outputs
from jaxseg.run.pool import RefinePool
from jaxseg.segmenter import Segmenter, refine_mask

_IN_FLIGHT = 2  # batches dispatched per device and not yet collected
_READERS = 4  # image-decoding threads
_WRITERS = 2  # output-writing threads
_POLL_SECONDS = 0.1
_DONE = object()
# Stands in for an unreadable image, so its batch keeps its composition (and the masks of
# the others do not change when a file is fixed).
_PLACEHOLDER = np.zeros((16, 16, 3), np.uint8)


@dataclasses.dataclass
class RunSummary:
    """What a run did.

    Attributes:
      written: stems whose outputs were written, in completion order.
      skipped: images whose outputs were already complete.
      failures: ``(path, reason)`` of every input that failed.
      stage_seconds: summed per-image seconds of each stage (``read``, ``auto_labels``,
        ``relevance``, ``refine``, ``write``).
      wall_seconds: duration of the run loop.
      interrupted: the ``KeyboardInterrupt`` (or subclass) that stopped the run, if any.
    """

    written: list[str] = dataclasses.field(default_factory=list)
    skipped: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    wall_seconds: float = 0.0
    interrupted: Optional[BaseException] = None


@dataclasses.dataclass
class _Slot:
    """One image of a batch on its way through the pipeline."""

    item: Item
    fresh: bool  # its outputs are to be written (not already complete)
    image: Optional[np.ndarray] = None
    error: Optional[str] = None  # one-line reason, when it failed
    trace: Optional[str] = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def _read(item: Item, fresh: bool) -> _Slot:
    slot = _Slot(item, fresh)
    start = time.perf_counter()
    try:
        slot.image = imageio.read_image(item.path)
    except Exception as error:  # noqa: BLE001 - reported per image; the run goes on.
        _fail(slot, error)
    slot.timings["read"] = time.perf_counter() - start
    return slot


def _fail(slot: _Slot, error: BaseException) -> None:
    slot.error = error.reason if isinstance(error, imageio.ImageReadError) else (
        f"{type(error).__name__}: {' '.join(str(error).split())}")
    slot.trace = "".join(traceback.format_exception(error))


def _get(source: queue.Queue, stop: threading.Event):
    """The next entry of ``source``; ``_DONE`` once ``stop`` is set."""
    while not stop.is_set():
        try:
            return source.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            continue
    return _DONE


def _put(target: queue.Queue, entry, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            target.put(entry, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _feed(work: Sequence[list[Item]], done: set, segmenter: Segmenter, batch_size: int,
          keep_maps: bool, handoff: queue.Queue, stop: threading.Event) -> None:
    """Device thread: reads ahead, dispatches each batch to the next device (the full
    score maps fetched only when ``keep_maps``)."""
    reads: collections.deque = collections.deque()
    batches = iter(work)
    with concurrent.futures.ThreadPoolExecutor(_READERS, "jaxseg-read") as readers:

        def read_ahead() -> None:
            for batch in batches:
                reads.append([readers.submit(_read, item, item.stem not in done)
                              for item in batch])
                return

        try:
            for _ in range(_IN_FLIGHT * len(segmenter.devices)):
                read_ahead()
            index = 0
            while reads and not stop.is_set():
                slots = [future.result() for future in reads.popleft()]
                read_ahead()
                images = [_PLACEHOLDER if slot.error else slot.image for slot in slots]
                labels = [[] if slot.error else slot.item.labels for slot in slots]
                try:
                    pending = segmenter.dispatch(images, labels, batch_size, index, keep_maps)
                except Exception as error:  # noqa: BLE001 - reported per image.
                    for slot in slots:
                        if not slot.error:
                            _fail(slot, error)
                    pending = None
                index += 1
                if not _put(handoff, (slots, pending), stop):
                    return
        finally:
            for futures in reads:
                for future in futures:
                    future.cancel()
            _put(handoff, _DONE, stop)


def _collect(segmenter: Segmenter, handoff: queue.Queue, jobs: queue.Queue,
             stop: threading.Event) -> None:
    """Collector thread: waits for each batch's results, queues its fresh images."""
    try:
        while (entry := _get(handoff, stop)) is not _DONE:
            slots, pending = entry
            outputs = [None] * len(slots)
            if pending is not None:
                try:
                    outputs = segmenter.collect(pending)
                except Exception as error:  # noqa: BLE001 - reported per image.
                    for slot in slots:
                        if not slot.error:
                            _fail(slot, error)
            for slot, output in zip(slots, outputs):
                if slot.fresh and not _put(jobs, (slot, output), stop):
                    return
    finally:
        _put(jobs, _DONE, stop)


def _wait_through(waits: Sequence[Callable[[], None]], summary: RunSummary) -> None:
    """Runs each wait to its end. Once the run is stopping (``summary.interrupted``), a
    second Ctrl-C or SIGTERM is let pass, so that the run still finishes its writes and
    reports its summary; a third ends the wait (a hung thread must not make the run
    unstoppable)."""
    presses = 1 if summary.interrupted else 0
    for wait in waits:
        while True:
            try:
                wait()
                break
            except KeyboardInterrupt as interrupt:
                summary.interrupted = summary.interrupted or interrupt
                presses += 1
                if presses > 2:
                    raise


def run_dataset(batches: Sequence[list[Item]], segmenter: Segmenter, out_dir: str,
                batch_size: int, *, model_name: str = "", extras: Sequence[str] = (),
                overwrite: bool = False, make_progress: Optional[Callable[[int], object]] = None,
                report: Optional[Callable[[str, str, Optional[str]], None]] = None,
                refine_workers: Optional[int] = 0) -> RunSummary:
    """Segments every planned image not yet complete in ``out_dir``.

    Args:
      batches: this process's batches (``jaxseg.run.plan``), items with prepared labels.
      segmenter: the ``jaxseg.Segmenter`` whose stages the run schedules (on its devices).
      out_dir: output folder (created; stale temporary files in it are deleted).
      batch_size: images per device call (batches are padded to it).
      model_name: written to each sidecar's ``"model"``.
      extras: pictures to write beside each mask, from ``EXTRAS``.
      overwrite: redo complete outputs too.
      make_progress: optional ``make_progress(total)`` -> an object with ``update(n)`` and
        ``close()`` (e.g. a tqdm bar), advanced once per image.
      report: called as ``report(path, reason, traceback_text)`` for each failure.
      refine_workers: refinement worker processes (0: in this thread; None: the pool's
        default). A run of one image always refines in this thread.

    Returns:
      A :class:`RunSummary`.
    """
    os.makedirs(out_dir, exist_ok=True)
    stems = [item.stem for batch in batches for item in batch]
    imageio.remove_stale_temporaries(out_dir, {name for stem in stems
                                               for name in output_names(stem, EXTRAS)})
    done = set() if overwrite else complete_stems(out_dir, stems, extras)
    work = [batch for batch in batches if any(item.stem not in done for item in batch)]
    summary = RunSummary(skipped=len(done))
    fresh = len(stems) - len(done)
    progress = make_progress(fresh) if make_progress is not None else None
    started = time.perf_counter()
    stop = threading.Event()
    handoff: queue.Queue = queue.Queue(maxsize=_IN_FLIGHT * len(segmenter.devices))
    jobs: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    # Not daemons: the interpreter's exit waits for them too (after a second Ctrl-C), since
    # exiting under a thread that is inside XLA aborts the process.
    threads = [threading.Thread(target=_feed, name="jaxseg-device",
                                args=(work, done, segmenter, batch_size, "maps" in extras, handoff,
                                      stop)),
               threading.Thread(target=_collect, name="jaxseg-collect",
                                args=(segmenter, handoff, jobs, stop))]
    writes: collections.deque = collections.deque()

    def finish(slot: _Slot, error: Optional[BaseException] = None) -> None:
        if error is not None:
            _fail(slot, error)
        if slot.error:
            summary.failures.append((slot.item.path, slot.error))
            if report is not None:
                report(slot.item.path, slot.error, slot.trace)
        else:
            summary.written.append(slot.item.stem)
            for stage, seconds in slot.timings.items():
                summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + seconds
        if progress is not None:
            progress.update(1)

    def drain(block: bool) -> None:
        while writes and (block or writes[0][1].done() or len(writes) > 2 * _WRITERS):
            slot, future = writes[0]
            error = future.exception()  # popped after the wait, which a Ctrl-C may cut short
            writes.popleft()
            if error is None:
                slot.timings = future.result()
            finish(slot, error)

    def refine_jobs():
        while (entry := jobs.get()) is not _DONE:
            slot, output = entry
            if slot.error:
                finish(slot)
                continue
            slot.timings.update(output.timings)
            # Score maps are kept for the heat-map picture only.
            yield (slot, output, output.scores if "maps" in extras else None), (
                slot.image, output, segmenter.config)

    for thread in threads:
        thread.start()
    try:
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(RefinePool(0 if fresh <= 1 else refine_workers))
            writers = stack.enter_context(
                concurrent.futures.ThreadPoolExecutor(_WRITERS, "jaxseg-write"))
            # Unwound first: an interrupted run's device threads stop while the pool and the
            # writers finish their jobs.
            stack.callback(stop.set)
            for (slot, output, scores), future in pool.imap(refine_mask, refine_jobs()):
                try:
                    mask, slot.timings["refine"] = future.result()
                except Exception as error:  # noqa: BLE001 - reported per image.
                    finish(slot, error)
                    continue
                sidecar = {"model": model_name}
                if output.label_scores is not None:
                    # Image-level automatic labels record CLIP's probability, dense ones the
                    # share of pixels each label won.
                    key = ("label_shares" if segmenter.config.auto.rule == "dense"
                           else "label_scores")
                    sidecar[key] = {name: round(score, 6)
                                    for name, score in zip(output.labels, output.label_scores)}
                writes.append((slot, writers.submit(
                    write_outputs, out_dir, slot.item, slot.image, mask, output.labels, scores,
                    extras, sidecar, slot.timings)))
                drain(block=False)
            drain(block=True)
    except KeyboardInterrupt as interrupt:
        summary.interrupted = interrupt
    finally:
        stop.set()
        waits = [thread.join for thread in threads]
        if summary.interrupted:  # the writes the interrupt left unaccounted, first
            waits.insert(0, functools.partial(drain, True))
        _wait_through(waits, summary)
        if progress is not None:
            progress.close()
    summary.wall_seconds = time.perf_counter() - started
    return summary
