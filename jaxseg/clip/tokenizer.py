"""CLIP's byte-level BPE tokenizer, read from a checkpoint folder's files.

Gives the same ids as transformers' ``CLIPTokenizer`` (5.x) on the same folder
called with ``padding="max_length", truncation=True``, in pure Python so that
encoding needs neither ``tokenizers`` nor ``transformers``:

1. special tokens (``<|startoftext|>``, ``<|endoftext|>``, the pad token, ...)
   are cut out of the text first; those the folder marks ``normalized`` are
   matched after normalisation, the others before;
2. normalisation: Unicode NFC, every whitespace run becomes one space, then
   lower-casing one character at a time (so no Greek final-sigma rule, as in
   ``tokenizers``' ``Lowercase``);
3. pre-tokenisation with CLIP's regex (words, single digits, punctuation runs;
   whitespace dropped), each piece as UTF-8 bytes mapped to printable characters;
4. BPE on each piece with ``</w>`` glued to its last character.

``CLIPTokenizer`` 5.x always uses these normalisation and pre-tokenisation
rules (it rebuilds them in its constructor and takes only the vocabulary, the
merges and the special tokens from the files), so ``ftfy`` is never involved.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import unicodedata
from collections.abc import Sequence

import numpy as np
import regex

# The files a CLIP checkpoint folder may hold for its tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")

END_OF_WORD = "</w>"
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# CLIPTokenizer's defaults when the folder names no special token.
_DEFAULT_SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                           "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
_CLIP_PIECES = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
# tokenizers' ByteLevel step splits each CLIP piece again with GPT-2's regex (its whitespace
# branches dropped: pieces hold none). Only the special-token spellings split further:
# "<|endoftext|>" -> "<|", "endoftext", "|>".
_GPT2_PIECES = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+""")
_WHITESPACE_RUN = regex.compile(r"\s+")


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the rest (controls, space, ...)
    map to code points from 256 upwards in byte order. The dict's order is the
    order of the 256 base symbols in CLIP's vocabulary.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    next_code_point = 256
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(next_code_point)
            next_code_point += 1
    return mapping


def normalize(text: str) -> str:
    """CLIPTokenizer's normaliser: NFC, whitespace runs to one space, per-character lowercase."""
    text = _WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFC", text))
    return "".join(char.lower() for char in text)


def pretokenize(normalized_text: str) -> list[str]:
    """Splits normalised text into CLIP's pieces, each spelled in byte-level characters."""
    table = byte_to_unicode()
    return ["".join(table[byte] for byte in piece.encode("utf-8"))
            for clip_piece in _CLIP_PIECES.findall(normalized_text)
            for piece in _GPT2_PIECES.findall(clip_piece)]


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


