"""The relevance stage of a batch of images on one device: pack, dispatch, collect.

Both view kinds go through here: TTA views (``jaxseg.maps.batch``) and native views
(``jaxseg.maps.native``). :func:`dispatch` packs a batch on the host, puts it on one device
and starts the compiled program there without waiting (JAX dispatches asynchronously);
:func:`collect` waits for the results (one ``device_get``) and unpacks them per image. A
caller with several devices dispatches one batch to each before collecting any, so every
device runs the same single-device program on its own batch, whatever the device count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxseg.maps import batch as batch_lib
from jaxseg.maps import native as native_lib

# One image's result: (scores [K, H, W], background [H, W], features [gh, gw, P]).
ImageMaps = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass
class Pending:
    """A dispatched batch: the program's device outputs and what unpacking needs."""

    outputs: Any
    images: Sequence[np.ndarray]
    num_labels: Sequence[int]
    view: str
    content: Any  # TTA: content sizes on the canvases; native: real patch grids


def dispatch(compiled: Callable[..., Callable], params: Any, images: Sequence[np.ndarray],
             queries: Sequence[np.ndarray], owners: Sequence[np.ndarray],
             num_labels: Sequence[int], background: np.ndarray, config, patch: int,
             batch_size: int, device: jax.Device) -> Pending:
    """Starts the scores of every image's labels on ``device``, on TTA or native views.

    Args:
      compiled: ``compiled(function, **static)`` -> its jit-compiled program (the CLIP
        handle's ``compiled``).
      params: CLIP parameters, on ``device``.
      images: uint8 ``[H, W, 3]`` images.
      queries: per image, ``[Q_i, P]`` query embeddings.
      owners: per image, int ``[Q_i]``: each query's label (``scoring.score_maps``).
      num_labels: per image, its label count K_i.
      background: ``[M, P]`` background-name embeddings of clip-es's softmax (M may be 0).
      config: the resolved ``SegmentConfig`` (view, tta, native, relevance, scoring).
      patch: the model's patch size.
      batch_size: pad the batch to this many images (a fixed size: no recompiles).
      device: where the program runs.
    """
    width = batch_lib.class_bucket(max(len(q) for q in queries))
    label_width = batch_lib.class_bucket(max(1, max(num_labels)))
    static = dict(relevance=config.relevance, scoring=config.scoring, num_labels=label_width)
    if config.view == "tta":
        (canvases, content_hw), content = batch_lib.pack_tta(images, config.tta, batch_size)
        packed, owner = batch_lib.pack_queries(queries, owners, batch_size, width)
        program = compiled(batch_lib.tta_program, tta=config.tta, **static)
        inputs = (canvases, content_hw, packed, owner)
    else:
        inputs = native_lib.pack_native(images, queries, owners, patch, config.native,
                                        batch_size, width)
        program = compiled(native_lib.native_program, native=config.native,
                           out_shape=native_lib.canvas_shape(images, config.native), **static)
        content = inputs[1]
    outputs = program(params, *jax.device_put((*inputs, background), device))
    return Pending(outputs, images, num_labels, config.view, content)


def collect(pending: Pending) -> list[ImageMaps]:
    """Waits for a dispatched batch: per image ``(scores [K_i, H, W], background [H, W],
    features [gh, gw, P])`` in image coordinates."""
    return unpack(pending, jax.device_get(pending.outputs))


def unpack(pending: Pending, outputs) -> list[ImageMaps]:
    """:func:`collect` of the host copy of a dispatched batch's ``outputs``."""
    if pending.view == "tta":
        return batch_lib.unpack_tta(outputs, pending.content, pending.images, pending.num_labels)
    return [(scores, plane, features[:grid[0], :grid[1]]) for (scores, plane, features), grid
            in zip(native_lib.unpack_native(outputs, pending.images, pending.num_labels),
                   pending.content)]


def require_finite(arrays: Sequence[Any]) -> None:
    """Raises ValueError when an image's host-side outputs (its scores, background or
    unaries; None skipped) are not finite: the device marks an image whose maps are not
    finite with NaN outputs (``jaxseg.maps.methods.mark_broken``), which would otherwise
    become an empty mask."""
    bad = sum(int(np.size(a) - np.isfinite(a).sum()) for a in arrays if a is not None)
    if bad:
        raise ValueError(
            f"the relevance maps of this image are not finite ({bad} NaN or infinite values "
            "reached the refinement): the model's weights hold NaN or its compute dtype "
            "overflowed; check the checkpoint, or load it in float32 (--dtype float32)")
