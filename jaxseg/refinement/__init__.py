"""The refinement stage: coarse per-label maps -> a mask that follows object boundaries.

``config`` (RefineConfig), ``seeds`` (pseudo-labels and probabilities read off the maps),
``features`` (each pixel's description: Lab colour, local colour statistics, dense
features), ``classifier`` (the test-time distillation classifier, on rows of numbers),
``graphcut`` (alpha-expansion with PyMaxflow) and ``refine`` (the stage's orchestrator,
``jaxseg.refine``). The package is not called ``refine`` so that ``jaxseg.refine`` stays
the function.
"""
