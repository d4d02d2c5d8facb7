"""Tests for jaxseg.metrics and python -m jaxseg.evaluate on hand-made masks whose scores were worked out by hand."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxseg.cli.evaluate import main
from jaxseg.metrics import ConfusionMatrix, evaluate, load_class_space
from jaxseg.labels.vocab import VOC_CLASSES

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
COCO_DEV = REPO_ROOT.parent / "shared" / "data" / "coco-dev"
needs_coco_dev = pytest.mark.skipif(not COCO_DEV.is_dir(), reason="../shared/data/coco-dev absent")

VOC_CAT, VOC_DOG, VOC_SOFA = 8, 12, 18


def write_palette_png(path, indices):
    """Writes a mode "P" PNG whose pixel values are ``indices`` (uint8 [H, W])."""
    indices = np.asarray(indices, np.uint8)
    image = Image.frombytes("P", indices.shape[::-1], indices.tobytes())
    image.putpalette([value for index in range(256) for value in (index, 255 - index, 0)])
    image.save(path)


def write_prediction(folder, stem, indices, labels=None):
    write_palette_png(folder / f"{stem}.png", indices)
    if labels is not None:
        (folder / f"{stem}.json").write_text(json.dumps({"labels": labels, "fractions": [0.5]}))


def class_row(result, name):
    return next(row for row in result["classes"] if row["name"] == name)


def test_confusion_matrix_scores_match_hand_computation():
    # Classes: 0 bg, 1 a, 2 b, 3 c (c in neither mask). The two 255 pixels are void; their
    # predictions (1 and 2) must not count.
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [2, 0, 1, 2]], np.uint8)
    matrix = ConfusionMatrix(["bg", "a", "b", "c"])
    matrix.update(pred, gt)
    result = matrix.scores()
    # bg: tp 3, gt 4, pred 5 -> IoU 3/6. a: tp 3, gt 4, pred 4 -> 3/5. b: tp 1, gt 2, pred 1 -> 1/2.
    assert class_row(result, "bg")["iou"] == pytest.approx(50.0)
    assert class_row(result, "bg")["precision"] == pytest.approx(60.0)
    assert class_row(result, "bg")["recall"] == pytest.approx(75.0)
    assert class_row(result, "a")["iou"] == pytest.approx(60.0)
    assert class_row(result, "b")["iou"] == pytest.approx(50.0)
    assert class_row(result, "b")["precision"] == pytest.approx(100.0)
    assert class_row(result, "b")["recall"] == pytest.approx(50.0)
    assert class_row(result, "c") == {"name": "c", "iou": None, "precision": None,
                                      "recall": None, "gt_pixels": 0, "pred_pixels": 0,
                                      "in_mean": False}
    assert result["absent_classes"] == ["c"]
    assert result["miou"] == pytest.approx((50 + 60 + 50) / 3)
    assert result["pixel_accuracy"] == pytest.approx(70.0)
    assert result["num_pixels"] == 10


def test_confusion_matrix_accumulates_images_without_changing_ratios():
    gt = np.array([[0, 1], [1, 1]])
    pred = np.array([[0, 1], [0, 1]])
    once, twice = ConfusionMatrix(["bg", "a"]), ConfusionMatrix(["bg", "a"])
    once.update(pred, gt)
    twice.update(pred, gt)
    twice.update(pred, gt)
    np.testing.assert_array_equal(twice.counts, 2 * once.counts)
    assert twice.scores()["miou"] == pytest.approx(once.scores()["miou"])
    assert once.counts.shape == (2, 2)


def test_confusion_matrix_rejects_bad_input():
    matrix = ConfusionMatrix(["bg", "a"])
    with pytest.raises(ValueError, match="shape"):
        matrix.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="prediction has class index"):
        matrix.update(np.full((2, 2), 2), np.zeros((2, 2), int))


def test_excluded_class_is_scored_but_not_averaged():
    matrix = ConfusionMatrix(["a", "background"], excluded_from_mean=[1])
    matrix.update(np.array([0, 1, 0]), np.array([0, 0, 0]))
    result = matrix.scores()
    assert class_row(result, "background")["iou"] == 0.0
    assert result["miou"] == pytest.approx(100 * 2 / 3)
    assert result["excluded_classes"] == ["background"]


def test_voc_class_space_and_name_matching():
    space = load_class_space("voc")
    assert space.names == ("background", *VOC_CLASSES) and not space.pseudo_background
    lookup, unmatched = space.match_labels(["Potted Plant", "tv", "airplane", "zebra"])
    assert lookup.tolist() == [0, 16, 20, 1, 0]
    assert unmatched == ["zebra"]


def test_text_class_file_and_its_errors(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("background\ncat\nsofa\n\n")
    space = load_class_space(path)
    assert space.ids == (0, 1, 2) and space.background_index == 0
    path.write_text("background\n\ncat\n")
    with pytest.raises(ValueError, match=r"classes.txt:2: empty line"):
        load_class_space(path)
    path.write_text("background\ncouch\nsofa\n")
    with pytest.raises(ValueError, match="same normalised name"):
        load_class_space(path)
    with pytest.raises(ValueError, match="neither 'voc' nor an existing file"):
        load_class_space(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, message", [
    ("classes: [unclosed\n", "not valid YAML"),
    ("names: {0: cat}\n", "no 'classes:' mapping"),
    ("classes: {-1: cat}\n", "must be >= 0"),
    ("classes: {0: unlabeled}\n", "lists no class to score"),
])
def test_yaml_class_file_errors(tmp_path, text, message):
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_class_space(path)


@pytest.fixture
def voc_dirs(tmp_path):
    """Three VOC images: two with sidecars (a COCO name, an unknown label), one without."""
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    write_palette_png(gt_dir / "a.png", [[VOC_CAT, VOC_CAT, VOC_SOFA, VOC_SOFA],
                                         [0, 0, VOC_SOFA, 255]])
    write_prediction(pred_dir, "a", [[1, 1, 1, 2], [0, 1, 2, 2]], ["cat", "Couch"])
    write_palette_png(gt_dir / "b.png", [[VOC_DOG, VOC_DOG, 0, 0], [VOC_DOG, 0, 0, 0]])
    write_prediction(pred_dir, "b", [[1, 2, 0, 0], [1, 1, 0, 2]], ["dog", "unicorn"])
    # No sidecar: values are VOC ids already; 255 counts as background.
    write_palette_png(gt_dir / "c.png", [[0, VOC_CAT], [VOC_CAT, VOC_CAT]])
    write_prediction(pred_dir, "c", [[0, VOC_CAT], [0, 255]])
    return pred_dir, gt_dir


def test_evaluate_voc_folder_with_name_mapping_and_void(voc_dirs):
    pred_dir, gt_dir = voc_dirs
    warnings_seen = []
    result = evaluate(pred_dir, gt_dir, on_warning=warnings_seen.append)
    # Worked out pixel by pixel (void pixel of a.png skipped; "unicorn" -> background):
    # background tp 6 / union 11, cat 3/7, dog 2/4, sofa 2/3; 13 of 19 pixels right.
    assert class_row(result, "background")["iou"] == pytest.approx(100 * 6 / 11)
    assert class_row(result, "background")["precision"] == pytest.approx(100 * 6 / 9)
    assert class_row(result, "cat")["iou"] == pytest.approx(100 * 3 / 7)
    assert class_row(result, "dog")["iou"] == pytest.approx(50.0)
    assert class_row(result, "sofa")["iou"] == pytest.approx(100 * 2 / 3)
    assert class_row(result, "sofa")["precision"] == pytest.approx(100.0)
    assert result["miou"] == pytest.approx(100 * (6 / 11 + 3 / 7 + 2 / 4 + 2 / 3) / 4)
    assert result["pixel_accuracy"] == pytest.approx(100 * 13 / 19)
    assert len(result["absent_classes"]) == 17 and "cow" in result["absent_classes"]
    assert result["num_images"] == 3 and result["unmatched_labels"] == ["unicorn"]
    assert len(warnings_seen) == 1 and "unicorn" in warnings_seen[0]


def test_evaluate_rejects_label_index_beyond_sidecar(voc_dirs):
    pred_dir, gt_dir = voc_dirs
    write_prediction(pred_dir, "b", [[3, 0, 0, 0], [0, 0, 0, 0]], ["dog", "unicorn"])
    with pytest.raises(ValueError, match="label index 3 but its sidecar lists 2 labels"):
        evaluate(pred_dir, gt_dir, on_warning=lambda message: None)


def test_evaluate_coco_style_yaml_ground_truth(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    classes = tmp_path / "classes.yaml"
    classes.write_text("classes:\n  0: unlabeled\n  17: cat\n  63: couch\n  189: table-merged\n")
    Image.fromarray(np.array([[17, 17, 0], [63, 189, 189]], np.uint8), "L").save(gt_dir / "x.png")
    write_prediction(pred_dir, "x", [[1, 0, 2], [2, 2, 0]], ["cat", "sofa"])
    for ignore in (255, -1):  # "unlabeled" is void by name, whatever --ignore says
        result = evaluate(pred_dir, gt_dir, classes=classes, ignore=ignore)
        # Scored pixels: cat->cat, cat->bg, couch->couch, table->couch, table->bg.
        assert [row["name"] for row in result["classes"]] == [
            "cat", "couch", "table-merged", "background"]
        assert class_row(result, "cat")["iou"] == pytest.approx(50.0)
        assert class_row(result, "couch")["iou"] == pytest.approx(50.0)
        assert class_row(result, "couch")["precision"] == pytest.approx(50.0)
        assert class_row(result, "table-merged")["iou"] == 0.0
        assert class_row(result, "table-merged")["precision"] is None
        assert class_row(result, "background")["pred_pixels"] == 2
        assert not class_row(result, "background")["in_mean"]
        assert result["miou"] == pytest.approx(100 / 3)
        assert result["pixel_accuracy"] == pytest.approx(40.0)


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "jaxseg.evaluate", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_cli_prints_table_and_writes_json(voc_dirs, tmp_path):
    pred_dir, gt_dir = voc_dirs
    json_path = tmp_path / "scores.json"
    completed = run_cli("--pred", pred_dir, "--gt", gt_dir, "--json", json_path)
    assert completed.returncode == 0, completed.stderr
    assert "mIoU 53.52 over 4 of 21 classes" in completed.stdout
    assert "excluded from the mean, absent from both prediction and ground truth (17)" in (
        completed.stdout)
    assert "warning: predicted label 'unicorn'" in completed.stderr
    written = json.loads(json_path.read_text())
    assert written["miou"] == pytest.approx(100 * (6 / 11 + 3 / 7 + 2 / 4 + 2 / 3) / 4)
    assert class_row(written, "sofa")["gt_pixels"] == 3


def test_cli_error_is_one_line_with_nonzero_exit(tmp_path):
    missing = run_cli("--pred", tmp_path / "nope", "--gt", tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"jaxseg.evaluate: error: prediction folder {tmp_path / 'nope'} does not exist; "
        "pass an existing folder"]


def test_an_unwritable_json_path_is_refused_before_scoring(voc_dirs, tmp_path, capsys):
    pred_dir, gt_dir = voc_dirs
    for target in (tmp_path / "missing" / "scores.json", tmp_path):
        assert main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(target)]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.strip().splitlines() == [
            f"jaxseg.evaluate: error: --json {target}: cannot write a file there; pass a file "
            f"path in an existing folder you can write to"]


def test_main_errors_return_1_and_debug_shows_traceback(voc_dirs, capsys):
    # In-process: each subprocess pays for importing jax through jaxseg/__init__.py.
    pred_dir, gt_dir = voc_dirs
    write_prediction(pred_dir, "orphan", [[0]])
    assert main(["--pred", str(pred_dir), "--gt", str(gt_dir)]) == 1
    assert "orphan.png has no ground truth" in capsys.readouterr().err
    (pred_dir / "orphan.png").unlink()
    write_prediction(pred_dir, "a", [[0, 0, 0]], ["cat"])
    assert main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--debug"]) == 1
    stderr = capsys.readouterr().err
    assert "is 3x1 but ground truth" in stderr and "Traceback" in stderr
    with pytest.raises(SystemExit) as usage_error:
        main(["--pred", str(pred_dir)])
    assert usage_error.value.code == 2


@needs_coco_dev
def test_coco_dev_voc_masks_scored_against_themselves_give_100():
    result = evaluate(COCO_DEV / "masks_voc20", COCO_DEV / "masks_voc20")
    assert result["num_images"] == 100
    assert result["miou"] == pytest.approx(100.0)
    assert result["pixel_accuracy"] == pytest.approx(100.0)


@needs_coco_dev
def test_coco_names_in_sidecars_map_onto_coco_dev_voc_masks(tmp_path):
    """Predictions made of the COCO panoptic masks with COCO names score 100 on the VOC masks."""
    import yaml

    names = yaml.safe_load((COCO_DEV / "classes.yaml").read_text())["classes"]
    for mask_path in sorted((COCO_DEV / "masks").glob("*.png"))[:25]:
        coco_ids = np.asarray(Image.open(mask_path))
        present = [int(value) for value in np.unique(coco_ids) if value != 0]
        per_image = np.zeros(256, np.uint8)
        per_image[present] = np.arange(1, len(present) + 1)
        write_prediction(tmp_path, mask_path.stem, per_image[coco_ids],
                         [names[value] for value in present])
    result = evaluate(tmp_path, COCO_DEV / "masks_voc20", on_warning=lambda message: None)
    assert result["num_images"] == 25
    assert result["miou"] == pytest.approx(100.0)
    assert "dining table" not in result["unmatched_labels"]
    assert "truck" in result["unmatched_labels"]


def test_overlay_images_beside_predictions_are_not_scored(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    mask = np.zeros((4, 4), np.uint8)
    mask[:2] = 1
    Image.fromarray(mask).save(gt / "a.png")
    Image.fromarray(mask).save(pred / "a.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(pred / "a_overlay.png")
    result = evaluate(pred, gt, classes="voc")
    assert result["num_images"] == 1 and result["miou"] == 100.0
