"""jaxseg: training-free semantic segmentation from image-level labels, in JAX.

CLIP relevance maps (Chefer et al. 2021) with test-time augmentation, turned into
masks by pseudo-labels, test-time distillation and graph cut.

Public names are imported lazily, so ``python -m jaxseg.evaluate`` and other
light entry points start without importing JAX. The pipeline's stages are subpackages:
``clip`` (the CLIP port), ``labels``, ``maps`` (relevance), ``refinement`` and ``run``
(datasets, files, devices, the run loop); ``segmenter`` orchestrates them and ``cli``
holds the command lines.
"""

from jaxseg._lazy import lazy_attributes

_EXPORTS = {
    "CLIP": "jaxseg.clip.handle",
    "CheckpointError": "jaxseg.clip.checkpoint",
    "load_clip": "jaxseg.clip.handle",
    "preprocess": "jaxseg.clip.preprocess",
    "class_embeddings": "jaxseg.labels.prompts",
    "auto_labels": "jaxseg.labels.autolabel",
    "AutoLabelConfig": "jaxseg.labels.autolabel",
    "load_vocabulary": "jaxseg.labels.vocab",
    "relevance": "jaxseg.maps.relevance",
    "relevance_tta": "jaxseg.maps.relevance",
    "RelevanceConfig": "jaxseg.maps.config",
    "TTAConfig": "jaxseg.maps.tta",
    "refine": "jaxseg.refinement.refine",
    "RefineConfig": "jaxseg.refinement.config",
    "SegmentConfig": "jaxseg.config",
    "Segmenter": "jaxseg.segmenter",
    "SegmentResult": "jaxseg.results",
    "segment": "jaxseg.segmenter",
    "segment_batch": "jaxseg.segmenter",
    "evaluate": "jaxseg.metrics",
    "ConfusionMatrix": "jaxseg.metrics",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
