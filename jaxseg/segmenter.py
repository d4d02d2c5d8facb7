"""The segmentation pipeline: labels -> relevance -> refinement -> mask, one orchestrator.

A :class:`Segmenter` owns the stage order, its compiled device programs (made by the CLIP
handle, which shares them between Segmenters of the same settings), the label embeddings
it has computed, and the device mesh. The Python API (``jaxseg.segment``,
``jaxseg.segment_batch``) and the command line's dataset runner both go through it:

- :meth:`Segmenter.relevance_stage` is the device work for a batch of images (labels
  prepared or picked automatically, maps of every label; one ``device_get``);
- :meth:`Segmenter.refine_stage` is the host work for one image (pure numpy/PyMaxflow on
  picklable inputs; :func:`refine_mask` is the same as a module-level function, for
  worker processes).

Nothing is cached at module level: programs and caches go with their Segmenter and model.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh

from jaxseg.config import SegmentConfig
from jaxseg.imaging import as_rgb_uint8
from jaxseg.labels import autolabel
from jaxseg.labels.prompts import class_embeddings, prepare_labels
from jaxseg.labels.vocab import load_vocabulary
from jaxseg.maps import batch as batch_lib
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.refine import refine

Labels = Union[Sequence[str], str]


@dataclasses.dataclass
class SegmentResult:
    """Output of ``segment``.

    Attributes:
      mask: int32 ``[H, W]``: 0 background, ``i + 1`` = ``labels[i]``.
      scores: float32 ``[K, H, W]`` TTA relevance in image coordinates, in [0, 1].
      labels: the labels used, in order (after cleaning or automatic labelling).
      timings: seconds per stage (``relevance``, ``refine``; ``auto_labels`` if used).
      label_scores: for automatic labels, the probability of each chosen label.
    """

    mask: np.ndarray
    scores: np.ndarray
    labels: list[str]
    timings: dict[str, float]
    label_scores: Optional[list[float]] = None


@dataclasses.dataclass
class DeviceOutput:
    """What the device stage hands the host stage for one image (picklable).

    Attributes:
      labels: the labels segmented (prepared, or picked automatically).
      scores: float32 ``[K, H, W]`` relevance in image coordinates, in [0, 1].
      features: float32 ``[gh, gw, P]`` CLIP patch features, or None.
      label_scores: for automatic labels, the probability of each chosen label.
      timings: seconds per stage so far.
    """

    labels: list[str]
    scores: np.ndarray
    features: Optional[np.ndarray]
    label_scores: Optional[list[float]] = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def refine_mask(image: np.ndarray, output: DeviceOutput,
                config: RefineConfig) -> tuple[np.ndarray, float]:
    """The host stage of one image: its mask (int32 ``[H, W]``) and the seconds it took.

    Module level and picklable, so a process pool can run it.
    """
    start = time.perf_counter()
    mask = refine(image, output.scores, output.features, config)
    return mask, time.perf_counter() - start


class Segmenter:
    """Segments images with one CLIP model and one configuration.

    Args:
      clip: a ``jaxseg.CLIP`` from ``load_clip``.
      config: every stage's settings.
      mesh: optional ``jax.sharding.Mesh`` with a ``"data"`` axis: batches are split over
        its devices (batch sizes rounded up to a multiple of its size), parameters
        replicated.
    """

    def __init__(self, clip, config: SegmentConfig = SegmentConfig(), mesh: Optional[Mesh] = None):
        self.clip, self.config, self.mesh = clip, config, mesh
        # The programs are made by the CLIP handle, which shares them between Segmenters of
        # the same settings (``jaxseg.segment`` makes one per call) and frees them with itself.
        self._relevance_program = clip.compiled(batch_lib.tta_program, tta=config.tta,
                                                relevance=config.relevance)
        self._auto_program = clip.compiled(autolabel.variant_probabilities, tta=config.tta)
        self._prepared: dict[tuple[str, ...], list[str]] = {}
        self._embeddings: dict[str, np.ndarray] = {}
        self._vocabulary = None  # (names, [E, P] embeddings), made on first use
        self._replicated = None  # parameters on every device of the mesh, made on first use

    def prepare_labels(self, labels: Sequence[str]) -> list[str]:
        """User labels -> the labels segmented (``jaxseg.labels.prompts.prepare_labels``:
        empty and repeated names dropped, over-long ones shortened, each with a warning,
        given the first time a label list is seen)."""
        key = tuple(labels) if not isinstance(labels, str) else labels
        if key not in self._prepared:
            self._prepared[key] = prepare_labels(
                labels, self.clip.tokenizer, self.config.tta.templates,
                self.clip.config.text.max_position_embeddings)
        return list(self._prepared[key])

    def label_embeddings(self, labels: Sequence[str]) -> np.ndarray:
        """``[K, P]`` prompt-ensembled embeddings of prepared labels, each computed once."""
        for label in labels:
            if label not in self._embeddings:
                # One label at a time: its embedding does not depend on the others in a batch.
                self._embeddings[label] = class_embeddings(
                    self.clip, [label], self.config.tta.templates)[0]
        if not labels:
            return np.zeros((0, self.clip.config.projection_dim), np.float32)
        return np.stack([self._embeddings[label] for label in labels])

    def auto_labels(self, image: np.ndarray) -> tuple[list[str], list[float]]:
        """Labels picked by CLIP from ``config.auto.vocabulary`` for a uint8 ``[H, W, 3]``
        image, best first, and their probabilities (see ``jaxseg.labels.autolabel``)."""
        auto = self.config.auto
        if self._vocabulary is None:
            entries = load_vocabulary(auto.vocabulary)
            self._vocabulary = ([entry.name for entry in entries], autolabel.vocabulary_embeddings(
                self.clip, entries, self.config.tta.templates) if entries else None)
        names, embeds = self._vocabulary
        if not names or auto.top_k == 0:
            return [], []
        canvas, content_hw = batch_lib.tta_lib.prepare_canvas(image, self.config.tta)
        probabilities = self._auto_program(self.clip.params, canvas,
                                           np.asarray(content_hw, np.int32), embeds)
        chosen = autolabel.select_labels(names, np.asarray(jax.device_get(probabilities)).max(0),
                                         auto)
        return [name for name, _ in chosen], [score for _, score in chosen]

    def _params(self):
        if self.mesh is None:
            return self.clip.params
        if self._replicated is None:
            self._replicated = batch_lib.replicate(self.clip.params, self.mesh)
        return self._replicated

    def relevance_stage(self, images: Sequence[np.ndarray], labels: Sequence[Labels],
                        batch_size: Optional[int] = None) -> list[DeviceOutput]:
        """The device stage of a batch: labels, then every label's map (one ``device_get``).

        Args:
          images: uint8 ``[H, W, 3]`` RGB images (see ``jaxseg.imaging.as_rgb_uint8``).
          labels: per image, class names (prepared here) or ``"auto"``.
          batch_size: pad the device batch to this many images (default ``len(images)``;
            a fixed size keeps the last, smaller batch of a dataset from recompiling);
            rounded up to a multiple of the mesh's devices.

        Returns:
          One :class:`DeviceOutput` per image; images without labels skip the device.
        """
        outputs = []
        for image, wanted in zip(images, labels):
            if isinstance(wanted, str) and wanted == "auto":
                start = time.perf_counter()
                names, scores = self.auto_labels(image)
                outputs.append(DeviceOutput(names, None, None, scores,
                                            {"auto_labels": time.perf_counter() - start}))
            else:
                outputs.append(DeviceOutput(self.prepare_labels(wanted), None, None))
        todo = [i for i, out in enumerate(outputs) if out.labels]
        start = time.perf_counter()
        if todo:
            batch = max(batch_size or 0, len(todo))
            if self.mesh is not None:
                batch = -(-batch // self.mesh.size) * self.mesh.size
            embeds = [self.label_embeddings(outputs[i].labels) for i in todo]
            inputs, content = batch_lib.pack_batch([images[i] for i in todo], embeds,
                                                   self.config.tta, batch)
            if self.mesh is not None:
                inputs = batch_lib.place(inputs, self.mesh)
            device = jax.device_get(self._relevance_program(self._params(), *inputs))
            results = batch_lib.unpack_batch(device, content, [images[i] for i in todo],
                                             [len(e) for e in embeds])
            for i, (scores, features) in zip(todo, results):
                outputs[i].scores = scores
                outputs[i].features = features if self.config.use_features else None
        share = (time.perf_counter() - start) / len(images)
        for image, out in zip(images, outputs):
            if out.scores is None:
                out.scores = np.zeros((0,) + image.shape[:2], np.float32)
            out.timings["relevance"] = share
        return outputs

    def refine_stage(self, image: np.ndarray, output: DeviceOutput) -> SegmentResult:
        """The host stage of one image: refinement of its device output into a mask."""
        mask, seconds = refine_mask(image, output, self.config.refine)
        return SegmentResult(mask, output.scores, output.labels,
                             {**output.timings, "refine": seconds}, output.label_scores)

    def segment_batch(self, images: Sequence[np.ndarray], labels: Sequence[Labels],
                      batch_size: Optional[int] = None) -> list[SegmentResult]:
        """Segments several images; relevance for all of them runs in one device call.

        Args:
          images: image arrays (``[H, W]`` grey, ``[H, W, 3|4]``; uint8, uint16 or float).
          labels: per image, a list of class names or ``"auto"``.
          batch_size: pad the device batch to this many images.
        """
        images = [as_rgb_uint8(image) for image in images]
        return [self.refine_stage(image, output) for image, output
                in zip(images, self.relevance_stage(images, labels, batch_size))]

    def segment(self, image: np.ndarray, labels: Labels) -> SegmentResult:
        """Segments one image given its class names (or ``"auto"``); see :func:`segment`."""
        return self.segment_batch([image], [labels])[0]


def segment_batch(clip, images: Sequence[np.ndarray], labels: Sequence[Labels],
                  config: SegmentConfig = SegmentConfig(),
                  batch_size: Optional[int] = None) -> list[SegmentResult]:
    """``Segmenter(clip, config).segment_batch(images, labels, batch_size)``."""
    return Segmenter(clip, config).segment_batch(images, labels, batch_size)


def segment(clip, image: np.ndarray, labels: Labels,
            config: SegmentConfig = SegmentConfig()) -> SegmentResult:
    """Segments one image given its class names (or ``"auto"``).

    A thin call of a :class:`Segmenter`; to segment many images, make one Segmenter and
    reuse it (it keeps its compiled programs and label embeddings).

    Args:
      clip: a ``jaxseg.CLIP`` from ``load_clip``.
      image: ``[H, W, 3]`` uint8 RGB (grey, RGBA, uint16 and float are converted).
      labels: class names present in the image, or ``"auto"`` to pick them from
        ``config.auto.vocabulary`` with CLIP. Empty and repeated names are dropped and
        names too long for CLIP's prompt shortened, with a warning.
      config: every stage's settings.

    Returns:
      ``SegmentResult`` with ``mask`` int32 ``[H, W]`` (0 background, ``i + 1`` =
      ``labels[i]``), ``scores`` float32 ``[K, H, W]`` and the labels used.
    """
    return Segmenter(clip, config).segment(image, labels)
