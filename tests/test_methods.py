"""Methods in the pipeline: defaults and presets, native views, scoring rules, CRF, CLI."""

import json

import numpy as np
import pytest
from PIL import Image

import jaxseg
from jaxseg.cli import segment as cli
from jaxseg.config import PRESETS, SegmentConfig
from jaxseg.labels.autolabel import AutoLabelConfig, select_by_share
from jaxseg.labels.presets import IMAGENET_TEMPLATES, NACLIP_BACKGROUND
from jaxseg.maps import native as native_lib
from jaxseg.maps.native import NativeConfig, view_size
from jaxseg.maps.scoring import ScoreConfig, label_map, score_maps
from jaxseg.refinement.crf import clip_es_image, dense_crf
from compile_cache import CACHE_ARGS

SMALL_TTA = jaxseg.TTAConfig(input_size=32, canvas_size=64)
FAST = ["--input-size", "32", "--canvas-size", "64", "--refine-steps", "10", "--batch-size", "1",
        *CACHE_ARGS, "--quiet"]


def scene(height=48, width=64, seed=0):
    image = (np.random.default_rng(seed).random((height, width, 3)) * 60).astype(np.uint8)
    image[height // 4:3 * height // 4, width // 4:width // 2] += 150
    return image


def test_cli_presets_are_the_configured_presets():
    assert set(cli.PRESET_NAMES) == set(PRESETS)


def test_methods_resolve_to_their_authors_defaults():
    naclip = SegmentConfig(relevance=jaxseg.RelevanceConfig(method="naclip")).resolved()
    assert naclip.view == "native" and naclip.native.resize == "short_side"
    assert naclip.prompts.templates == IMAGENET_TEMPLATES and len(IMAGENET_TEMPLATES) == 80
    assert naclip.prompts.background == NACLIP_BACKGROUND and naclip.scoring.rule == "softmax"
    assert naclip.auto.rule == "dense"
    clip_es = SegmentConfig(relevance=jaxseg.RelevanceConfig(method="clip-es")).resolved()
    assert clip_es.view == "native" and clip_es.native.resize == "ceil"
    assert len(clip_es.prompts.background) == 25 and clip_es.scoring.background_power == 1.0
    chefer = SegmentConfig(view="native").resolved()
    assert chefer.view == "native" and chefer.scoring.rule == "minmax" and chefer.auto.rule == "image"
    assert PRESETS["clip-es"].refine_mode == "crf" and PRESETS["clip-es"].crf.clip_es_image


@pytest.mark.parametrize("resize, size, expected", [
    ("ceil", (375, 500), (384, 512)), ("ceil", (480, 640), (480, 640)),
    ("short_side", (375, 500), (336, 448)), ("short_side", (333, 500), (336, 505)),
    ("short_side", (200, 100), (672, 336))])
def test_native_view_sizes_follow_the_authors_rules(resize, size, expected):
    assert view_size(*size, 16, NativeConfig(resize=resize)) == expected


def test_short_side_view_is_a_bilinear_resize_without_antialiasing():
    torch = pytest.importorskip("torch")
    image = (np.random.default_rng(5).random((29, 41, 3)) * 255).astype(np.uint8)
    view = native_lib.make_view(image, (50, 70), NativeConfig(resize="short_side"))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(50, 70), mode="bilinear",
        align_corners=False, antialias=False)[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
    assert view.dtype == np.uint8 and view.shape == (50, 70, 3)
    difference = np.abs(view.astype(np.float32) - expected)
    assert difference.max() <= 1 and difference.mean() < 0.01  # ties rounded either way


def test_minmax_and_softmax_scoring_rules():
    maps = np.array([[[0.2, 0.9]], [[0.6, 0.1]]], np.float32)  # [Q=2, 1, 2]
    owner = np.array([1, 2])
    scores, background = score_maps(maps, owner, 4, ScoreConfig())
    np.testing.assert_allclose(scores[:2], maps)
    assert not np.asarray(scores[2:]).any() and np.allclose(background, 0.35)
    _, background = score_maps(maps, owner, 2, ScoreConfig(background_power=2.0))
    np.testing.assert_allclose(background, (1 - np.array([[0.6, 0.9]])) ** 2, rtol=1e-6)
    # softmax: label 1 has two queries (max), query 3 is a background name.
    cosine = np.array([[[0.30]], [[0.25]], [[0.20]], [[0.28]]], np.float32)
    scores, background = score_maps(cosine, np.array([1, 1, 2, 0]), 2,
                                    ScoreConfig(rule="softmax", logit_scale=40.0))
    probabilities = np.exp(40 * cosine[:, 0, 0]) / np.exp(40 * cosine[:, 0, 0]).sum()
    np.testing.assert_allclose(np.asarray(scores)[:, 0, 0], [probabilities[0], probabilities[2]],
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(background)[0, 0], probabilities[3], rtol=1e-5)


def test_label_map_argmax_and_probability_threshold():
    scores = np.array([[[0.5, 0.05]], [[0.3, 0.06]]], np.float32)
    background = np.array([[0.2, 0.04]], np.float32)
    np.testing.assert_array_equal(label_map(scores, background), [[1, 2]])
    np.testing.assert_array_equal(label_map(scores, background, prob_threshold=0.1), [[1, 0]])
    assert not label_map(np.zeros((0, 1, 2)), background).any()


def test_dense_auto_labels_keep_classes_by_pixel_share():
    labels = np.zeros((10, 10), np.int32)
    labels[:5] = 2
    labels[5, :3] = 1  # 3 % of the pixels
    labels[6, 0] = 3  # 1 %
    chosen = select_by_share(["a", "b", "c"], labels, AutoLabelConfig(min_share=0.02))
    assert chosen == [("b", 0.5), ("a", 0.03)]


def test_crf_image_is_bgr_minus_the_mean_wrapped_to_uint8():
    image = np.array([[[0, 120, 255]]], np.uint8)  # RGB; BGR = (255, 120, 0)
    # 255 - 104.008 = 150.99 -> 150; 120 - 116.669 = 3.33 -> 3; 0 - 122.675 -> -122 -> 134.
    np.testing.assert_array_equal(clip_es_image(image), [[[150, 3, 134]]])


def test_dense_crf_takes_read_only_images():
    # np.asarray of a PIL image is read-only, and pydensecrf refused such a buffer, so
    # --refine crf failed on every decoded photo.
    image = scene()
    image.setflags(write=False)
    scores = np.zeros((1, 48, 64), np.float32)
    scores[0, 12:36, 16:32] = 0.9
    mask = dense_crf(image, scores, 1 - scores.max(axis=0))
    assert mask[24, 24] == 1 and mask[2, 60] == 0


@pytest.mark.parametrize("method", ["clip-es", "naclip"])
def test_native_views_of_any_size_in_a_bucket_share_one_program(tiny_clip, method):
    config = SegmentConfig(relevance=jaxseg.RelevanceConfig(method=method),
                           native=NativeConfig(resize="ceil", two_step=method == "naclip"),
                           refine_mode="none")
    segmenter = jaxseg.Segmenter(tiny_clip, config)
    first = segmenter.segment(scene(40, 56), ["cat", "dog"])
    resolved = segmenter.config
    program = tiny_clip.compiled(native_lib.native_program, relevance=resolved.relevance,
                                 scoring=resolved.scoring, num_labels=2, native=resolved.native,
                                 out_shape=(128, 128))
    count = program._cache_size()
    second = segmenter.segment(scene(33, 61, seed=1), ["sofa", "bus"])  # same query count
    assert program._cache_size() == count == 1
    assert first.mask.shape == (40, 56) and second.mask.shape == (33, 61)
    assert second.scores.shape == (2, 33, 61) and 0 <= second.scores.min() <= second.scores.max() <= 1


def test_ensembles_average_normalised_maps(tiny_clip):
    pixels = np.random.default_rng(3).standard_normal((1, 32, 32, 3)).astype(np.float32)
    texts = np.random.default_rng(4).standard_normal((2, 24)).astype(np.float32)
    maps = {method: np.asarray(jaxseg.relevance(tiny_clip, pixels, texts,
                                                config=jaxseg.RelevanceConfig(method=method)))
            for method in ("chefer", "naclip")}
    ensemble = np.asarray(jaxseg.relevance(tiny_clip, pixels, texts, config=jaxseg.RelevanceConfig(
        method=("chefer", "naclip"), weights=(1.0, 3.0))))

    def normalised(x):
        low, high = x.min(axis=(2, 3), keepdims=True), x.max(axis=(2, 3), keepdims=True)
        return (x - low) / (high - low)

    expected = 0.25 * normalised(maps["chefer"]) + 0.75 * normalised(maps["naclip"])
    np.testing.assert_allclose(ensemble, expected, atol=1e-5)


def read(out, stem):
    return np.asarray(Image.open(out / f"{stem}.png")), json.loads((out / f"{stem}.json").read_text())


def test_cli_methods_refine_modes_presets_and_heatmaps(tmp_path, tiny_checkpoint):
    paths = []
    for index, size in enumerate(((40, 56), (36, 48))):
        paths.append(str(tmp_path / f"img{index}.png"))
        Image.fromarray(scene(*size, seed=index)).save(paths[-1])
    model = ["--model", tiny_checkpoint[0]]
    runs = {"clip-es-crf": ["--method", "clip-es", "--refine", "crf", "--heatmaps"],
            "preset": ["--preset", "clip-es"],
            "ensemble": ["--method", "chefer+naclip", "--refine", "none", "--heatmaps"]}
    for name, args in runs.items():
        out = tmp_path / name
        assert cli.main([*FAST, *paths, "--labels", "cat,dog", *model, *args,
                         "--out", str(out)]) == 0, name
        for index, size in enumerate(((40, 56), (36, 48))):
            mask, sidecar = read(out, f"img{index}")
            assert mask.shape == size and mask.max() <= 2 and sidecar["labels"] == ["cat", "dog"]
            if "--heatmaps" in args:
                with Image.open(out / f"img{index}_maps.png") as sheet:
                    assert sheet.mode == "RGB" and sheet.width >= 2 * 300  # two panels
    assert not (tmp_path / "preset" / "img0_maps.png").exists()


def test_cli_dense_automatic_labels_record_pixel_shares(tmp_path, tiny_checkpoint):
    path = str(tmp_path / "img.png")
    Image.fromarray(scene()).save(path)
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("cat\ndog\nsofa\n")
    out = tmp_path / "out"
    assert cli.main([*FAST, path, "--labels", "auto", "--vocab", str(vocabulary), "--method",
                     "naclip", "--refine", "none", "--model", tiny_checkpoint[0],
                     "--out", str(out)]) == 0
    mask, sidecar = read(out, "img")
    assert "label_scores" not in sidecar
    shares = sidecar["label_shares"]
    assert set(shares) == set(sidecar["labels"]) <= {"cat", "dog", "sofa"}
    assert all(share >= 0.02 for share in shares.values())


def test_bad_method_names_are_usage_errors(tmp_path, tiny_checkpoint, capsys):
    status = cli.main([*FAST, "x.png", "--labels", "cat", "--method", "gradcam",
                       "--model", tiny_checkpoint[0]])
    assert status == 2 and "gradcam" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["chefer", "naclip"])
def test_bfloat16_relevance_is_within_the_stated_tolerance_of_float32(tiny_checkpoint, method):
    import jax.numpy as jnp

    rng = np.random.default_rng(5)
    pixels = rng.standard_normal((4, 32, 32, 3)).astype(np.float32)
    texts = rng.standard_normal((3, 24)).astype(np.float32)
    config = jaxseg.RelevanceConfig(method=method)

    def normalised(clip):
        maps = np.asarray(jaxseg.relevance(clip, pixels, texts, config=config), np.float32)
        low = maps.min(axis=(2, 3), keepdims=True)
        return (maps - low) / (maps.max(axis=(2, 3), keepdims=True) - low)

    full = normalised(jaxseg.load_clip(tiny_checkpoint[0]))
    half = normalised(jaxseg.load_clip(tiny_checkpoint[0], dtype=jnp.bfloat16))
    # The README's stated tolerance: per-map normalised maps within 0.05, correlation 0.999.
    assert np.abs(half - full).max() <= 0.05
    assert np.corrcoef(half.ravel(), full.ravel())[0, 1] >= 0.999
    assert np.abs(half - full).max() > 0  # bfloat16 was really used
