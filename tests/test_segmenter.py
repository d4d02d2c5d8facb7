"""The Segmenter: label handling, image conversion, determinism, batching."""

import dataclasses

import jax
import numpy as np
import pytest

import jaxseg
from jaxseg.config import PromptConfig
from jaxseg.imaging import as_rgb_uint8
from jaxseg.labels.prompts import clean_labels
from jaxseg.segmenter import segment_batch
from compile_cache import CACHE_ARGS

CONFIG = jaxseg.SegmentConfig(tta=jaxseg.TTAConfig(input_size=32, canvas_size=64))


def two_region_image():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = (200, 30, 30)
    image[:, 30:] = (30, 30, 200)
    return image


def test_clean_labels_drops_empty_and_repeated_names():
    with pytest.warns(UserWarning):
        assert clean_labels(["cat", " ", "Cat", "sofa ", "potted plant", "pottedplant"]) == [
            "cat", "sofa", "potted plant"]
    with pytest.raises(ValueError, match="list of names"):
        clean_labels("cat,sofa")
    with pytest.raises(ValueError, match="list of names or 'auto', got None"):
        clean_labels(None)  # was a bare TypeError from jaxseg.segment(clip, image, None)


def test_aliases_of_one_class_are_dropped_with_a_warning_that_names_the_first():
    with pytest.warns(UserWarning,
                      match="ignoring label 'sofa': it names the same class as 'couch'"):
        assert clean_labels(["couch", "sofa", "tv"]) == ["couch", "tv"]
    with pytest.warns(UserWarning, match="ignoring repeated label 'Couch'"):
        assert clean_labels(["couch", "Couch"]) == ["couch"]  # the same name in another case


def test_configs_given_lists_stay_hashable_and_stage_configs_are_type_checked():
    # Lists used to be accepted and fail later, far from their cause, as unhashable jit keys.
    config = jaxseg.SegmentConfig(
        tta=jaxseg.TTAConfig(scales=[1.0, 0.6]),
        relevance=jaxseg.RelevanceConfig(method=["chefer", "naclip"], weights=[1, 2]),
        prompts=PromptConfig(templates=["a photo of a {}."], background=["sky"]))
    assert hash(config) == hash(jaxseg.SegmentConfig(
        tta=jaxseg.TTAConfig(scales=(1.0, 0.6)),
        relevance=jaxseg.RelevanceConfig(method=("chefer", "naclip"), weights=(1.0, 2.0)),
        prompts=PromptConfig(templates=("a photo of a {}.",), background=("sky",))))
    with pytest.raises(ValueError, match="PromptConfig.templates must be a sequence of strings"):
        PromptConfig(templates="a photo of a {}.")
    with pytest.raises(ValueError,
                       match="SegmentConfig.relevance must be a RelevanceConfig, got 'naclip'"):
        jaxseg.SegmentConfig(relevance="naclip")
    with pytest.raises(ValueError, match="SegmentConfig.refine must be a RefineConfig, got None"):
        jaxseg.SegmentConfig(refine=None)


def test_one_label_entry_per_image_or_an_error(tiny_clip):
    # zip() used to drop the images without labels silently.
    segmenter = jaxseg.Segmenter(tiny_clip, CONFIG)
    image = two_region_image()
    with pytest.raises(ValueError, match="got 2 label entries for 3 image"):
        segmenter.segment_batch([image, image, image], [["red thing"], ["blue thing"]])
    with pytest.raises(ValueError, match="got 2 label entries for 1 image"):
        segmenter.segment_batch([image], [["red thing"], ["blue thing"]])
    with pytest.raises(ValueError, match="got 1 label entries for 2 image"):
        segmenter.dispatch([image, image], [["red thing"]])  # the dataset runner's entry
    with pytest.raises(ValueError, match="got a string for 1 image"):
        segmenter.segment_batch([image], "auto")
    assert segmenter.segment_batch([], []) == []


def test_one_text_is_one_text_and_empty_batches_give_empty_outputs(tiny_clip):
    # A string was tokenised (and embedded) character by character; an empty batch of texts
    # or images failed with a ZeroDivisionError.
    np.testing.assert_array_equal(tiny_clip.tokenize("a dog"), tiny_clip.tokenize(["a dog"]))
    with pytest.raises(ValueError, match="labels must be a list of strings, got the string"):
        jaxseg.class_embeddings(tiny_clip, "cat", ["a {}."])
    width = tiny_clip.config.projection_dim
    assert tiny_clip.encode_prompts([]).shape == (0, width)
    assert tiny_clip.encode_image(np.zeros((0, 32, 32, 3), np.float32)).shape == (0, width)
    texts = np.ones((2, width), np.float32)
    no_image = jaxseg.relevance(tiny_clip, np.zeros((0, 32, 32, 3), np.float32), texts)
    no_class = jaxseg.relevance(tiny_clip, np.zeros((1, 32, 32, 3), np.float32), texts[:0])
    assert no_image.shape == (0, 2, 4, 4) and no_class.shape == (1, 0, 4, 4)


