"""A word-level CLIP tokenizer for the toy world, written locally (no hub).

CLIP's tokenizer is byte-pair encoding: a word starts as characters (the last one carrying ``</w>``)
and merges from ``merges.txt`` join them. We write, for every vocabulary word, the chain of merges that
builds it left to right, so each vocabulary word becomes exactly one token; letters stay in the
vocabulary so any other word still tokenizes (letter by letter). Merge order is searched so that no
word's chain is broken by another word's merge; :func:`write_tokenizer_files` verifies the result.
"""

from __future__ import annotations

import json
import os
import random
import string
from pathlib import Path

from ..durable import write_atomic
from .render import COLORS, SHAPES

MAX_LENGTH = 16
"""Tokenizer ``model_max_length`` = text encoder ``max_position_embeddings`` = padded prompt length used
in training. The longest caption ("a red triangle on a blue background") is 9 tokens with BOS/EOS."""

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
RARE_TOKEN = "sks"
"""Rare identifier for DreamBooth subjects: in the vocabulary, never seen in pretraining."""

WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["a", "an", "on", "background", "shape", "the", "of", "with", "and", "toy", "object", "photo"]
        + list(COLORS)
        + list(SHAPES)
        + [RARE_TOKEN]
    )
)


def _merge_chain(word: str) -> list[tuple[str, str]]:
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    chain, left = [], pieces[0]
    for right in pieces[1:]:
        chain.append((left, right))
        left = left + right
    return chain


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE as CLIP applies it (lowest-ranked adjacent pair first)."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def build_vocab_and_merges(words: tuple[str, ...] = WORDS, seed: int = 0) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) with every word in ``words`` a single token."""
    order = sorted(words, key=len, reverse=True)
    rng = random.Random(seed)
    for _ in range(1000):
        merges: list[tuple[str, str]] = []
        for w in order:
            for pair in _merge_chain(w):
                if pair not in merges:
                    merges.append(pair)
        ranks = {p: i for i, p in enumerate(merges)}
        if all(len(_bpe(w, ranks)) == 1 for w in words):
            break
        rng.shuffle(order)
    else:  # pragma: no cover - the word list is fixed and known to work
        raise RuntimeError("could not order merges so that every word is one token")
    tokens = [BOS, EOS]
    tokens += [c for c in string.ascii_lowercase] + [c + "</w>" for c in string.ascii_lowercase]
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return vocab, [f"{a} {b}" for a, b in merges]


def write_tokenizer_files(directory: str | os.PathLike) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json into ``directory``; return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges()
    write_atomic(directory / "vocab.json", json.dumps(vocab, indent=0, ensure_ascii=False))
    write_atomic(directory / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    write_atomic(directory / "tokenizer_config.json", json.dumps(config, indent=2))
    return directory


def load_tokenizer(directory: str | os.PathLike):
    """CLIPTokenizer from files written by :func:`write_tokenizer_files` (or a saved pipeline)."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(directory))
    if tok.model_max_length != MAX_LENGTH:
        raise ValueError(f"{directory}: model_max_length {tok.model_max_length} != {MAX_LENGTH}")
    return tok


def vocab_size() -> int:
    return len(build_vocab_and_merges()[0])