class Tokenizer:
    """CLIP BPE tokenizer: ``tok(texts, context_length)`` -> int32 ids ``[N, context_length]``.

    Attributes:
      vocab_size: number of ids (largest id + 1), the text model's embedding rows.
      bos_id, eos_id, pad_id, unk_id: ids of the special tokens.
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], special_tokens: dict[str, str],
                 cut_out: dict[str, bool] | None = None, source: str = "<in memory>"):
        """Builds a tokenizer from its parts; most callers want ``Tokenizer.from_folder``.

        Args:
          vocab: token (byte-level spelling, ``</w>`` suffixed) -> id, special tokens included.
          merges: BPE merges, highest priority first.
          special_tokens: ``bos_token``/``eos_token``/``unk_token``/``pad_token`` -> content.
          cut_out: token content -> whether it is matched after normalisation, for every
            token taken whole from the text (the special tokens default to before).
          source: where the files came from, for error messages.
        """
        cut_out = {**dict.fromkeys(special_tokens.values(), False), **(cut_out or {})}
        missing = sorted(cut_out.keys() - vocab.keys())
        if missing:
            raise ValueError(f"tokenizer in {source}: special tokens {missing} are not in its "
                             "vocabulary; use a complete CLIP tokenizer folder")
        self._vocab = dict(vocab)
        self._merge_rank = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.vocab_size = max(self._vocab.values()) + 1
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = (
            self._vocab[special_tokens[key]] for key in _SPECIAL_TOKEN_KEYS)
        self._special_matchers = tuple(
            self._matcher([content for content, flag in cut_out.items() if flag == normalized])
            for normalized in (False, True))
        # Bound cache: prompts reuse few words, but a long-running process should not grow forever.
        self._bpe_ids = functools.lru_cache(maxsize=1 << 16)(self._bpe_ids_uncached)

    @staticmethod
    def _matcher(contents: list[str]) -> regex.Pattern | None:
        contents = sorted(contents, key=lambda content: (-len(content), content))  # longest match wins
        return regex.compile("(" + "|".join(map(regex.escape, contents)) + ")") if contents else None

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
        file = functools.partial(os.path.join, folder)
        if os.path.isfile(file("tokenizer.json")):
            vocab, merges, listed = cls._read_tokenizer_json(file("tokenizer.json"))
        elif os.path.isfile(file("vocab.json")) and os.path.isfile(file("merges.txt")):
            vocab, merges, listed = _read_json(file("vocab.json")), cls._read_merges(file("merges.txt")), {}
        else:
            raise ValueError(f"no tokenizer in {folder!r}: expected tokenizer.json or vocab.json + "
                             "merges.txt; point at a local CLIP checkpoint folder that has them")
        config = _read_json(file("tokenizer_config.json")) if os.path.isfile(file("tokenizer_config.json")) else {}
        settings = {**_DEFAULT_SPECIAL_TOKENS, **{k: config[k] for k in _SPECIAL_TOKEN_KEYS if config.get(k)}}
        if "added_tokens_decoder" not in config and os.path.isfile(file("special_tokens_map.json")):
            token_map = _read_json(file("special_tokens_map.json"))
            settings.update({k: token_map[k] for k in _SPECIAL_TOKEN_KEYS if token_map.get(k)})
        listed.update({token["content"]: bool(token.get("normalized", False))
                       for token in config.get("added_tokens_decoder", {}).values()})
        special_tokens, cut_out = {}, {}
        for key, value in settings.items():
            spec = _token_spec(value)
            if spec is None:
                raise ValueError(f"{key} in {folder!r} is {value!r}; expected a string or "
                                 "{'content': ...}; fix the tokenizer files")
            special_tokens[key] = spec[0]
            # As in transformers: when several keys share a token, the last one's flag holds.
            cut_out[spec[0]] = spec[1]
        cut_out.update(listed)  # tokens listed with their own flags take precedence
        tokenizer = cls(vocab, merges, special_tokens, cut_out, source=repr(folder))
        if vocab_size is not None and tokenizer.vocab_size != vocab_size:
            raise ValueError(
                f"tokenizer in {folder!r} has {tokenizer.vocab_size} ids but the text model expects "
                f"vocab_size={vocab_size}; use the tokenizer files that ship with the checkpoint")
        return tokenizer

    @staticmethod
    def _read_tokenizer_json(path: str) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, bool]]:
        data = _read_json(path)
        model = data.get("model") or {}
        if model.get("type", "BPE") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise ValueError(f"{path!r} does not hold a BPE model with a vocabulary; "
                             "use a CLIP tokenizer.json")
        vocab = dict(model["vocab"])
        merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge)
                  for merge in model.get("merges", [])]
        listed = {}
        for token in data.get("added_tokens", []):
            vocab.setdefault(token["content"], token["id"])
            listed[token["content"]] = bool(token.get("normalized", False))
        return vocab, merges, listed

    @staticmethod
    def _read_merges(path: str) -> list[tuple[str, str]]:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        # Same rule as transformers: skip the "#version" header and blank lines.
        return [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]

    def _bpe_ids_uncached(self, piece: str) -> tuple[int, ...]:
        """BPE of one byte-level piece: always merges the best-ranked adjacent pair, leftmost first."""
        symbols = [*piece[:-1], piece[-1] + END_OF_WORD]
        rank_of = self._merge_rank.get
        while len(symbols) > 1:
            pair = min(zip(symbols, symbols[1:]), key=lambda pair: rank_of(pair, math.inf))
            if pair not in self._merge_rank:
                break
            merged, index = [], 0
            while index < len(symbols):
                if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
                    merged.append(pair[0] + pair[1])
                    index += 2
                else:
                    merged.append(symbols[index])
                    index += 1
            symbols = merged
        return tuple(self._vocab.get(symbol, self.unk_id) for symbol in symbols)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS/EOS, padding or truncation."""
        raw_matcher, normalized_matcher = self._special_matchers
        ids = []
        for raw_index, raw_part in enumerate(raw_matcher.split(text) if raw_matcher else [text]):
            if raw_index % 2:  # odd parts of a capturing split are the separators
                ids.append(self._vocab[raw_part])
                continue
            normalized = normalize(raw_part)
            parts = normalized_matcher.split(normalized) if normalized_matcher else [normalized]
            for index, part in enumerate(parts):
                if index % 2:
                    ids.append(self._vocab[part])
                else:
                    ids.extend(token for piece in pretokenize(part) for token in self._bpe_ids(piece))
        return ids

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
        rows = np.full((len(texts), context_length), self.pad_id, np.int32)
        for row, text in zip(rows, texts):
            if not isinstance(text, str):
                raise ValueError(f"prompts must be strings, got {type(text).__name__}: {text!r}")
            ids = [self.bos_id, *self.encode(text)[:context_length - 2], self.eos_id]
            row[:len(ids)] = ids
        return rows
