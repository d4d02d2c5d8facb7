"""CLIP's tokenizer: Hugging Face ``tokenizers`` (Rust) built from a checkpoint folder.

Gives the same ids as transformers' ``CLIPTokenizer`` (5.x) on the same folder
called with ``padding="max_length", truncation=True``:

- ``tokenizer.json`` is loaded as it is by ``tokenizers`` (the library transformers'
  fast tokenizers run on): byte-level BPE with CLIP's normaliser (NFC, whitespace
  runs to one space, lower case) and pre-tokeniser, the pipeline ``CLIPTokenizer``
  rebuilds from the file's vocabulary and merges; the layout written before
  transformers 4.17 is refused, as transformers refuses it;
- a folder with only ``vocab.json`` + ``merges.txt`` is turned into the same
  pipeline by transformers' ``CLIPConverter`` (transformers is imported only then);
- the special tokens the folder's ``tokenizer_config.json`` / ``special_tokens_map.json``
  name (CLIP's defaults otherwise) are added as transformers adds them, each with its
  ``normalized`` flag (whether it is matched before or after normalisation).

BOS, EOS, padding and the 77-token fitting rule are applied here, not by the
file's post-processor, so every folder gets the same rows.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import types
from collections.abc import Sequence

import numpy as np
import tokenizers

# The files a CLIP checkpoint folder may hold for its tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# CLIPTokenizer's defaults when the folder names no special token.
_DEFAULT_SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                           "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


def copy_tokenizer_files(source_folder: str, target_folder: str) -> list[str]:
    """Copies whichever of ``TOKENIZER_FILES`` exist in ``source_folder``; returns their names."""
    copied = [name for name in TOKENIZER_FILES
              if os.path.isfile(os.path.join(source_folder, name))]
    os.makedirs(target_folder, exist_ok=True)
    for name in copied:
        shutil.copyfile(os.path.join(source_folder, name), os.path.join(target_folder, name))
    return copied


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _token_spec(value) -> tuple[str, bool] | None:
    """(content, normalized) of a special-token entry, which is a string or an AddedToken dict."""
    if isinstance(value, str):
        return value, False
    if isinstance(value, dict) and "content" in value:
        return value["content"], bool(value.get("normalized", False))
    return None


def _read(reader, *paths: str):
    """Calls a ``tokenizers`` file reader, turning its errors (plain ``Exception``) into ``ValueError``."""
    try:
        return reader(*paths)
    except Exception as error:  # noqa: BLE001 - the Rust readers raise nothing narrower.
        raise ValueError(f"{' and '.join(map(repr, paths))} cannot be read ({error}); use the "
                         "CLIP checkpoint's tokenizer files") from None


def _backend_from_files(folder: str) -> tokenizers.Tokenizer:
    """The BPE pipeline without special tokens beyond those ``tokenizer.json`` lists."""
    file = functools.partial(os.path.join, folder)
    if os.path.isfile(file("tokenizer.json")):
        backend = _read(tokenizers.Tokenizer.from_file, file("tokenizer.json"))
        # transformers (>= 4.17) refuses the older CLIP tokenizer.json layout the same way.
        if not isinstance(backend.model, tokenizers.models.BPE) or not isinstance(
                backend.pre_tokenizer, tokenizers.pre_tokenizers.Sequence):
            raise ValueError(f"{file('tokenizer.json')!r} is not CLIP's byte-level BPE pipeline "
                             "(written before transformers 4.17?); delete it to use vocab.json + "
                             "merges.txt, or save the tokenizer again with transformers")
        return backend
    if os.path.isfile(file("vocab.json")) and os.path.isfile(file("merges.txt")):
        return _convert(*_read(tokenizers.models.BPE.read_file, file("vocab.json"), file("merges.txt")))
    raise ValueError(f"no tokenizer in {folder!r}: expected tokenizer.json or vocab.json + "
                     "merges.txt; point at a local CLIP checkpoint folder that has them")


def _convert(vocab: dict[str, int], merges: list[tuple[str, str]]) -> tokenizers.Tokenizer:
    """transformers' ``CLIPConverter`` on a vocabulary and merges (no slow tokenizer needed).

    Args:
      vocab: token (byte-level spelling, ``</w>`` suffixed) -> id.
      merges: BPE merges, highest priority first.
    """
    # Imported here: transformers takes about a second to import and only this path needs it.
    from transformers.convert_slow_tokenizer import CLIPConverter

    bos, eos = _DEFAULT_SPECIAL_TOKENS["bos_token"], _DEFAULT_SPECIAL_TOKENS["eos_token"]
    # What the converter reads of a slow CLIPTokenizer; its post-processor is not used here.
    source = types.SimpleNamespace(encoder=vocab, bpe_ranks=dict.fromkeys(merges),
                                   unk_token=_DEFAULT_SPECIAL_TOKENS["unk_token"],
                                   bos_token=bos, bos_token_id=vocab.get(bos, 0),
                                   eos_token=eos, eos_token_id=vocab.get(eos, 0))
    return CLIPConverter(source).converted()


def _special_tokens(folder: str) -> tuple[dict[str, str], dict[str, bool], dict[str, bool]]:
    """Special tokens as transformers reads them from the folder's configuration files.

    Returns:
      ``(special, flags, listed)``: ``bos_token``/... -> content; content -> ``normalized``
      for the named tokens (when several keys share a token, the last one's flag holds);
      content -> ``normalized`` for the tokens ``added_tokens_decoder`` lists, whose
      flags take precedence.
    """
    file = functools.partial(os.path.join, folder)
    config = _read_json(file("tokenizer_config.json")) if os.path.isfile(file("tokenizer_config.json")) else {}
    settings = {**_DEFAULT_SPECIAL_TOKENS, **{k: config[k] for k in _SPECIAL_TOKEN_KEYS if config.get(k)}}
    if "added_tokens_decoder" not in config and os.path.isfile(file("special_tokens_map.json")):
        token_map = _read_json(file("special_tokens_map.json"))
        settings.update({k: token_map[k] for k in _SPECIAL_TOKEN_KEYS if token_map.get(k)})
    special, flags = {}, {}
    for key, value in settings.items():
        spec = _token_spec(value)
        if spec is None:
            raise ValueError(f"{key} in {folder!r} is {value!r}; expected a string or "
                             "{'content': ...}; fix the tokenizer files")
        special[key], flags[spec[0]] = spec
    listed = {token["content"]: bool(token.get("normalized", False))
              for token in config.get("added_tokens_decoder", {}).values()}
    return special, flags, listed


class Tokenizer:
    """CLIP BPE tokenizer: ``tok(texts, context_length)`` -> int32 ids ``[N, context_length]``.

    Attributes:
      vocab_size: number of ids (largest id + 1), the text model's embedding rows.
      bos_id, eos_id, pad_id, unk_id: ids of the special tokens.
    """

    def __init__(self, backend: tokenizers.Tokenizer, special_tokens: dict[str, str]):
        """Wraps a ``tokenizers.Tokenizer``; most callers want ``Tokenizer.from_folder``.

        Args:
          backend: the BPE pipeline with its special tokens added; its own padding and
            truncation settings are switched off.
          special_tokens: ``bos_token``/``eos_token``/``unk_token``/``pad_token`` -> content.
        """
        backend.no_padding()
        backend.no_truncation()
        self._backend = backend
        self.vocab_size = max(backend.get_vocab(with_added_tokens=True).values()) + 1
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = (
            backend.token_to_id(special_tokens[key]) for key in _SPECIAL_TOKEN_KEYS)

    @classmethod
    def from_folder(cls, path: str | os.PathLike, vocab_size: int | None = None) -> "Tokenizer":
        """Reads ``tokenizer.json`` (preferred, as transformers does) or ``vocab.json`` + ``merges.txt``.

        Special tokens come from ``tokenizer_config.json``, then ``special_tokens_map.json``
        (unless the config lists ``added_tokens_decoder``), else CLIP's defaults
        (pad = ``<|endoftext|>``).

        Args:
          path: checkpoint or tokenizer folder.
          vocab_size: if given, the text model's vocabulary size the tokenizer must match.

        Raises:
          ValueError: files missing or unreadable, or ``vocab_size`` disagreeing.
        """
        folder = os.fspath(path)
        backend = _backend_from_files(folder)
        special, flags, listed = _special_tokens(folder)
        missing = sorted(token for token in {*flags, *listed} if backend.token_to_id(token) is None)
        if missing:
            raise ValueError(f"tokenizer in {folder!r}: special tokens {missing} are not in its "
                             "vocabulary; use a complete CLIP tokenizer folder")
        in_file = {str(token) for token in backend.get_added_tokens_decoder().values()}
        new = {**{token: flag for token, flag in flags.items() if token not in in_file}, **listed}
        backend.add_special_tokens([tokenizers.AddedToken(token, normalized=flag, special=True)
                                    for token, flag in new.items()])
        tokenizer = cls(backend, special)
        if vocab_size is not None and tokenizer.vocab_size != vocab_size:
            raise ValueError(
                f"tokenizer in {folder!r} has {tokenizer.vocab_size} ids but the text model expects "
                f"vocab_size={vocab_size}; use the tokenizer files that ship with the checkpoint")
        return tokenizer

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS/EOS, padding or truncation."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def __call__(self, texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
        """Tokenizes prompts to fixed-length rows.

        Each row is ``[BOS, tokens..., EOS, PAD...]``; prompts longer than
        ``context_length - 2`` tokens keep their first ``context_length - 2``
        tokens and still end in EOS.

        Args:
          texts: prompts (a single string counts as one prompt).
          context_length: row length (CLIP: 77).

        Returns:
          int32 ``[N, context_length]`` token ids.
        """
        if context_length < 2:
            raise ValueError(f"context_length={context_length} leaves no room for BOS and EOS; use >= 2")
        texts = [texts] if isinstance(texts, str) else list(texts)
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"prompts must be strings, got {type(text).__name__}: {text!r}")
        rows = np.full((len(texts), context_length), self.pad_id, np.int32)
        for row, encoding in zip(rows, self._backend.encode_batch(texts, add_special_tokens=False)):
            ids = [self.bos_id, *encoding.ids[:context_length - 2], self.eos_id]
            row[:len(ids)] = ids
        return rows
