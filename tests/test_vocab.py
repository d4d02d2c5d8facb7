"""Tests for jaxseg.labels.vocab: built-in vocabularies, vocabulary files and class-name normalisation."""

import dataclasses

import pytest

from jaxseg.labels.vocab import (COCO_CLASSES, VOC_CLASSES, VocabEntry, load_vocabulary,
                          normalize_class_name)


def test_builtin_class_lists_have_the_official_sizes_and_no_duplicates():
    assert len(VOC_CLASSES) == 20 and "background" not in VOC_CLASSES
    assert len(COCO_CLASSES) == 80
    assert len({normalize_class_name(name) for name in VOC_CLASSES}) == 20
    assert len({normalize_class_name(name) for name in COCO_CLASSES}) == 80


def test_every_voc_class_has_a_coco_counterpart_after_normalisation():
    coco_keys = {normalize_class_name(name) for name in COCO_CLASSES}
    assert [name for name in VOC_CLASSES if normalize_class_name(name) not in coco_keys] == []


@pytest.mark.parametrize("name, expected", [
    ("Potted Plant", "pottedplant"), ("potted-plant", "pottedplant"),
    ("dining_table", "diningtable"), ("tv", "tvmonitor"), ("TV monitor", "tvmonitor"),
    ("airplane", "aeroplane"), ("motorcycle", "motorbike"), ("couch", "sofa"),
    ("sky-other-merged", "sky"), ("door-stuff", "door"), ("table-merged", "table"),
    ("wall-brick", "wallbrick"), ("  Cat ", "cat"),
])
def test_normalize_class_name(name, expected):
    assert normalize_class_name(name) == expected


def test_voc_vocabulary_gives_spaced_synonyms_for_compound_names():
    entries = load_vocabulary("voc")
    assert [entry.name for entry in entries] == list(VOC_CLASSES)
    by_name = {entry.name: entry for entry in entries}
    assert by_name["pottedplant"].synonyms == ("potted plant",)
    assert by_name["tvmonitor"].synonyms == ("tv monitor",)
    assert by_name["diningtable"].all_names == ("diningtable", "dining table")
    assert by_name["cat"].synonyms == ()
    assert load_vocabulary("VOC") == entries


def test_coco_vocabulary_is_the_80_thing_classes():
    entries = load_vocabulary("coco")
    assert [entry.name for entry in entries] == list(COCO_CLASSES)
    assert all(entry.synonyms == () for entry in entries)


def test_vocab_entry_is_frozen_and_hashable():
    entry = VocabEntry("cat", ("kitten",))
    assert hash(entry) == hash(VocabEntry("cat", ("kitten",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.name = "dog"


def test_vocabulary_file_with_comments_blanks_and_synonyms(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("# my classes\n\ncat\n  pottedplant: potted plant, house plant  # inline\n"
                    "fire hydrant\n")
    assert load_vocabulary(path) == [
        VocabEntry("cat"),
        VocabEntry("pottedplant", ("potted plant", "house plant")),
        VocabEntry("fire hydrant"),
    ]
    assert load_vocabulary(str(path)) == load_vocabulary(path)


@pytest.mark.parametrize("text, line, message", [
    ("cat\n: kitten\n", 2, "empty class name"),
    ("cat\ndog:\n", 2, "empty synonym"),
    ("cat: kitten,, tabby\n", 1, "empty synonym"),
    ("tvmonitor\n# tv again\ntv: television\n", 3, "repeats the class on line 1"),
])
def test_vocabulary_file_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_vocabulary(path)
    assert f"{path}:{line}" in str(error.value)


def test_vocabulary_file_without_classes_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="lists no class"):
        load_vocabulary(path)


def test_unknown_vocabulary_spec_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="neither 'voc', 'coco' nor an existing file"):
        load_vocabulary(tmp_path / "missing.txt")
