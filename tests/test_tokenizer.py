"""Tests of jaxseg.clip.tokenizer against transformers' CLIPTokenizer on the tiny fixture vocabulary."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from transformers import CLIPTokenizer

from jaxseg.clip.tokenizer import TOKENIZER_FILES, Tokenizer, copy_tokenizer_files

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tiny_tokenizer")
FIXTURE_VOCAB_SIZE = 814
CONFIG_FILES = ["tokenizer_config.json", "special_tokens_map.json"]

PROMPTS = [
    "a photo of a cat.",
    "",
    "A PHOTO OF THE Dog!!!",
    "  multiple   spaces\t\ttabs\nnewline ",
    "digits 12345 and 3.14, 1,000",
    "café naïve résumé",
    "cafe\u0301 with a combining accent",
    "日本語のテキスト 中文",
    "emoji 🐱🐶 party 🎉!",
    "it's they're we've I'm you'll he'd X'S",
    "ΟΔΟΣ ends in a capital sigma",
    "İstanbul straße ﬁsh",
    "no\u00a0break\u2003em\u3000ideographic spaces",
    "zero\u200bwidth and \ufeffbom",
    "<|startoftext|>inside<|endoftext|>",
    "<|ENDOFTEXT|> and <|StartOfText|> in capitals",
    "hello!world! (brackets) [x] {y} -- ...",
    "teddy bear, potted plant & dining table",
    " ".join(["word"] * 100),  # far over 77 tokens
    "a photo of " + ", ".join(["teddy bear"] * 30),
]


def _folder(tmp_path, files, extra_json=None):
    """A tokenizer folder with the named fixture files and extra JSON files."""
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for name in files:
        shutil.copyfile(os.path.join(FIXTURE, name), folder / name)
    for name, content in (extra_json or {}).items():
        (folder / name).write_text(json.dumps(content))
    return str(folder)


FOLDER_FORMS = {
    "vocab_merges_configs": (["vocab.json", "merges.txt", *CONFIG_FILES], None),
    "tokenizer_json_configs": (["tokenizer.json", *CONFIG_FILES], None),
    "vocab_merges_only": (["vocab.json", "merges.txt"], None),
    "tokenizer_json_only": (["tokenizer.json"], None),
    # LAION-style folders pad with "!" (id 0), which transformers then treats as a special token.
    "pad_exclamation": (["vocab.json", "merges.txt"], {"special_tokens_map.json": {"pad_token": "!"}}),
    # Newer checkpoint configs list the special tokens, with their own `normalized` flags.
    "added_tokens_decoder": (["vocab.json", "merges.txt"], {"tokenizer_config.json": {
        "added_tokens_decoder": {str(i): {"content": c, "normalized": True, "special": True}
                                 for i, c in ((812, "<|startoftext|>"), (813, "<|endoftext|>"))},
        "pad_token": "<|endoftext|>"}}),
}


@pytest.mark.parametrize("form", sorted(FOLDER_FORMS))
def test_ids_equal_transformers(tmp_path, form):
    files, extra_json = FOLDER_FORMS[form]
    folder = _folder(tmp_path, files, extra_json)
    reference = CLIPTokenizer.from_pretrained(folder)(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]
    ours = Tokenizer.from_folder(folder)
    assert (ours.vocab_size, ours.pad_id) == (FIXTURE_VOCAB_SIZE, 0 if form == "pad_exclamation" else 813)
    ids = ours(PROMPTS, context_length=77)
    mismatched = [prompt for prompt, row, expected in zip(PROMPTS, ids, reference) if (row != expected).any()]
    assert not mismatched, f"ids differ from CLIPTokenizer for {mismatched}"


def test_rows_are_bos_tokens_eos_then_padding():
    tok = Tokenizer.from_folder(FIXTURE)
    ids = tok(["a photo of a cat.", " ".join(["cat"] * 200), ""], context_length=16)
    assert ids.dtype == np.int32 and ids.shape == (3, 16)
    # EOT is the largest id, which CLIP's text pooling (argmax over ids) relies on.
    assert tok.eos_id == tok.vocab_size - 1 == FIXTURE_VOCAB_SIZE - 1
    assert tok.bos_id == tok.vocab_size - 2
    assert (ids[:, 0] == tok.bos_id).all()
    truncated = ids[1]
    assert truncated[-1] == tok.eos_id and (truncated[1:-1] == tok.encode("cat")[0]).all()
    assert ids[2].tolist() == [tok.bos_id, tok.eos_id] + [tok.pad_id] * 14
    assert (ids.argmax(axis=1) == [len(tok.encode("a photo of a cat.")) + 1, 15, 1]).all()


def test_single_string_and_bpe_pieces():
    tok = Tokenizer.from_folder(FIXTURE)
    assert tok("a photo", context_length=8).shape == (1, 8)
    # Learned merges make whole-word tokens; an unseen word falls back to smaller pieces.
    assert len(tok.encode("photo")) == 1
    assert len(tok.encode("qzxv")) == 4


def test_wrong_vocab_size_raises():
    with pytest.raises(ValueError, match=r"814 ids .*vocab_size=49408"):
        Tokenizer.from_folder(FIXTURE, vocab_size=49408)
    assert Tokenizer.from_folder(FIXTURE, vocab_size=FIXTURE_VOCAB_SIZE).vocab_size == FIXTURE_VOCAB_SIZE


def test_missing_files_raise_naming_the_folder(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer in .*empty"):
        Tokenizer.from_folder(tmp_path / "empty")
    only_vocab = _folder(tmp_path, ["vocab.json"])
    with pytest.raises(ValueError, match="merges.txt"):
        Tokenizer.from_folder(only_vocab)
    for name, files in (("tokenizer.json", ["tokenizer.json"]), ("merges.txt", ["vocab.json", "merges.txt"])):
        (tmp_path / name).mkdir()
        broken = _folder(tmp_path / name, files)
        with open(os.path.join(broken, name), "a", encoding="utf-8") as handle:
            handle.write("not json, no merge\n")
        with pytest.raises(ValueError, match=f"{name}' cannot be read"):
            Tokenizer.from_folder(broken)


def test_special_token_outside_the_vocabulary_raises(tmp_path):
    folder = _folder(tmp_path, ["tokenizer.json"], {"special_tokens_map.json": {"pad_token": "<pad>"}})
    with pytest.raises(ValueError, match=r"special tokens \['<pad>'\] are not in its vocabulary"):
        Tokenizer.from_folder(folder)


def test_pre_4_17_tokenizer_json_is_refused(tmp_path):
    with open(os.path.join(FIXTURE, "tokenizer.json"), encoding="utf-8") as handle:
        data = json.load(handle)
    # Before transformers 4.17, CLIP's tokenizer.json had a single ByteLevel pre-tokeniser.
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True}
    folder = _folder(tmp_path, [], {"tokenizer.json": data})
    with pytest.raises(ValueError, match="not CLIP's byte-level BPE pipeline"):
        Tokenizer.from_folder(folder)


def test_tokenizer_json_needs_no_transformers():
    """Only folders without tokenizer.json import transformers (for its converter)."""
    code = ("import sys; from jaxseg.clip.tokenizer import Tokenizer; "
            f"Tokenizer.from_folder({FIXTURE!r}); print('transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_bad_arguments_raise():
    tok = Tokenizer.from_folder(FIXTURE)
    with pytest.raises(ValueError, match="context_length"):
        tok(["a cat"], context_length=1)
    with pytest.raises(ValueError, match="strings"):
        tok([b"bytes"])


def test_copy_tokenizer_files(tmp_path):
    copied = copy_tokenizer_files(FIXTURE, str(tmp_path / "copy"))
    assert sorted(copied) == sorted(TOKENIZER_FILES)
    assert (Tokenizer.from_folder(tmp_path / "copy")(PROMPTS) == Tokenizer.from_folder(FIXTURE)(PROMPTS)).all()


def test_fixture_is_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_tiny_tokenizer", os.path.join(os.path.dirname(__file__), "fixtures", "make_tiny_tokenizer.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.write_fixture(str(tmp_path)) == FIXTURE_VOCAB_SIZE
    for name in ("vocab.json", "merges.txt", *CONFIG_FILES):
        assert (tmp_path / name).read_text() == open(os.path.join(FIXTURE, name), encoding="utf-8").read()
