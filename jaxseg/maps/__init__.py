"""The relevance stage: a map per label from CLIP, with test-time augmentation.

``config`` (RelevanceConfig: which method, its settings), ``chefer`` (Chefer et al.'s
gradient x attention rollout, pure), ``methods`` (one entry for every method), ``tta``
(variant boxes, crops, warp-back), ``batch`` (canvases, class padding, the batch program,
placement on a mesh) and ``relevance`` (``jaxseg.relevance`` / ``jaxseg.relevance_tta`` on
a CLIP handle). The package is not called ``relevance`` so that ``jaxseg.relevance`` stays
the function.
"""
