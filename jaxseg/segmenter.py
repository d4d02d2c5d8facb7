"""The segmentation pipeline: labels -> relevance -> refinement -> mask, one orchestrator.

A :class:`Segmenter` owns the stage order, its compiled device programs (made by the CLIP
handle, which shares them between Segmenters of the same settings), the label embeddings
it has computed, and the device mesh. The Python API (``jaxseg.segment``,
``jaxseg.segment_batch``) and the command line's dataset runner both go through it:

- :meth:`Segmenter.relevance_stage` is the device work for a batch of images (labels
  prepared or picked automatically, maps of every label and, for jaxseg's refinement,
  the graph cut's unaries at refinement size: ``jaxseg.refinement.unaries``; one
  ``device_get``);
- :meth:`Segmenter.refine_stage` is the host work for one image (the graph cut, the
  dense CRF or the argmax; pure numpy/PyMaxflow on picklable inputs; :func:`refine_mask`
  is the same as a module-level function, for worker processes).

Nothing is cached at module level: programs and caches go with their Segmenter and model.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh

from jaxseg.config import SegmentConfig
from jaxseg.imaging import as_rgb_uint8
from jaxseg.labels import autolabel
from jaxseg.labels.presets import label_queries
from jaxseg.labels.prompts import class_embeddings, prepare_labels
from jaxseg.labels.vocab import load_vocabulary
from jaxseg.maps import batch as batch_lib
from jaxseg.maps.scoring import label_map
from jaxseg.maps import stage
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.crf import dense_crf
from jaxseg.refinement.refine import cut_unaries, lay_batch
from jaxseg.refinement.unaries import batch_unaries_program
from jaxseg.results import DeviceOutput, SegmentResult

Labels = Union[Sequence[str], str]


def check_label_entries(images: Sequence[np.ndarray], labels: Sequence[Labels]) -> None:
    """Raises ValueError unless ``labels`` holds one entry (names or ``"auto"``) per image
    (``zip`` would drop the images past the shorter list without a word)."""
    if isinstance(labels, str) or len(labels) != len(images):
        given = "a string" if isinstance(labels, str) else f"{len(labels)} label entries"
        raise ValueError(f"labels must hold one list of names or 'auto' per image: got {given} "
                         f"for {len(images)} image(s)")


def refine_mask(image: np.ndarray, output: DeviceOutput,
                config: SegmentConfig) -> tuple[np.ndarray, float]:
    """The host stage of one image: its mask (int32 ``[H, W]``) and the seconds it took.

    ``config.refine_mode`` chooses jaxseg's refinement (``"graphcut"``: the cut of the
    device's unaries), the dense CRF (``"crf"``) or the argmax of the scores (``"none"``).
    Module level and picklable (a process pool runs it); ValueError for maps not finite.
    """
    start = time.perf_counter()
    stage.require_finite([output.unaries] if config.refine_mode == "graphcut"
                         else [output.scores, output.background])
    if config.refine_mode == "graphcut":
        if output.unaries is not None and output.made_with != config.refine:
            raise ValueError("the output's unaries were made with other refinement settings "
                             "(before Segmenter.with_refine?); make it with the refining one")
        mask = (np.zeros(image.shape[:2], np.int32) if not output.labels
                else cut_unaries(image, output.unaries, config.refine))
    elif config.refine_mode == "crf":
        mask = dense_crf(image, output.scores, output.background, config.crf)
    else:
        mask = label_map(output.scores, output.background, config.scoring.prob_threshold)
    return mask, time.perf_counter() - start


@dataclasses.dataclass
class PendingBatch:
    """A batch whose device work was started (:meth:`Segmenter.dispatch`)."""

    outputs: list[DeviceOutput]
    shapes: list[tuple[int, int]]  # each image's (H, W)
    todo: list[int]  # the images with labels, in order
    pending: Optional[stage.Pending]
    started: float
    keep_maps: bool = True  # fetch the full score maps (not only the unaries)
    unaries: Optional[jax.Array] = None  # [B, K + 1, S, S] on the device (graphcut mode)
    refine_hw: Sequence[tuple[int, int]] = ()  # each labelled image's refinement size
    made_with: Optional[RefineConfig] = None  # the refinement settings of the unaries


class Segmenter:
    """Segments images with one CLIP model and one configuration.

    Args:
      clip: a ``jaxseg.CLIP`` from ``load_clip``.
      config: every stage's settings; settings left at None take the relevance method's
        defaults (``config.resolved()``, kept as ``self.config``).
      mesh: optional ``jax.sharding.Mesh`` (e.g. ``jaxseg.run.sharding.data_mesh()``): its
        devices share the batches, each running the same single-device program on its
        own batches, so masks do not depend on how many devices there are. None: the
        first local device.
    """

    def __init__(self, clip, config: SegmentConfig = SegmentConfig(), mesh: Optional[Mesh] = None):
        self.clip, self.config, self.mesh = clip, config.resolved(), mesh
        self.devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()[:1]
        prompts = self.config.prompts
        self._names = dict(prompts.names)
        self._prepared: dict[tuple[str, ...], list[str]] = {}
        self._embeddings: dict[str, np.ndarray] = {}
        self._vocabulary = None  # image rule: [E, P] embeddings, made on first use
        self._device_params: dict = {}  # parameters on each device, put there on first use
        background = prompts.background if self.config.relevance.needs_background else ()
        self._background = (np.stack([self._embed(name) for name in background]) if background
                            else np.zeros((0, clip.config.projection_dim), np.float32))

    def with_refine(self, refine: RefineConfig) -> "Segmenter":
        """This Segmenter with other refinement settings (e.g. calibrated levels); the two
        share the dicts caching prepared labels, text embeddings and device parameters
        (they depend on the model and prompts only) and the CLIP handle's programs."""
        other = copy.copy(self)
        other.config = dataclasses.replace(self.config, refine=refine)
        return other

    def _embed(self, text: str) -> np.ndarray:
        """``[P]`` prompt-ensembled embedding of one query, computed once."""
        if text not in self._embeddings:
            # One text at a time: its embedding does not depend on the others in a batch.
            self._embeddings[text] = class_embeddings(self.clip, [text],
                                                      self.config.prompts.templates)[0]
        return self._embeddings[text]

    def prepare_labels(self, labels: Sequence[str]) -> list[str]:
        """User labels -> the labels segmented (``jaxseg.labels.prompts.prepare_labels``:
        empty and repeated names dropped, over-long ones shortened, each with a warning,
        given the first time a label list is seen)."""
        key = tuple(labels) if not isinstance(labels, str) else labels
        if key not in self._prepared:
            self._prepared[key] = prepare_labels(
                labels, self.clip.tokenizer, self.config.prompts.templates,
                self.clip.config.text.max_position_embeddings)
        return list(self._prepared[key])

    def _queries(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Query embeddings ``[Q, P]`` of labels (each label's names in the method's table,
        then the background names of the softmax rule) and each query's owner ``[Q]``."""
        texts, owner = [], []
        for index, label in enumerate(labels, start=1):
            for query in label_queries(label, self._names):
                texts.append(query)
                owner.append(index)
        if self.config.scoring.rule == "softmax":
            texts += list(self.config.prompts.background)
            owner += [0] * len(self.config.prompts.background)
        return np.stack([self._embed(text) for text in texts]), np.asarray(owner, np.int32)

    def _params(self, device):
        if device not in self._device_params:
            self._device_params[device] = jax.device_put(self.clip.params, device)
        return self._device_params[device]

    def _dispatch_maps(self, images: Sequence[np.ndarray], labels: Sequence[Sequence[str]],
                       batch_size: int, device) -> stage.Pending:
        queries, owners = zip(*(self._queries(names) for names in labels))
        return stage.dispatch(self.clip.compiled, self._params(device), images, queries, owners,
                              [len(names) for names in labels], self._background, self.config,
                              self.clip.config.vision.patch_size, batch_size, device)

    def auto_labels(self, images: Sequence[np.ndarray], batch_size: Optional[int] = None,
                    device_index: int = 0) -> list[tuple[list[str], list[float]]]:
        """Labels picked from ``config.auto.vocabulary`` for uint8 ``[H, W, 3]`` images, best
        first, with their scores (``jaxseg.labels.autolabel``: image-level probabilities, or
        with the dense rule the pixel shares the labels win); one device call for the batch
        (padded to ``batch_size``), on the ``device_index``-th device."""
        auto = self.config.auto
        entries = load_vocabulary(auto.vocabulary)
        if not entries or auto.top_k == 0:
            return [([], []) for _ in images]
        names = [entry.name for entry in entries]
        size = max(batch_size or 0, len(images))
        device = self.devices[device_index % len(self.devices)]
        if auto.rule == "dense":
            chosen = [autolabel.select_by_share(names, label_map(
                scores, plane, self.config.scoring.prob_threshold), auto)
                for scores, plane, _ in stage.collect(self._dispatch_maps(
                    images, [names] * len(images), size, device))]
        else:
            if self._vocabulary is None:
                self._vocabulary = autolabel.vocabulary_embeddings(
                    self.clip, entries, self.config.prompts.templates)
            (canvases, content_hw), _ = batch_lib.pack_tta(images, self.config.tta, size)
            program = self.clip.compiled(autolabel.batch_probabilities, tta=self.config.tta)
            probabilities = jax.device_get(program(self._params(device), *jax.device_put(
                (canvases, content_hw, self._vocabulary), device)))
            chosen = [autolabel.select_labels(names, best, auto)
                      for best in probabilities[:len(images)].max(axis=1)]
        return [([name for name, _ in pairs], [score for _, score in pairs]) for pairs in chosen]

    def _dispatch_unaries(self, pending: stage.Pending, images: Sequence[np.ndarray],
                          num_labels: Sequence[int], batch_size: int, device
                          ) -> tuple[jax.Array, list[tuple[int, int]]]:
        """Starts the graph cut's unaries of a dispatched batch on its device, from the maps
        still there (``jaxseg.refinement.unaries.batch_unaries``)."""
        scores, _, features = pending.outputs
        small, size_hw = lay_batch(images, batch_size, self.config.refine)
        content_hw, grid = np.ones((2, batch_size, 2), np.int32)
        for i, image in enumerate(images):
            # TTA maps hold the image at its content size on the canvas, native ones at its own.
            content_hw[i] = pending.content[i] if pending.view == "tta" else image.shape[:2]
            grid[i] = features.shape[1:3] if pending.view == "tta" else pending.content[i]
        label_mask = np.arange(scores.shape[1])[None] < np.asarray(
            list(num_labels) + [0] * (batch_size - len(num_labels)))[:, None]
        *inputs, grid = jax.device_put((content_hw, small, size_hw, label_mask, grid), device)
        use_features = self.config.use_features
        unaries = batch_unaries_program(scores, *inputs, features if use_features else None,
                                        grid if use_features else None, config=self.config.refine)
        return unaries, [(int(h), int(w)) for h, w in size_hw[:len(images)]]

    def dispatch(self, images: Sequence[np.ndarray], labels: Sequence[Labels],
                 batch_size: Optional[int] = None, device_index: int = 0,
                 keep_maps: bool = True, unaries: bool = True) -> PendingBatch:
        """Starts the device stage of one batch on one device (see :meth:`relevance_stage`);
        :meth:`collect` waits for it. Labels (prepared or picked automatically) are ready on
        return, the maps (and in ``"graphcut"`` mode the unaries) are computed
        asynchronously. ``keep_maps=False`` leaves the full score maps on the device when
        only the unaries are needed (a dataset run without heat maps); ``unaries=False``
        computes the maps alone (e.g. to calibrate the refinement's levels on them)."""
        started = time.perf_counter()
        check_label_entries(images, labels)
        outputs = [DeviceOutput([] if isinstance(wanted, str) else self.prepare_labels(wanted))
                   for wanted in labels]
        wanted_auto = [i for i, wanted in enumerate(labels) if isinstance(wanted, str)]
        if wanted_auto:
            if any(labels[i] != "auto" for i in wanted_auto):
                raise ValueError("labels must be a list of names or 'auto' per image")
            chosen = self.auto_labels([images[i] for i in wanted_auto], batch_size, device_index)
            share = (time.perf_counter() - started) / len(wanted_auto)
            for i, (names, scores) in zip(wanted_auto, chosen):
                outputs[i].labels, outputs[i].label_scores = names, scores
                outputs[i].timings["auto_labels"] = share
        todo = [i for i, out in enumerate(outputs) if out.labels]
        batch = PendingBatch(outputs, [image.shape[:2] for image in images], todo, None, started,
                             keep_maps or not unaries or self.config.refine_mode != "graphcut")
        if todo:
            size = max(batch_size or 0, len(images))
            device = self.devices[device_index % len(self.devices)]
            labelled = [images[i] for i in todo]
            batch.pending = self._dispatch_maps(labelled, [outputs[i].labels for i in todo],
                                                size, device)
            if unaries and self.config.refine_mode == "graphcut":
                batch.unaries, batch.refine_hw = self._dispatch_unaries(
                    batch.pending, labelled, [len(outputs[i].labels) for i in todo], size, device)
                batch.made_with = self.config.refine
        return batch

    def collect(self, batch: PendingBatch) -> list[DeviceOutput]:
        """Waits for a dispatched batch: one :class:`DeviceOutput` per image."""
        if batch.pending is not None:
            # One transfer: the unaries and, when kept, the maps.
            maps, unaries = jax.device_get((batch.pending.outputs if batch.keep_maps else None,
                                            batch.unaries))
            if maps is not None:
                for i, (scores, background, _) in zip(batch.todo, stage.unpack(batch.pending, maps)):
                    batch.outputs[i].scores, batch.outputs[i].background = scores, background
            if unaries is not None:
                for row, (i, (height, width)) in enumerate(zip(batch.todo, batch.refine_hw)):
                    output, count = batch.outputs[i], len(batch.outputs[i].labels) + 1
                    output.unaries = np.ascontiguousarray(unaries[row, :count, :height, :width])
                    output.made_with = batch.made_with
        share = (time.perf_counter() - batch.started) / len(batch.outputs)
        for shape, output in zip(batch.shapes, batch.outputs):
            if output.scores is None and not output.labels:  # no labels: all background
                output.scores = np.zeros((0,) + shape, np.float32)
                output.background = np.ones(shape, np.float32)
            output.timings["relevance"] = share
        return batch.outputs

    def relevance_stage(self, images: Sequence[np.ndarray], labels: Sequence[Labels],
                        batch_size: Optional[int] = None,
                        unaries: bool = True) -> list[DeviceOutput]:
        """The device stage of several images: labels, then every label's scores.

        The images are cut into consecutive batches of ``batch_size`` (default: all of
        them), each padded to that size, and the batches are shared round-robin by the
        devices, each running the same compiled single-device program; so an image's
        scores depend on its batch, never on the device count.

        Args:
          images: uint8 ``[H, W, 3]`` RGB images (see ``jaxseg.imaging.as_rgb_uint8``).
          labels: per image, class names (prepared here) or ``"auto"``.
          batch_size: images per device call (a fixed size keeps the last, smaller batch
            of a dataset from recompiling).
          unaries: in ``"graphcut"`` mode, also compute the graph cut's unaries on the
            device (False: the maps alone).

        Returns:
          One :class:`DeviceOutput` per image; images without labels skip the device.

        Raises:
          ValueError: when there is not one label entry per image.
        """
        check_label_entries(images, labels)
        size = batch_size or max(len(images), 1)
        batches = [self.dispatch(images[start:start + size], labels[start:start + size], size,
                                 index, unaries=unaries)
                   for index, start in enumerate(range(0, len(images), size))]
        return [output for batch in batches for output in self.collect(batch)]

    def refine_stage(self, image: np.ndarray, output: DeviceOutput) -> SegmentResult:
        """The host stage of one image: its device output turned into a mask."""
        mask, seconds = refine_mask(image, output, self.config)
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
        ``config.auto.vocabulary`` with CLIP. Empty and repeated names (aliases of one
        class included) are dropped and names too long for CLIP's prompt shortened.
      config: every stage's settings.

    Returns:
      ``SegmentResult`` with ``mask`` int32 ``[H, W]`` (0 background, ``i + 1`` =
      ``labels[i]``), ``scores`` float32 ``[K, H, W]`` and the labels used.
    """
    return Segmenter(clip, config).segment(image, labels)
