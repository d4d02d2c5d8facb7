"""The relevance stage of a batch of images: pack, one device call, one ``device_get``, unpack.

Both view kinds go through :func:`relevance_batch`: TTA views (``jaxseg.maps.batch``) and
native views (``jaxseg.maps.native``). The caller (a ``jaxseg.Segmenter``) supplies the
query embeddings of each image's labels and the compiled programs.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxseg.maps import batch as batch_lib
from jaxseg.maps import native as native_lib

# One image's result: (scores [K, H, W], background [H, W], features [gh, gw, P]).
ImageMaps = tuple[np.ndarray, np.ndarray, np.ndarray]


def relevance_batch(compiled: Callable[..., Callable], params: Any,
                    images: Sequence[np.ndarray], queries: Sequence[np.ndarray],
                    owners: Sequence[np.ndarray], num_labels: Sequence[int],
                    background: np.ndarray, config, patch: int, batch_size: int,
                    mesh: Optional[Mesh] = None) -> list[ImageMaps]:
    """Scores of every image's labels, on TTA or native views.

    Args:
      compiled: ``compiled(function, **static)`` -> its jit-compiled program (the CLIP
        handle's ``compiled``).
      params: CLIP parameters (replicated over ``mesh`` when given).
      images: uint8 ``[H, W, 3]`` images.
      queries: per image, ``[Q_i, P]`` query embeddings.
      owners: per image, int ``[Q_i]``: each query's label (``scoring.score_maps``).
      num_labels: per image, its label count K_i.
      background: ``[M, P]`` background-name embeddings of clip-es's softmax (M may be 0).
      config: the resolved ``SegmentConfig`` (view, tta, native, relevance, scoring).
      patch: the model's patch size.
      batch_size: pad the batch to this many images (a multiple of the mesh size).
      mesh: optional device mesh with a ``"data"`` axis.

    Returns:
      Per image ``(scores [K_i, H, W], background [H, W], features [gh, gw, P])``.
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
    if mesh is not None:
        inputs = batch_lib.place(inputs, mesh)
        background = jax.device_put(background, NamedSharding(mesh, PartitionSpec()))
    outputs = jax.device_get(program(params, *inputs, background))
    if config.view == "tta":
        return batch_lib.unpack_tta(outputs, content, images, num_labels)
    grids = inputs[1] if mesh is None else np.asarray(jax.device_get(inputs[1]))
    return [(scores, plane, features[:grid[0], :grid[1]]) for (scores, plane, features), grid
            in zip(native_lib.unpack_native(outputs, images, num_labels), grids)]
