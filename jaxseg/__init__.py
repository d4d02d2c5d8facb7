"""jaxseg: training-free semantic segmentation from image-level labels, in JAX.

CLIP relevance maps (Chefer et al. 2021) with test-time augmentation, turned into
masks by pseudo-labels, test-time distillation and graph cut.

Public names are imported lazily, so ``python -m jaxseg.evaluate`` and other
light entry points start without importing JAX.
"""

import importlib

_EXPORTS = {
    "CLIP": "jaxseg.loader",
    "CheckpointError": "jaxseg.loader",
    "load_clip": "jaxseg.loader",
    "preprocess": "jaxseg.preprocess",
    "relevance": "jaxseg.relevance",
    "relevance_tta": "jaxseg.relevance",
    "class_embeddings": "jaxseg.relevance",
    "TTAConfig": "jaxseg.tta",
    "refine": "jaxseg.refine",
    "RefineConfig": "jaxseg.refine",
    "auto_labels": "jaxseg.autolabel",
    "AutoLabelConfig": "jaxseg.autolabel",
    "segment": "jaxseg.pipeline",
    "segment_batch": "jaxseg.pipeline",
    "SegmentConfig": "jaxseg.pipeline",
    "SegmentResult": "jaxseg.pipeline",
    "load_vocabulary": "jaxseg.vocab",
    "evaluate": "jaxseg.evaluate",
    "ConfusionMatrix": "jaxseg.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
