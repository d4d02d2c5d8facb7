"""The relevance stage on whole images: TTA scores, batches, compiles (``jaxseg.maps``)."""

import numpy as np
import pytest

import jaxseg
from jaxseg.labels.presets import DEFAULT_TEMPLATES
from jaxseg.maps import batch as batch_lib
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.refine import refinement_size

SMALL_TTA = jaxseg.TTAConfig(input_size=32, canvas_size=64)


def test_tta_scores_cover_image_in_unit_range(tiny_clip):
    image = (np.random.RandomState(8).rand(40, 70, 3) * 255).astype(np.uint8)
    texts = jaxseg.class_embeddings(tiny_clip, ["cat", "dog", "sofa"], DEFAULT_TEMPLATES)
    scores = jaxseg.relevance_tta(tiny_clip, image, texts, SMALL_TTA)
    assert scores.shape == (3, 40, 70) and scores.dtype == np.float32
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    assert np.all(scores.max(axis=(1, 2)) > 0.9)
    empty = jaxseg.relevance_tta(tiny_clip, image, texts[:0], SMALL_TTA)
    assert empty.shape == (0, 40, 70)


def test_relevance_and_its_tta_form_refuse_the_same_background_embeddings(tiny_clip):
    # relevance_tta used to fail inside its program on a wrong width and ignore embeddings
    # a method does not take; both calls now check them alike.
    image = (np.random.RandomState(8).rand(40, 70, 3) * 255).astype(np.uint8)
    pixels = np.zeros((1, 32, 32, 3), np.float32)
    texts = jaxseg.class_embeddings(tiny_clip, ["cat"], DEFAULT_TEMPLATES)
    clip_es, naclip = jaxseg.RelevanceConfig(method="clip-es"), jaxseg.RelevanceConfig(method="naclip")
    for call, name, argument in ((jaxseg.relevance, "relevance", pixels),
                                 (jaxseg.relevance_tta, "relevance_tta", image)):
        with pytest.raises(ValueError, match=rf"{name} expects background_embeds \[M, 24\]"):
            call(tiny_clip, argument, texts, config=clip_es,
                 background_embeds=np.zeros((3, 5), np.float32))
        with pytest.raises(ValueError, match=f"{name}: clip-es needs background_embeds"):
            call(tiny_clip, argument, texts, config=clip_es)
        with pytest.raises(ValueError, match=f"{name}: background_embeds mean nothing"):
            call(tiny_clip, argument, texts, config=naclip, background_embeds=texts)


def test_new_image_size_does_not_recompile(tiny_clip):
    texts = jaxseg.class_embeddings(tiny_clip, ["cat", "dog", "sofa"], DEFAULT_TEMPLATES)
    program = tiny_clip.compiled(batch_lib.tta_program, tta=SMALL_TTA,
                                 relevance=jaxseg.RelevanceConfig())
    rng = np.random.RandomState(9)
    images = [(rng.rand(*shape) * 255).astype(np.uint8)
              for shape in [(40, 70, 3), (90, 33, 3), (16, 16, 3)]]
    jaxseg.relevance_tta(tiny_clip, images[0], texts, SMALL_TTA)
    compiled = program._cache_size()
    for image in images[1:]:
        jaxseg.relevance_tta(tiny_clip, image, texts, SMALL_TTA)
    # Four labels share the power-of-two bucket of three.
    four = jaxseg.class_embeddings(tiny_clip, ["a", "b", "c", "d"], DEFAULT_TEMPLATES)
    jaxseg.relevance_tta(tiny_clip, images[0], four, SMALL_TTA)
    assert program._cache_size() == compiled


def test_batch_equals_single_images(tiny_clip):
    rng = np.random.RandomState(10)
    images = [(rng.rand(*shape) * 255).astype(np.uint8) for shape in [(40, 70, 3), (50, 30, 3)]]
    texts = [jaxseg.class_embeddings(tiny_clip, names, DEFAULT_TEMPLATES)
             for names in (["cat", "dog"], ["sofa"])]
    segmenter = jaxseg.Segmenter(tiny_clip, jaxseg.SegmentConfig(tta=SMALL_TTA))
    batch = segmenter.relevance_stage(images, [["cat", "dog"], ["sofa"]], batch_size=3)
    for image, text, output in zip(images, texts, batch):
        alone = jaxseg.relevance_tta(tiny_clip, image, text, SMALL_TTA)
        np.testing.assert_allclose(output.scores, alone, atol=1e-5)
        # The graph cut's unaries at refinement size (the image enlarged to a 192 long side).
        assert output.unaries.shape == (len(text) + 1,) + refinement_size(*image.shape[:2],
                                                                          RefineConfig())
        assert output.unaries.dtype == np.float16
        np.testing.assert_allclose(output.unaries.astype(np.float32).sum(0), 1.0, atol=5e-3)


def test_flipped_image_gives_flipped_scores_with_a_flip_symmetric_variant_set(tiny_clip):
    # The full image and its mirror: flipping the image swaps the two variants.
    tta = jaxseg.TTAConfig(input_size=32, canvas_size=64, scales=(1.0,), flip=True)
    image = (np.random.RandomState(11).rand(40, 56, 3) * 255).astype(np.uint8)
    texts = jaxseg.class_embeddings(tiny_clip, ["cat", "dog"], DEFAULT_TEMPLATES)
    scores = jaxseg.relevance_tta(tiny_clip, image, texts, tta)
    flipped = jaxseg.relevance_tta(tiny_clip, image[:, ::-1].copy(), texts, tta)
    assert np.abs(scores - scores[:, :, ::-1]).max() > 1e-2  # the map itself is not symmetric
    np.testing.assert_allclose(flipped, scores[:, :, ::-1], atol=1e-4)
