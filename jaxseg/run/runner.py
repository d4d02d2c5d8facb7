"""The dataset run loop: device batches in one thread, refinement and writing in another.

Structure (so that sharding and a refinement process pool can be added on top):

1. :func:`prepare_items` cleans every item's labels once, up front.
2. :func:`select_work` drops items whose outputs are complete (resuming a run);
   it is a pure function of the item list and the output folder.
3. :func:`run_dataset` starts a producer thread that reads images, picks automatic
   labels, groups images by padded label count (``class_bucket``, so each group
   reuses one compiled program) and runs :meth:`jaxseg.Segmenter.relevance_stage`
   on fixed-size batches; the groups' leftovers are batched together at the end.
   A bounded queue hands the results to the consumer (the calling thread), which
   refines the images in a :class:`jaxseg.run.sharding.RefinePool` (worker processes,
   a bounded window) while the device runs ahead, and writes the outputs in order.

Outputs of an image: ``<stem>.png`` (palette mask), ``<stem>_overlay.png`` and
``<stem>_maps.png`` if asked (``EXTRAS``), and ``<stem>.json`` last; each is written atomically, so an output is
complete exactly when its JSON (and the files before it) exist, and a killed run
loses only the images in flight.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
import traceback
import warnings
from typing import Callable, Optional, Sequence

import numpy as np

from jaxseg.maps.batch import class_bucket
from jaxseg.run import imageio
from jaxseg.run.datasets import Item
from jaxseg.run.heatmaps import write_heatmaps
from jaxseg.run.sharding import RefinePool, device_batch_size
from jaxseg.segmenter import Segmenter, refine_mask

# Device batches allowed to wait for the host: bounds memory yet keeps the device busy.
_QUEUE_BATCHES = 2
_DONE = object()


@dataclasses.dataclass
class RunSummary:
    """What a run did.

    Attributes:
      written: stems whose outputs were written, in completion order.
      skipped: items skipped because their outputs were already complete.
      failures: ``(path, reason)`` of every input that failed.
      stage_seconds: summed per-image seconds of each stage (``read``, ``auto_labels``,
        ``relevance``, ``refine``, ``write``).
      wall_seconds: duration of the run loop.
    """

    written: list[str] = dataclasses.field(default_factory=list)
    skipped: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    wall_seconds: float = 0.0


# Optional pictures beside a mask: <stem>_overlay.png (image blended with the mask) and
# <stem>_maps.png (each label's score map as a heat overlay).
EXTRAS = ("overlay", "maps")


def output_paths(out_dir: str, stem: str, extras: Sequence[str] = ()) -> list[str]:
    """The files of one output, in writing order (the JSON sidecar last)."""
    names = ([f"{stem}.png"] + [f"{stem}_{extra}.png" for extra in EXTRAS if extra in extras]
             + [f"{stem}.json"])
    return [os.path.join(out_dir, name) for name in names]


def is_complete(out_dir: str, stem: str, extras: Sequence[str] = ()) -> bool:
    """True when every file of the output exists (they are only ever renamed into place whole)."""
    return all(os.path.isfile(path) for path in output_paths(out_dir, stem, extras))


def select_work(items: Sequence[Item], out_dir: str, overwrite: bool = False,
                extras: Sequence[str] = ()) -> tuple[list[Item], int]:
    """Items still to run, in input order, and how many were skipped as complete."""
    todo = [item for item in items if overwrite or not is_complete(out_dir, item.stem, extras)]
    return todo, len(items) - len(todo)


def prepare_items(items: Sequence[Item], segmenter: Segmenter,
                  warn: Callable[[str], None]) -> tuple[list[Item], list[tuple[str, str]]]:
    """Prepares every item's labels once, up front (``Segmenter.prepare_labels``: empty
    and repeated names dropped, over-long ones shortened), sending its warnings to ``warn``.

    Returns the items with prepared labels and ``(path, reason)`` failures (more
    labels than a palette PNG can index).
    """
    prepared, failures = [], []
    for item in items:
        if isinstance(item.labels, str):  # "auto": the vocabulary is already clean
            prepared.append(item)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = segmenter.prepare_labels(item.labels)
        for message in caught:
            warn(str(message.message))
        if len(names) > imageio.MAX_LABELS:
            failures.append((item.path, f"{len(names)} labels; a palette PNG mask holds at "
                                        f"most {imageio.MAX_LABELS}"))
        else:
            prepared.append(item._replace(labels=names))
    return prepared, failures


@dataclasses.dataclass
class _Loaded:
    item: Item
    image: np.ndarray
    labels: list[str]
    label_scores: Optional[list[float]]
    timings: dict[str, float]
    dense_auto: bool = False  # labels picked by pixel share (label_scores are shares)


def _load(item: Item, segmenter: Segmenter) -> _Loaded:
    start = time.perf_counter()
    image = imageio.read_image(item.path)
    timings = {"read": time.perf_counter() - start}
    if isinstance(item.labels, str):
        start = time.perf_counter()
        [(names, scores)] = segmenter.auto_labels([image])
        timings["auto_labels"] = time.perf_counter() - start
        return _Loaded(item, image, names, scores, timings,
                       dense_auto=segmenter.config.auto.rule == "dense")
    return _Loaded(item, image, list(item.labels), None, timings)


def _produce(work: Sequence[Item], segmenter: Segmenter, batch_size: int,
             handoff: queue.Queue, stop: threading.Event) -> None:
    """Producer thread: loads images, batches them by label bucket, runs the device stage."""

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def dispatch(batch: list[_Loaded]) -> bool:
        start = time.perf_counter()
        try:
            outputs = segmenter.relevance_stage([b.image for b in batch],
                                                [b.labels for b in batch], batch_size)
        except Exception as error:  # noqa: BLE001 - reported per image; the run goes on.
            return all(put((b.item, error, traceback.format_exc())) for b in batch)
        share = (time.perf_counter() - start) / len(batch)
        for loaded, output in zip(batch, outputs):
            loaded.timings["relevance"] = share
            if not put((loaded, output)):
                return False
        return True

    pending: dict[int, list[_Loaded]] = {}
    try:
        for item in work:
            if stop.is_set():
                return
            try:
                loaded = _load(item, segmenter)
            except Exception as error:  # noqa: BLE001 - reported per image; the run goes on.
                if not put((item, error, traceback.format_exc())):
                    return
                continue
            bucket = class_bucket(len(loaded.labels)) if loaded.labels else 0
            pending.setdefault(bucket, []).append(loaded)
            if (bucket == 0 or len(pending[bucket]) == batch_size) and not dispatch(
                    pending.pop(bucket)):
                return
        # Leftover groups share batches (classes padded to the largest bucket among them):
        # fewer padded device slots than one part-empty batch per group.
        leftovers = [loaded for bucket in sorted(pending) for loaded in pending[bucket]]
        for start in range(0, len(leftovers), batch_size):
            if not dispatch(leftovers[start:start + batch_size]):
                return
    finally:
        put(_DONE)


def _write(loaded: _Loaded, mask: np.ndarray, scores: Optional[np.ndarray], out_dir: str,
           model_name: str, extras: Sequence[str]) -> dict[str, float]:
    """Writes mask, pictures and sidecar (last) of one image; returns its stage timings."""
    timings = loaded.timings
    start = time.perf_counter()
    paths = iter(output_paths(out_dir, loaded.item.stem, extras))
    fractions = imageio.label_fractions(mask, loaded.labels)
    imageio.write_mask(next(paths), mask)
    if "overlay" in extras:
        imageio.write_overlay(next(paths), loaded.image, mask, loaded.labels, fractions)
    if "maps" in extras:
        write_heatmaps(next(paths), loaded.image, scores, loaded.labels)
    timings["write"] = time.perf_counter() - start
    sidecar = {"labels": loaded.labels, "fractions": fractions, "image": loaded.item.path,
               "image_size": list(mask.shape), "model": model_name,
               "timings": {name: round(seconds, 4) for name, seconds in timings.items()}}
    if loaded.label_scores is not None:
        # Image-level automatic labels record CLIP's probability, dense ones the pixel share.
        key = "label_shares" if loaded.dense_auto else "label_scores"
        sidecar[key] = {name: round(score, 6)
                        for name, score in zip(loaded.labels, loaded.label_scores)}
    imageio.write_json(next(paths), sidecar)
    return timings


def run_dataset(items: Sequence[Item], segmenter: Segmenter, out_dir: str,
                batch_size: int = 8, *, model_name: str = "", extras: Sequence[str] = (),
                overwrite: bool = False, make_progress: Optional[Callable[[int], object]] = None,
                report: Optional[Callable[[str, str, Optional[str]], None]] = None,
                refine_workers: Optional[int] = 0) -> RunSummary:
    """Segments every item not yet complete in ``out_dir``.

    Args:
      items: ``(stem, path, labels)`` with prepared labels (see :func:`prepare_items`).
      segmenter: the ``jaxseg.Segmenter`` whose stages the run schedules (its mesh, if
        any, splits each device batch).
      out_dir: output folder (created; stale temporary files in it are deleted).
      batch_size: images per device call, at most (never more than the images to run;
        the last batch of a label group is padded).
      model_name: written to each sidecar's ``"model"``.
      extras: pictures to write beside each mask, from ``EXTRAS``.
      overwrite: redo complete outputs too.
      make_progress: optional ``make_progress(total)`` -> an object with ``update(n)`` and
        ``close()`` (e.g. a tqdm bar), advanced once per image.
      report: called as ``report(path, reason, traceback_text)`` for each failure.
      mesh: optional device mesh (``jaxseg.run.sharding.data_mesh``); the batch size is
        rounded up to a multiple of its devices.
      refine_workers: refinement worker processes (0: inline in this thread; None:
        one per core). A run of one image always refines inline.

    Returns:
      A :class:`RunSummary`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    os.makedirs(out_dir, exist_ok=True)
    imageio.remove_stale_temporaries(out_dir, {
        os.path.basename(path) for item in items
        for path in output_paths(out_dir, item.stem, EXTRAS)})
    work, skipped = select_work(items, out_dir, overwrite, extras)
    summary = RunSummary(skipped=skipped)
    batch_size = device_batch_size(min(batch_size, max(1, len(work))), segmenter.mesh)
    progress = make_progress(len(work)) if make_progress is not None else None
    started = time.perf_counter()
    handoff: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES * batch_size)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(work, segmenter, batch_size, handoff, stop),
                                name="jaxseg-device", daemon=True)

    def fail(item: Item, error: BaseException, trace: Optional[str]) -> None:
        reason = error.reason if isinstance(error, imageio.ImageReadError) else (
            f"{type(error).__name__}: {' '.join(str(error).split())}")
        summary.failures.append((item.path, reason))
        if report is not None:
            report(item.path, reason, trace)

    def refine_jobs():
        # Producer failures are reported here, in order; good entries go to the pool.
        while (entry := handoff.get()) is not _DONE:
            if isinstance(entry[1], BaseException):
                fail(*entry)
                if progress is not None:
                    progress.update(1)
            else:
                loaded, output = entry
                # Score maps are kept for the heat-map picture only.
                yield (loaded, output.scores if "maps" in extras else None), (
                    loaded.image, output, segmenter.config)

    producer.start()
    try:
        with RefinePool(0 if len(work) <= 1 else refine_workers) as pool:
            for (loaded, scores), future in pool.imap(refine_mask, refine_jobs()):
                try:
                    mask, loaded.timings["refine"] = future.result()
                    timings = _write(loaded, mask, scores, out_dir, model_name, extras)
                except Exception as error:  # noqa: BLE001 - reported per image; the run goes on.
                    fail(loaded.item, error, traceback.format_exc())
                else:
                    summary.written.append(loaded.item.stem)
                    for stage, seconds in timings.items():
                        total = summary.stage_seconds.get(stage, 0.0)
                        summary.stage_seconds[stage] = total + seconds
                if progress is not None:
                    progress.update(1)
    finally:
        stop.set()
        producer.join(timeout=5.0)
        if progress is not None:
            progress.close()
    summary.wall_seconds = time.perf_counter() - started
    return summary