def test_image_kinds_are_converted():
    grey = np.full((5, 6), 7, np.uint8)
    assert as_rgb_uint8(grey).shape == (5, 6, 3)
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 3] = 255
    assert not as_rgb_uint8(rgba).any()
    sixteen = np.full((5, 6, 3), 65535, np.uint16)
    assert (as_rgb_uint8(sixteen) == 255).all()
    assert (as_rgb_uint8(np.ones((5, 6, 3))) == 255).all()
    assert (as_rgb_uint8(np.full((5, 6, 3), 1.005)) == 255).all()  # resampling overshoot
    with pytest.raises(ValueError, match="non-empty"):
        as_rgb_uint8(np.zeros((0, 6, 3), np.uint8))
    # A 0-255 float image (np.asarray(pil_image, np.float32)) used to be clipped to black
    # and white; normalised or NaN pixels likewise.
    for bad, found in ((np.full((5, 6, 3), 128.0), r"\[128, 128\]"),
                       (np.full((5, 6, 3), -0.5), r"\[-0.5, -0.5\]"),
                       (np.full((5, 6, 3), np.nan, np.float32), "NaN or inf")):
        with pytest.raises(ValueError, match=f"float image must hold values in \\[0, 1\\], got {found}"):
            as_rgb_uint8(bad)


def test_segment_outputs_and_determinism(tiny_clip):
    image = two_region_image()
    first = jaxseg.segment(tiny_clip, image, ["red thing", "blue thing"], CONFIG)
    second = jaxseg.segment(tiny_clip, image, ["red thing", "blue thing"], CONFIG)
    assert first.mask.shape == (40, 60) and first.mask.dtype == np.int32
    assert first.scores.shape == (2, 40, 60) and first.labels == ["red thing", "blue thing"]
    assert set(np.unique(first.mask)) <= {0, 1, 2}
    np.testing.assert_array_equal(first.mask, second.mask)
    np.testing.assert_array_equal(first.scores, second.scores)
    assert set(first.timings) == {"relevance", "refine"}


def test_no_labels_is_all_background(tiny_clip):
    result = jaxseg.segment(tiny_clip, two_region_image(), [], CONFIG)
    assert result.scores.shape == (0, 40, 60) and not result.mask.any()


@pytest.mark.parametrize("mode, view, method", [
    ("graphcut", "tta", "chefer"), ("crf", "tta", "chefer"), ("none", "tta", "chefer"),
    ("graphcut", "native", "naclip"), ("none", "tta", ("chefer", "naclip"))])
def test_a_model_giving_nan_maps_is_refused_not_turned_into_an_empty_mask(tiny_clip, mode,
                                                                         view, method):
    # NaN weights (a broken checkpoint; an overflow does it to one view). The maps' min-max
    # normalisation used to make zeros of them, so the image came back all background.
    broken = dataclasses.replace(tiny_clip, params=jax.tree.map(lambda x: x * np.nan,
                                                                tiny_clip.params))
    config = dataclasses.replace(CONFIG, refine_mode=mode, view=view,
                                 relevance=jaxseg.RelevanceConfig(method=method))
    with pytest.raises(ValueError, match=r"not finite \(\d+ NaN.*--dtype float32"):
        jaxseg.segment(broken, two_region_image(), ["red thing", "blue thing"], config)
    # The same settings with the model's own weights give a mask.
    result = jaxseg.segment(tiny_clip, two_region_image(), ["red thing", "blue thing"], config)
    assert np.isfinite(result.scores).all() and result.mask.shape == (40, 60)


def test_an_output_without_unaries_is_refused_in_graphcut_mode(tiny_clip):
    # Maps computed alone (for calibration) used to be cut as an all-background mask.
    segmenter = jaxseg.Segmenter(tiny_clip, CONFIG)
    [maps] = segmenter.relevance_stage([two_region_image()], [["red thing"]], unaries=False)
    with pytest.raises(ValueError, match="cut_unaries: no unaries to cut"):
        segmenter.refine_stage(two_region_image(), maps)


def test_tta_views_without_the_whole_image_cannot_feed_features_to_the_refinement():
    # The TTA program's features are its first view's: a crop when 1.0 is not a scale.
    crops = jaxseg.TTAConfig(scales=(0.6,), flip=False)
    with pytest.raises(ValueError, match="add 1.0 to TTAConfig.scales or set use_features=False"):
        jaxseg.SegmentConfig(tta=crops)
    for allowed in (dict(use_features=False), dict(refine_mode="crf"), dict(view="native")):
        jaxseg.SegmentConfig(tta=crops, **allowed)


def test_batch_equals_single(tiny_clip):
    rng = np.random.RandomState(0)
    images = [(rng.rand(30, 50, 3) * 255).astype(np.uint8), two_region_image()]
    labels = [["cat"], ["red thing", "blue thing", "table"]]
    batch = segment_batch(tiny_clip, images, labels, CONFIG, batch_size=4)
    for image, names, result in zip(images, labels, batch):
        alone = jaxseg.segment(tiny_clip, image, names, CONFIG)
        np.testing.assert_allclose(result.scores, alone.scores, atol=1e-5)
        assert result.labels == names
        assert np.mean(result.mask == alone.mask) > 0.99


