"""The refinement stage: coarse per-label maps -> a mask that follows object boundaries.

``config`` (RefineConfig); before the cut, pure JAX on padded canvases, one program for a
batch (``unaries``): ``smoothing`` (edge-aware smoothing of the maps), ``seeds`` (each
image's levels, pseudo-labels, probabilities read off the maps), ``features`` (each
pixel's description: Lab colour, local colour statistics, dense features) and
``classifier`` (the test-time distillation classifier, on rows of numbers); on the host:
``graphcut`` (alpha-expansion with PyMaxflow) and ``refine`` (the cut and upsampling, and
``jaxseg.refine``, the stage's orchestrator for one image); ``calibrate`` (levels
and background cut calibrated on a sample of a dataset's maps, for every image alike);
``crf`` (CLIP-ES's dense CRF).
The package is not called ``refine`` so that ``jaxseg.refine`` stays the function.
"""
