"""An image's output files: names, completeness (resuming a run) and writing.

Outputs of an image: ``<stem>.png`` (palette mask), ``<stem>_overlay.png`` and
``<stem>_maps.png`` if asked (``EXTRAS``), and ``<stem>.json`` last; each is written
atomically, so an output is complete exactly when all its files exist, and a killed run
loses only the images in flight.
"""

from __future__ import annotations

import os
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from jaxseg.run import imageio
from jaxseg.run.heatmaps import write_heatmaps

# Optional pictures beside a mask: <stem>_overlay.png (image blended with the mask) and
# <stem>_maps.png (each label's score map as a heat overlay).
EXTRAS = ("overlay", "maps")


def check_out_dir(out_dir: str) -> None:
    """Raises ValueError, naming ``--out``, unless ``out_dir`` is, or can be made as, a
    folder this user can write to."""
    if not out_dir.strip():
        raise ValueError("--out is empty; pass a folder")
    existing = os.path.realpath(out_dir)  # as os.makedirs will follow its links
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"--out {out_dir}: {existing} is a file, not a folder; pass a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out_dir}: {existing} is not writable; pass a folder you can "
                         f"write to")


def output_names(stem: str, extras: Sequence[str] = ()) -> list[str]:
    """The file names of one output, in writing order (the JSON sidecar last)."""
    return ([f"{stem}.png"] + [f"{stem}_{extra}.png" for extra in EXTRAS if extra in extras]
            + [f"{stem}.json"])


def output_paths(out_dir: str, stem: str, extras: Sequence[str] = ()) -> list[str]:
    """:func:`output_names` in ``out_dir``."""
    return [os.path.join(out_dir, name) for name in output_names(stem, extras)]


def is_complete(out_dir: str, stem: str, extras: Sequence[str] = ()) -> bool:
    """True when every file of the output exists (they are only ever renamed into place whole)."""
    return all(os.path.isfile(path) for path in output_paths(out_dir, stem, extras))


def complete_stems(out_dir: str, stems: Sequence[str], extras: Sequence[str] = ()) -> set[str]:
    """The ``stems`` whose outputs are complete, from one listing of ``out_dir`` (a stat
    per file is slow on shared file systems)."""
    try:
        present = {entry.name for entry in os.scandir(out_dir) if entry.is_file()}
    except FileNotFoundError:
        return set()
    return {stem for stem in stems if present.issuperset(output_names(stem, extras))}


def write_outputs(out_dir: str, item, image: np.ndarray, mask: np.ndarray, labels: Sequence[str],
                  scores: Optional[np.ndarray], extras: Sequence[str], sidecar: Mapping,
                  timings: dict[str, float]) -> dict[str, float]:
    """Writes mask, pictures and sidecar (last) of one image; returns its stage timings.

    Args:
      out_dir: the output folder.
      item: the image's ``Item`` (stem and path).
      image: uint8 ``[H, W, 3]``.
      mask: int ``[H, W]`` label indices.
      labels: the labels segmented.
      scores: ``[K, H, W]`` scores (needed for the ``"maps"`` picture).
      extras: pictures to write, from ``EXTRAS``.
      sidecar: extra sidecar fields (``model``, ``label_scores`` ...).
      timings: stage seconds so far (``write`` is added).
    """
    start = time.perf_counter()
    paths = iter(output_paths(out_dir, item.stem, extras))
    fractions = imageio.label_fractions(mask, labels)
    imageio.write_mask(next(paths), mask)
    if "overlay" in extras:
        imageio.write_overlay(next(paths), image, mask, labels, fractions)
    if "maps" in extras:
        write_heatmaps(next(paths), image, scores, labels)
    timings = {**timings, "write": time.perf_counter() - start}
    imageio.write_json(next(paths), {
        "labels": list(labels), "fractions": fractions, "image": item.path,
        "image_size": list(mask.shape), **sidecar,
        "timings": {name: round(seconds, 4) for name, seconds in timings.items()}})
    return timings
