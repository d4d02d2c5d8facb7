"""What a dataset run computes: prepared labels, and batches fixed by the item list alone.

An image's scores depend on the batch it shares a device call with (matrix products of
different shapes round differently), so the batches are planned once from the whole item
list, the same way in every process, on any device count and when a run resumes:
:func:`plan_batches` sorts the items by stem, groups them by the padded count of their
labels (automatic labels form one group), and cuts each group into consecutive batches.
Processes then take every N-th batch (:func:`process_batches`), and a resumed run redoes
the batches that still have incomplete images, whole.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

from jaxseg.maps.batch import class_bucket
from jaxseg.run import imageio
from jaxseg.run.datasets import Item


def prepare_items(items: Sequence[Item], segmenter,
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


def plan_batches(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """The run's batches: items sorted by stem, grouped by ``class_bucket`` of their label
    count (automatic labels together), each group cut into consecutive batches of
    ``batch_size``; batches ordered by their first item. A pure function of the items."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[object, list[Item]] = {}
    for item in sorted(items, key=lambda item: (item.stem, item.path)):
        key = "auto" if isinstance(item.labels, str) else class_bucket(max(1, len(item.labels)))
        groups.setdefault(key, []).append(item)
    batches = [group[start:start + batch_size] for group in groups.values()
               for start in range(0, len(group), batch_size)]
    return sorted(batches, key=lambda batch: (batch[0].stem, batch[0].path))


def process_batches(batches: Sequence[list[Item]], process_index: int,
                    process_count: int) -> list[list[Item]]:
    """This process's disjoint share of the planned batches (every ``process_count``-th)."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside 0 .. {process_count - 1}")
    return list(batches[process_index::process_count])
