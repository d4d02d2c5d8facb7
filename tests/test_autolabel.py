"""Automatic labels: selection rules are exact; CLIP scoring mechanics on a tiny checkpoint."""

import numpy as np
import pytest

import jaxseg
from jaxseg.labels.autolabel import (AutoLabelConfig, select_labels, variant_probabilities,
                                     vocabulary_embeddings)
from jaxseg.labels.presets import DEFAULT_TEMPLATES
from jaxseg.labels.prompts import class_embeddings
from jaxseg.labels.vocab import VocabEntry
from jaxseg.maps.tta import TTAConfig, num_variants, prepare_canvas

SMALL_TTA = TTAConfig(input_size=32, canvas_size=64)
VOCAB = (VocabEntry("cat", ("kitty",)), VocabEntry("dog"), VocabEntry("sofa", ("couch",)),
         VocabEntry("bus"))


def image(seed=0):
    return (np.random.RandomState(seed).rand(48, 64, 3) * 255).astype(np.uint8)


def test_select_labels_threshold_top_k_and_order():
    names = ["a", "b", "c", "d"]
    scores = np.array([0.2, 0.5, 0.2, 0.05])
    config = AutoLabelConfig(threshold=0.1, top_k=3)
    assert select_labels(names, scores, config) == [("b", 0.5), ("a", 0.2), ("c", 0.2)]
    assert select_labels(names, scores, AutoLabelConfig(threshold=0.1, top_k=1)) == [("b", 0.5)]
    assert select_labels(names, scores, AutoLabelConfig(threshold=0.6)) == []
    with pytest.raises(ValueError, match="threshold"):
        AutoLabelConfig(threshold=1.5)


def test_synonyms_are_averaged_into_one_embedding(tiny_clip):
    embeds = vocabulary_embeddings(tiny_clip, VOCAB, DEFAULT_TEMPLATES)
    assert embeds.shape == (4, 24)
    manual = class_embeddings(tiny_clip, ["cat", "kitty"], DEFAULT_TEMPLATES).mean(axis=0)
    np.testing.assert_allclose(embeds[0], manual / np.linalg.norm(manual), atol=1e-6)


def test_auto_labels_are_the_best_variant_scores(tiny_clip):
    config = AutoLabelConfig(threshold=0.0, top_k=2)
    chosen = jaxseg.auto_labels(tiny_clip, image(), VOCAB, config, SMALL_TTA)
    canvas, hw = prepare_canvas(image(), SMALL_TTA)
    probabilities = np.asarray(variant_probabilities(
        tiny_clip.params, canvas, np.array(hw), vocabulary_embeddings(
            tiny_clip, VOCAB, DEFAULT_TEMPLATES), config=tiny_clip.config,
        dtype=tiny_clip.dtype, tta=SMALL_TTA))
    assert probabilities.shape == (num_variants(SMALL_TTA), 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    best = probabilities.max(axis=0)
    expected = [VOCAB[i].name for i in np.argsort(-best, kind="stable")[:2]]
    assert [name for name, _ in chosen] == expected
    np.testing.assert_allclose([score for _, score in chosen], np.sort(best)[::-1][:2],
                               rtol=1e-5)


def test_nothing_above_threshold_gives_all_background(tiny_clip):
    config = jaxseg.SegmentConfig(tta=SMALL_TTA, auto=AutoLabelConfig(threshold=1.0))
    result = jaxseg.segment(tiny_clip, image(1), "auto", config)
    assert result.labels == [] and result.label_scores == []
    assert result.mask.shape == (48, 64) and not result.mask.any()


def test_segment_auto_records_label_scores(tiny_clip):
    config = jaxseg.SegmentConfig(tta=SMALL_TTA,
                                  auto=AutoLabelConfig(vocabulary="coco", threshold=0.0, top_k=3))
    result = jaxseg.segment(tiny_clip, image(2), "auto", config)
    assert len(result.labels) == 3 and len(result.label_scores) == 3
    assert result.label_scores == sorted(result.label_scores, reverse=True)
    assert set(np.unique(result.mask)) <= {0, 1, 2, 3}
    assert "auto_labels" in result.timings
