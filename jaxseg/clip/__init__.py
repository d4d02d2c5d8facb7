"""CLIP in Flax Linen, usable without the rest of jaxseg.

``load_clip`` reads a transformers checkpoint (hub id or folder) into a ``CLIP`` handle
(config, parameters, tokenizer); the model itself is pure functions of ``(params,
inputs)`` in ``jaxseg.clip.model``. Modules: ``config`` (frozen configs from
``config.json``), ``layers``/``vision``/``text``/``model`` (the network),
``checkpoint`` (safetensors and the hub), ``tokenizer``, ``preprocess`` and ``handle``.
Nothing here imports another part of jaxseg.
"""

from jaxseg._lazy import lazy_attributes

_EXPORTS = {
    "CLIP": "jaxseg.clip.handle",
    "load_clip": "jaxseg.clip.handle",
    "CheckpointError": "jaxseg.clip.checkpoint",
    "CLIPConfig": "jaxseg.clip.config",
    "CLIPModel": "jaxseg.clip.model",
    "encode_image": "jaxseg.clip.model",
    "encode_text": "jaxseg.clip.model",
    "init_params": "jaxseg.clip.model",
    "Tokenizer": "jaxseg.clip.tokenizer",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
