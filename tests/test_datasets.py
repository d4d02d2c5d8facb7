"""Tests for jaxseg.run.datasets (layouts, labels files) and the runner's work selection."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxseg.run import datasets, imageio
from jaxseg.run.datasets import DatasetError, Item
from jaxseg.run.outputs import complete_stems, is_complete
from jaxseg.run.plan import plan_batches, process_batches


def make_voc(root, masks: dict[str, list[int]], xml_only: dict[str, list[str]] = (),
             split: str = "val") -> None:
    """A tiny VOC2012 layout: images, masks with the given class ids, annotation XML."""
    for sub in ("ImageSets/Segmentation", "JPEGImages", "SegmentationClass", "Annotations"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = list(masks) + list(dict(xml_only))
    with open(os.path.join(root, "ImageSets/Segmentation", f"{split}.txt"), "w") as handle:
        handle.write("\n".join(ids) + "\n")
    rng = np.random.default_rng(0)
    for image_id in ids:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
            os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
    for image_id, class_ids in masks.items():
        mask = np.zeros((24, 32), np.uint8)
        mask[0, :len(class_ids)] = class_ids
        imageio.write_mask(os.path.join(root, "SegmentationClass", f"{image_id}.png"), mask)
    for image_id, names in dict(xml_only).items():
        objects = "".join(f"<object><name>{name}</name><difficult>0</difficult></object>"
                          for name in names)
        with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as handle:
            handle.write(f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>")


def test_voc_labels_from_masks_then_xml(tmp_path):
    make_voc(tmp_path, {"2007_000032": [15, 1, 255, 1], "2007_000039": [0]},
             xml_only={"2008_000001": ["person", "cat", "person", "weird thing"]})
    dataset = datasets.voc_dataset(str(tmp_path), "val")
    assert dataset.failures == []
    assert [(item.stem, item.labels) for item in dataset.items] == [
        ("2007_000032", ["aeroplane", "person"]),  # VOC class order, 0 and 255 ignored
        ("2007_000039", []),
        ("2008_000001", ["cat", "person", "weird thing"]),
    ]
    assert dataset.items[0].path == os.path.join(str(tmp_path), "JPEGImages", "2007_000032.jpg")
    assert datasets.voc_dataset(str(tmp_path), "val", labels="auto").items[0].labels == "auto"


def test_voc_problems(tmp_path):
    make_voc(tmp_path, {"a": [21], "b": [3]}, xml_only={"c": ["dog"]})
    os.remove(tmp_path / "Annotations" / "c.xml")
    dataset = datasets.voc_dataset(str(tmp_path), "val")
    assert [item.stem for item in dataset.items] == ["b"]
    reasons = dict(dataset.failures)
    assert "outside VOC" in reasons[str(tmp_path / "JPEGImages" / "a.jpg")]
    assert "no ground truth" in reasons[str(tmp_path / "JPEGImages" / "c.jpg")]
    with pytest.raises(DatasetError, match="not a VOC2012 folder.*train.txt"):
        datasets.voc_dataset(str(tmp_path), "train")


def test_folder_layout(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("b.jpg", "a.PNG", "notes.txt", ".hidden.jpg", "c.jpeg"):
        (tmp_path / "images" / name).write_bytes(b"x")
    (tmp_path / "labels.json").write_text(json.dumps({"a": ["cat"], "b": [], "zz": ["dog"]}))
    dataset = datasets.folder_dataset(str(tmp_path))
    assert [(item.stem, item.labels) for item in dataset.items] == [("a", ["cat"]), ("b", [])]
    assert dataset.failures == [(str(tmp_path / "images" / "c.jpeg"),
                                 f"no labels for 'c' in {tmp_path / 'labels.json'}")]
    shared = datasets.folder_dataset(str(tmp_path), labels=["cat", "dog"])
    assert [item.labels for item in shared.items] == [["cat", "dog"]] * 3
    with pytest.raises(DatasetError, match="no images/ folder"):
        datasets.folder_dataset(str(tmp_path / "images"))
    os.remove(tmp_path / "labels.json")
    with pytest.raises(DatasetError, match="--labels-file"):
        datasets.folder_dataset(str(tmp_path))


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "JSON object"), ('{"a": "cat"}', "list of label names"),
    ("{not json", "not valid JSON"), (None, "cannot read"),
])
def test_bad_labels_files(tmp_path, content, message):
    path = tmp_path / "labels.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        datasets.read_labels_file(str(path))


def test_collect_items_reports_stem_clashes():
    dataset = datasets.collect_items(["x/a.jpg", "y/a.png", "b.jpg"], labels=["cat"])
    assert [item.stem for item in dataset.items] == ["a", "b"]
    assert dataset.failures == [("y/a.png", "has the same output name 'a' as x/a.jpg; "
                                            "rename one of them")]


def test_a_repeated_file_is_segmented_once_and_pictures_never_take_a_masks_name():
    paths = ["a.jpg", "./a.jpg", "a_overlay.png", "a_maps.png", "b_maps.png", "c.png"]
    by_stem = {"a": ["cat"], "a_overlay": ["cat"], "a_maps": ["dog"], "b_maps": ["cat"]}
    dataset = datasets.collect_items(paths, labels_by_stem=by_stem)
    assert [item.stem for item in dataset.items] == ["a", "a_overlay", "a_maps", "b_maps"]
    assert dataset.failures == [("c.png", "no labels for 'c' in the labels file")]
    datasets.refuse_picture_clashes(dataset, [])  # no picture asked for: nothing clashes
    assert len(dataset.items) == 4
    # a's overlay picture would overwrite image a_overlay's mask (written now or by an
    # earlier run): a is refused; b_maps has no b beside it.
    datasets.refuse_picture_clashes(dataset, ["overlay"])
    assert [item.stem for item in dataset.items] == ["a_overlay", "a_maps", "b_maps"]
    assert dataset.failures[-1] == ("a.jpg", "its overlay picture a_overlay.png would take the "
                                             "name of the mask of image a_overlay; rename one of them")


def test_limit_keeps_the_first_images_of_the_listing_and_only_their_failures(tmp_path):
    make_voc(tmp_path, {"a": [21], "b": [3], "c": [4]})
    assert [item.stem for item in datasets.voc_dataset(str(tmp_path), "val", limit=2).items] == ["b"]
    assert len(datasets.voc_dataset(str(tmp_path), "val", limit=2).failures) == 1  # a's id 21
    assert datasets.voc_dataset(str(tmp_path), "val", limit=0).items == []
    by_stem = {"x": ["cat"]}
    dataset = datasets.collect_items(["x.jpg", "y.jpg", "z.jpg"], labels_by_stem=by_stem, limit=1)
    assert [item.stem for item in dataset.items] == ["x"] and dataset.failures == []


def test_complete_outputs_are_found_by_one_listing(tmp_path):
    for name in ("a.png", "a.json", "b.png", ".c.json.tmp-1", "c.png", "d.json"):
        (tmp_path / name).write_text("")
    assert complete_stems(str(tmp_path), ["a", "b", "c", "d"]) == {"a"}
    assert complete_stems(str(tmp_path / "missing"), ["a"]) == set()
    # With pictures asked for, an output without them is not complete.
    assert not is_complete(str(tmp_path), "a", extras=("overlay",))
    (tmp_path / "a_overlay.png").write_text("")
    assert is_complete(str(tmp_path), "a", extras=("overlay",))
    assert complete_stems(str(tmp_path), ["a"], ("overlay", "maps")) == set()


def test_plan_groups_by_label_bucket_and_ignores_input_order():
    items = [Item(f"{i:02d}", f"{i:02d}.jpg", ["cat"] * (1 + i % 3)) for i in range(9)]
    items.append(Item("zz", "zz.jpg", "auto"))
    batches = plan_batches(items, 2)
    stems = [[item.stem for item in batch] for batch in batches]
    # buckets: 1 label (00, 03, 06), 2 labels (01, 04, 07), 3-4 labels (02, 05, 08), auto.
    assert stems == [["00", "03"], ["01", "04"], ["02", "05"], ["06"], ["07"], ["08"], ["zz"]]
    shuffled = [items[i] for i in np.random.RandomState(0).permutation(len(items))]
    assert plan_batches(shuffled, 2) == batches
    shares = [process_batches(batches, index, 3) for index in range(3)]
    assert sorted(sum(shares, []), key=str) == sorted(batches, key=str)
    assert [len(share) for share in shares] == [3, 2, 2]
    with pytest.raises(ValueError, match="process_index 3"):
        process_batches(batches, 3, 3)
