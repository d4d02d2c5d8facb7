"""End-to-end tests of ``python -m jaxseg.segment`` on a tiny random checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxseg.cli import segment
from jaxseg.labels.presets import DEFAULT_TEMPLATES
from jaxseg.run import calibration, runner
from test_datasets import make_voc
from test_imageio import png_header_only, write_odd_images
from compile_cache import CACHE_ARGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small views, canvas and distillation keep each image well under a second; one batch
# size (tests may override it) keeps the number of compiled programs down.
FAST = ["--input-size", "32", "--canvas-size", "64", "--refine-steps", "10", "--batch-size", "1"]


@pytest.fixture(scope="module")
def run(tiny_checkpoint):
    """``run(*args) -> exit status``: the CLI in-process on the tiny checkpoint."""

    def call(*args):
        return segment.main([*FAST, "--model", tiny_checkpoint[0], *CACHE_ARGS,
                             *map(str, args)])

    return call


def random_images(folder, count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index in range(count):
        path = os.path.join(folder, f"img{index}.png")
        Image.fromarray(rng.integers(0, 256, (20 + 4 * index, 30, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def read_output(out, stem):
    with Image.open(out / f"{stem}.png") as mask:
        mode, pixels = mask.mode, np.asarray(mask)
    return mode, pixels, json.loads((out / f"{stem}.json").read_text())


def test_odd_images_give_masks_of_the_displayed_size(tmp_path, run, capsys):
    sizes = write_odd_images(tmp_path)
    out = tmp_path / "out"
    assert run(*[tmp_path / name for name in sizes], "--labels", "cat,dog", "--overlay",
               "--out", out) == 0
    for name, (height, width) in sizes.items():
        stem = os.path.splitext(name)[0]
        mode, pixels, sidecar = read_output(out, stem)
        assert mode == "P" and pixels.shape == (height, width) and pixels.max() <= 2, name
        assert sidecar["labels"] == ["cat", "dog"] and sidecar["image_size"] == [height, width]
        assert set(sidecar["fractions"]) == {"cat", "dog"}
        assert {"read", "relevance", "refine", "write"} <= set(sidecar["timings"])
        with Image.open(out / f"{stem}_overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.width >= width and overlay.height > height
    err = capsys.readouterr().err
    assert "img/s" in err and f"{len(sizes)} written" in err


def test_bad_inputs_are_reported_and_the_run_goes_on(tmp_path, run, capsys):
    good = random_images(tmp_path, 1)[0]
    bad = {"notes.jpg": "not an image", "empty.jpg": "empty file", "zero.png": "zero-size",
           "missing.jpg": "file not found", "cut.jpg": "corrupt or truncated"}
    (tmp_path / "notes.jpg").write_text("a text file\n")
    (tmp_path / "empty.jpg").write_bytes(b"")
    png_header_only(tmp_path / "zero.png", 0, 7)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(tmp_path / "full.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    out = tmp_path / "out"
    assert run(*[tmp_path / name for name in bad], good, "--labels", "cat", "--out", out) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name, reason in bad.items():
        lines = [line for line in err.splitlines() if f"{tmp_path / name}: " in line]
        # One error line while running, one in the final summary.
        assert len(lines) == 2 and all(reason in line for line in lines), (name, lines)
    assert "5 input(s) failed" in err
    assert sorted(os.listdir(out)) == ["img0.json", "img0.png"]


def test_labels_are_cleaned_and_long_labels_cut(tmp_path, run, capsys, tiny_clip):
    paths = random_images(tmp_path, 2)
    long_label = "striped " * 60 + "zebra"
    labels = {"img0": [" cat ", "Cat", "", "dog", long_label], "img1": []}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "out"
    assert run(*paths, "--labels-file", tmp_path / "labels.json", "--out", out) == 0
    err = capsys.readouterr().err
    _, _, sidecar = read_output(out, "img0")
    cat, dog, cut = sidecar["labels"]
    assert (cat, dog) == ("cat", "dog")
    assert long_label.startswith(cut) and len(cut) < len(long_label)
    for template in DEFAULT_TEMPLATES:
        assert len(tiny_clip.tokenizer.encode(template.format(cut))) <= 75
    for expected in ("ignoring repeated label 'Cat'", "ignoring empty label ''",
                     "does not fit CLIP's 77-token prompt"):
        assert sum(expected in line for line in err.splitlines()) == 1, expected
    _, empty_mask, empty_sidecar = read_output(out, "img1")
    assert empty_sidecar["labels"] == [] and not empty_mask.any()  # no labels: all background


def test_auto_labels_write_their_scores(tmp_path, run):
    path = random_images(tmp_path, 1)[0]
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("cat\ndog\npottedplant: potted plant\n")
    assert run(path, "--labels", "auto", "--vocab", vocabulary, "--out", tmp_path / "out") == 0
    _, pixels, sidecar = read_output(tmp_path / "out", "img0")
    # A softmax over 3 classes puts >= 1/3 on one of them, above the 0.15 threshold.
    assert len(sidecar["labels"]) >= 1
    assert set(sidecar["label_scores"]) == set(sidecar["labels"]) <= {"cat", "dog", "pottedplant"}
    assert all(score >= 0.15 for score in sidecar["label_scores"].values())
    assert pixels.max() <= len(sidecar["labels"])


@pytest.mark.parametrize("args, message", [
    (["IMG", "--labels", "cat", "--model", "/no/such/checkpoint"], "neither a checkpoint folder"),
    (["--dataset", "voc", "--root", "/no/such/VOC2012"], "is not a VOC2012 folder"),
    (["--dataset", "folder", "--root", "."], "has no images/ folder"),
    (["IMG", "--labels-file", "/no/such/labels.json"], "cannot read labels file"),
    (["IMG"], "give labels"),
    (["IMG", "--labels", "auto", "--vocab", "/no/vocab.txt"], "neither 'voc', 'coco'"),
    (["IMG", "--labels", "a", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["IMG", "--labels", "a", "--limit", "-2"], "--limit must be >= 0"),
    (["IMG", "--labels", "a", "--refine-workers", "-1"], "--refine-workers must be >= 0"),
    (["IMG", "--labels", "a", "--calibrate-levels", "-1"], "--calibrate-levels must be >= 0"),
    (["IMG", "--labels", "a", "--refine", "none", "--calibrate-levels", "4"],
     "--calibrate-levels calibrates jaxseg's graph-cut refinement"),
    (["IMG", "--labels", "a", "--refine", "crf", "--coverage", "0.3"],
     "--coverage calibrates jaxseg's graph-cut refinement"),
    (["IMG", "--labels", "a", "--coverage", "0.3"],
     "runs of fewer than 50 images do by default; add --calibrate-levels N"),
    (["IMG", "--labels", "a", "--calibrate-levels", "0", "--coverage", "0.3"],
     "(--calibrate-levels 0; drop one of the two)"),
    (["IMG", "--labels", "a", "--calibrate-levels", "4", "--coverage", "1"],
     "--coverage must be in (0, 1)"),
])
def test_user_errors_exit_2_in_one_line(tmp_path, capsys, args, message):
    args = [str(tmp_path / "x.png") if arg == "IMG" else arg for arg in args]
    if "--model" not in args:
        args += ["--model", str(tmp_path)]
    status = segment.main(args + [*CACHE_ARGS, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_an_unusable_out_folder_or_input_size_exits_2_before_any_image(tmp_path, run, capsys):
    paths = random_images(tmp_path / "in", 2)
    (tmp_path / "afile").write_text("")
    for args, message in (
            (["--out", tmp_path / "afile"], "afile is a file, not a folder; pass a folder"),
            (["--out", tmp_path / "afile" / "sub"], "afile is a file, not a folder"),
            (["--out", " "], "--out is empty; pass a folder"),
            (["--input-size", 4, "--out", tmp_path / "out"],
             "--input-size must be at least the model's patch size")):
        assert run(*paths, "--labels", "cat", *args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_voc_dataset_run_and_resume(tmp_path, run, capsys):
    make_voc(tmp_path / "VOC2012", {"a": [8, 12], "b": [15]}, xml_only={"c": ["horse"]})
    args = ["--dataset", "voc", "--root", tmp_path / "VOC2012", "--split", "val",
            "--out", tmp_path / "out"]
    assert run(*args) == 0
    labels = {stem: read_output(tmp_path / "out", stem)[2]["labels"] for stem in "abc"}
    assert labels == {"a": ["cat", "dog"], "b": ["person"], "c": ["horse"]}
    capsys.readouterr()
    assert run(*args) == 0
    assert "0 written, 3 already complete" in capsys.readouterr().err
    assert run(*args, "--overwrite", "--limit", 2, "--quiet") == 0
    assert capsys.readouterr().err == ""


def test_calibrated_levels_are_written_and_give_the_same_masks_again(tmp_path, run, capsys):
    paths = random_images(tmp_path / "in", 5, seed=3)
    out = tmp_path / "out"
    assert run(*paths, "--labels", "cat,dog", "--calibrate-levels", 3, "--out", out) == 0
    record = json.loads((out / "levels.json").read_text())
    levels = record["levels"]
    assert 0 <= levels["mu_bg"] <= levels["theta"] <= levels["mu_fg"] <= 1
    assert record["images"] == 3 and record["sample"] == ["img0", "img2", "img4"]
    assert record["coverage"] == 0.2 and -1 < record["background_score"] < 1
    first = comparable(out)
    assert len(first) == 11  # five masks, five sidecars, levels.json
    capsys.readouterr()
    assert run(*paths, "--labels", "cat,dog", "--calibrate-levels", 3, "--out", out,
               "--overwrite") == 0
    assert "5 written" in capsys.readouterr().err
    assert comparable(out) == first  # the same sample, levels and masks on a rerun
    assert run(*paths, "--labels", "cat,dog", "--out", tmp_path / "own") == 0
    own = comparable(tmp_path / "own")
    masks = [name for name in own if name.endswith(".png")]
    assert len(masks) == 5 and any(own[name] != first[name] for name in masks)
    # A larger share of object pixels lowers the background's cut.
    assert run(*paths, "--labels", "cat,dog", "--calibrate-levels", 3, "--coverage", 0.6,
               "--out", tmp_path / "wide") == 0
    wide = json.loads((tmp_path / "wide" / "levels.json").read_text())
    assert wide["coverage"] == 0.6 and wide["levels"] == levels
    assert wide["background_score"] < record["background_score"]


def test_a_calibrated_run_resumes_at_its_recorded_levels(tmp_path, run, capsys):
    paths = random_images(tmp_path / "in", 5, seed=3)
    out = tmp_path / "out"
    calibrate = ["--labels", "cat,dog", "--calibrate-levels", 3]
    assert run(*paths, *calibrate, "--out", out) == 0
    first = comparable(out)
    for name in ("img1.png", "img1.json"):
        (out / name).unlink()
    capsys.readouterr()
    # Resumed on a shorter list, whose own sample (img0, img1) calibrates elsewhere.
    assert run(*paths[:2], *calibrate, "--out", out) == 0
    err = capsys.readouterr().err
    assert "1 written, 1 already complete" in err and "levels calibrated in" in err
    assert "warning" not in err
    assert comparable(out) == first
    assert run(*paths[:2], *calibrate, "--refine-steps", 11, "--out", out) == 0
    assert "calibrated on the maps of another model or other settings" in capsys.readouterr().err
    assert run(*paths[:2], *calibrate, "--out", tmp_path / "short") == 0
    short = comparable(tmp_path / "short")["levels.json"]
    assert short["levels"] != first["levels.json"]["levels"]
    capsys.readouterr()
    recorded = "calibrated with --calibrate-levels 3 --coverage 0.2"
    refused = (([*calibrate, "--coverage", 0.3], "resume with those"),
               (["--labels", "cat,dog", "--calibrate-levels", 4], "resume with those"),
               (["--labels", "cat,dog", "--calibrate-levels", 0], "drop --calibrate-levels 0"),
               (["--labels", "cat,dog", "--coverage", 0.3], "resume with those"))
    for other, expected in refused:
        assert run(*paths, *other, "--out", out) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and recorded in err and expected in err, err
    assert comparable(out) == first  # nothing written by the refused runs
    (out / "img1.png").unlink()
    # Without --calibrate-levels a run resumes at the record's levels, whatever it lists.
    assert run(*paths[:2], "--labels", "cat,dog", "--out", out) == 0
    assert "levels calibrated in" in capsys.readouterr().err
    assert comparable(out) == first
    (out / "levels.json").write_text('{"levels": {"theta": 0.3}}')
    assert run(*paths, *calibrate, "--out", out) == 2
    assert "not a record of --calibrate-levels" in capsys.readouterr().err
    # An edited record whose levels could not come from calibration is refused too.
    (out / "levels.json").write_text(json.dumps({**first["levels.json"], "levels": {
        **first["levels.json"]["levels"], "theta": float("nan")}}))
    assert run(*paths, *calibrate, "--out", out) == 2
    assert "not a record of --calibrate-levels (ValueError: levels out of range" in (
        capsys.readouterr().err)
    (out / ".levels.json.tmp-99999").write_text("a killed run's record")
    assert run(*paths, *calibrate, "--out", out, "--overwrite") == 0  # calibrates again
    assert comparable(out) == first  # the killed run's temporary is gone too
    # --overwrite without calibration redoes every image at its own levels.
    assert run(*paths, "--labels", "cat,dog", "--out", out, "--overwrite") == 0
    assert not (out / "levels.json").exists()
    assert run(*paths, "--labels", "cat,dog", "--out", tmp_path / "own") == 0
    assert comparable(out) == comparable(tmp_path / "own")


def test_runs_of_many_images_calibrate_by_default_and_resume_like_their_folder(
        tmp_path, run, capsys, monkeypatch):
    monkeypatch.setattr(calibration, "AUTO_MIN_IMAGES", 4)
    monkeypatch.setattr(calibration, "AUTO_SAMPLE", 3)
    paths = random_images(tmp_path / "in", 5, seed=3)
    labels = ["--labels", "cat,dog"]
    assert run(*paths, *labels, "--out", tmp_path / "auto") == 0
    assert "calibrating the refinement's levels on 3 of the run's images" in capsys.readouterr().err
    assert run(*paths, *labels, "--calibrate-levels", 3, "--out", tmp_path / "explicit") == 0
    auto = comparable(tmp_path / "auto")
    assert "levels.json" in auto and auto == comparable(tmp_path / "explicit")
    # Fewer images: each at its own levels, as with --calibrate-levels 0.
    assert run(*paths[:3], *labels, "--out", tmp_path / "few") == 0
    assert run(*paths[:3], *labels, "--calibrate-levels", 0, "--out", tmp_path / "off") == 0
    few = comparable(tmp_path / "few")
    assert "levels.json" not in few and few == comparable(tmp_path / "off")
    # A folder of images refined at their own levels goes on at their own levels.
    capsys.readouterr()
    assert run(*paths, *labels, "--out", tmp_path / "few") == 0
    assert "as the 3 of this run's images already in" in capsys.readouterr().err
    assert run(*paths, *labels, "--calibrate-levels", 0, "--out", tmp_path / "own") == 0
    grown = comparable(tmp_path / "few")
    assert "levels.json" not in grown and grown == comparable(tmp_path / "own")
    assert run(*paths, *labels, "--calibrate-levels", 3, "--out", tmp_path / "few") == 2
    assert "resume without --calibrate-levels" in capsys.readouterr().err
    assert comparable(tmp_path / "few") == grown
    # Nothing to calibrate on (no image has a label): the default refines each image at
    # its own levels; asked for, calibration is refused.
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({f"img{index}": [] for index in range(5)}))
    assert run(*paths, "--labels-file", empty, "--out", tmp_path / "unlabelled") == 0
    assert "own levels: nothing to calibrate on" in capsys.readouterr().err
    assert not (tmp_path / "unlabelled" / "levels.json").exists()
    assert run(*paths, "--labels-file", empty, "--calibrate-levels", 3,
               "--out", tmp_path / "refused") == 2
    assert "--calibrate-levels: nothing to calibrate on" in capsys.readouterr().err


def test_an_overwrite_that_changes_the_levels_and_stops_early_refuses_a_resume(
        tmp_path, run, capsys, monkeypatch):
    paths = random_images(tmp_path / "in", 3, seed=5)
    out = tmp_path / "out"
    assert run(*paths, "--labels", "cat", "--calibrate-levels", 2, "--out", out) == 0
    record = json.loads((out / "levels.json").read_text())

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    # To each image's own levels, then back to calibrated ones: stopped before the images
    # are redone, the folder mixes two kinds of levels, and a resume is refused.
    for overwrite in ([], ["--calibrate-levels", 2]):
        with monkeypatch.context() as patch:
            patch.setattr(runner, "run_dataset", stopped)
            assert run(*paths, "--labels", "cat", *overwrite, "--out", out, "--overwrite") == 130
        assert json.loads((out / "levels.json").read_text()) == {**record, "overwriting": True}
        capsys.readouterr()
        for resume in ([], ["--calibrate-levels", 2]):
            assert run(*paths, "--labels", "cat", *resume, "--out", out) == 2
            assert "run it again with --overwrite" in capsys.readouterr().err
        assert run(*paths, "--labels", "cat", *overwrite, "--out", out, "--overwrite") == 0
        assert (json.loads((out / "levels.json").read_text()) == record if overwrite
                else not (out / "levels.json").exists())
    # An --overwrite that would change the levels of images it does not redo is refused.
    assert run(*paths[:2], "--labels", "cat", "--calibrate-levels", 2, "--out", out,
               "--overwrite") == 2
    assert "holds images this run does not list (1, e.g. img2)" in capsys.readouterr().err
    assert json.loads((out / "levels.json").read_text()) == record


def test_an_unreadable_sample_image_is_left_out_and_reported(tmp_path, run, capsys,
                                                              monkeypatch):
    monkeypatch.setattr(calibration, "AUTO_MIN_IMAGES", 4)
    paths = random_images(tmp_path / "in", 4, seed=6)
    Path(paths[1]).write_bytes(b"")
    assert run(*paths, "--labels", "cat", "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"{paths[1]}: left out of the calibration sample" in err and "internal" not in err
    assert json.loads((tmp_path / "out" / "levels.json").read_text())["images"] == 3


def test_an_image_named_like_the_levels_record_never_overwrites_it(tmp_path, run, capsys):
    paths = random_images(tmp_path / "in", 2, seed=4)
    named = tmp_path / "in" / "levels.png"
    os.replace(paths[1], named)
    calibrated = tmp_path / "calibrated"
    assert run(paths[0], named, "--labels", "cat", "--calibrate-levels", 2,
               "--out", calibrated) == 1
    err = capsys.readouterr().err
    assert f"{named}: its sidecar would overwrite levels.json, the record" in err
    assert sorted(os.listdir(calibrated)) == ["img0.json", "img0.png", "levels.json"]
    assert "background_score" in json.loads((calibrated / "levels.json").read_text())
    # Uncalibrated, its sidecar is an ordinary output, and the run resumes over it.
    plain = tmp_path / "plain"
    for written in ("2 written", "2 already complete"):
        assert run(paths[0], named, "--labels", "cat", "--out", plain) == 0
        assert written in capsys.readouterr().err
    # Calibrating into that folder would overwrite the sidecar.
    assert run(paths[0], "--labels", "cat", "--calibrate-levels", 2, "--out", plain) == 2
    assert "levels.json is an image's sidecar" in capsys.readouterr().err


def comparable(folder) -> dict:
    """Every file's content, JSON sidecars without their timings."""
    contents = {}
    for name in sorted(os.listdir(folder)):
        data = (folder / name).read_bytes()
        if name.endswith(".json"):
            data = json.loads(data)
            data.pop("timings", None)
        contents[name] = data
    return contents
