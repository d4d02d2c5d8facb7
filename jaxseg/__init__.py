"""jaxseg: training-free semantic segmentation from image-level labels, in JAX.

CLIP relevance maps (Chefer et al. 2021) with test-time augmentation, turned into
masks by pseudo-labels, test-time distillation and graph cut.
"""

from jaxseg.loader import CLIP, CheckpointError, load_clip
from jaxseg.preprocess import preprocess
from jaxseg.relevance import class_embeddings, relevance

__all__ = ["CLIP", "CheckpointError", "class_embeddings", "load_clip", "preprocess", "relevance"]