def test_a_batch_without_its_maps_gives_the_same_unaries_and_masks(tiny_clip):
    # A dataset run without heat maps fetches only the graph cut's unaries.
    segmenter = jaxseg.Segmenter(tiny_clip, CONFIG)
    image, labels = two_region_image(), [["red thing", "blue thing"]]
    [full] = segmenter.collect(segmenter.dispatch([image], labels, 2))
    [lean] = segmenter.collect(segmenter.dispatch([image], labels, 2, keep_maps=False))
    assert lean.scores is None and full.scores.shape == (2,) + image.shape[:2]
    # At refinement size: the 40 x 60 image enlarged to a 192 long side.
    assert lean.unaries.shape == (3, 128, 192) and lean.unaries.dtype == np.float16
    np.testing.assert_array_equal(lean.unaries, full.unaries)
    np.testing.assert_array_equal(segmenter.refine_stage(image, lean).mask,
                                  segmenter.refine_stage(image, full).mask)


def test_maps_alone_and_a_segmenter_with_other_refinement_settings(tiny_clip):
    # Calibration reads the maps alone, then refines with a Segmenter that shares caches.
    segmenter = jaxseg.Segmenter(tiny_clip, CONFIG)
    image, labels = two_region_image(), [["red thing", "blue thing"]]
    [full] = segmenter.relevance_stage([image], labels)
    [maps] = segmenter.relevance_stage([image], labels, unaries=False)
    assert maps.unaries is None and full.unaries is not None
    np.testing.assert_array_equal(maps.scores, full.scores)
    refine = dataclasses.replace(CONFIG.refine, threshold_rule="fixed", background_score=0.9)
    fixed = segmenter.with_refine(refine)
    assert fixed.config.refine == refine and segmenter.config.refine == CONFIG.refine
    assert fixed._embeddings is segmenter._embeddings
    assert fixed._device_params is segmenter._device_params
    [other] = fixed.relevance_stage([image], labels)
    np.testing.assert_array_equal(other.scores, full.scores)
    # The unaries follow the new settings: the background competes at 0.9, not at theta,
    # so it gains on the red half, where "red thing" wins (its left half, away from the
    # boundary, which the map's enlargement to the refinement size blurs).
    red = np.s_[0, :, :other.unaries.shape[2] // 4]
    assert other.unaries[red].astype(np.float32).mean() > 10 * full.unaries[red].astype(
        np.float32).mean()
    # An output made under the old settings is not cut under the new ones.
    with pytest.raises(ValueError, match="made with other refinement settings"):
        fixed.refine_stage(image, full)
    assert fixed.refine_stage(image, other).mask.shape == image.shape[:2]


def test_cli_mask_and_labels_equal_the_segmenters_and_segment_gives_the_same_mask(
        tmp_path, tiny_checkpoint, tiny_clip):
    import json
    import warnings

    import jaxseg.cli.segment as cli
    from PIL import Image

    image = two_region_image()
    Image.fromarray(image).save(tmp_path / "photo.png")
    long_label = "striped " * 40 + "zebra"  # over CLIP's 77 tokens with every template
    labels = ["red thing", " blue thing", long_label]
    (tmp_path / "labels.json").write_text(json.dumps({"photo": labels}))
    # The CLI's --input-size / --canvas-size / --refine-steps / --batch-size give CONFIG.
    status = cli.main(["--input-size", "32", "--canvas-size", "64", "--batch-size", "1",
                       str(tmp_path / "photo.png"), "--labels-file", str(tmp_path / "labels.json"),
                       "--model", tiny_checkpoint[0], *CACHE_ARGS, "--quiet",
                       "--out", str(tmp_path / "out")])
    assert status == 0
    cli_mask = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    cli_labels = json.loads((tmp_path / "out" / "photo.json").read_text())["labels"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = jaxseg.Segmenter(tiny_clip, CONFIG).segment(image, labels)
    assert any("does not fit CLIP's 77-token prompt" in str(w.message) for w in caught)
    assert result.labels == cli_labels and len(cli_labels) == 3
    assert long_label.startswith(cli_labels[2]) and cli_labels[2] != long_label
    np.testing.assert_array_equal(result.mask, cli_mask)
    assert len(np.unique(cli_mask)) > 1
    np.testing.assert_array_equal(jaxseg.segment(tiny_clip, image, labels, CONFIG).mask, cli_mask)


def test_parameters_are_freed_with_the_segmenter_and_the_model(tiny_checkpoint):
    import gc
    import weakref

    clip = jaxseg.load_clip(tiny_checkpoint[0])
    seg = jaxseg.Segmenter(clip, CONFIG)
    seg.segment(two_region_image(), ["red thing"])
    jaxseg.segment(clip, two_region_image(), ["blue thing"], CONFIG)
    param = weakref.ref(clip.params["vision_model"]["post_layernorm"]["norm"]["scale"])
    assert param() is not None
    del seg, clip
    gc.collect()
    assert param() is None
