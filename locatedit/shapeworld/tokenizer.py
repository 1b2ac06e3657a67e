"""A real ``CLIPTokenizer`` for ShapeWorld, built offline, in which every word of the world is exactly one token.

Stable Diffusion's pipeline and LOCATEdit's token lookup both expect a CLIP BPE tokenizer; a hub download is not
possible here, so the vocabulary and merges are generated. Merges are derived by simulating BPE with the merges made
so far and appending the ones that join the remaining segments, so a later word can never split an earlier one
(naively written merges let ``triangle``'s ``t r`` break ``striped`` into ``s|tri|p|e|d``).
"""
from __future__ import annotations

import string
from collections.abc import Iterable

from transformers import CLIPTokenizer

from .world import VOCABULARY

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 24  # the longest caption has 17 words; SD uses 77, which only costs compute here


class UnknownWordError(ValueError):
    """A prompt word the ShapeWorld model was never trained on."""


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def build_vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    chars = list(string.ascii_lowercase + string.digits)
    tokens = [BOS, EOS] + chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            symbols = [symbols[0] + symbols[1]] + symbols[2:]
            if symbols[0] not in tokens:
                tokens.append(symbols[0])
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_tokenizer(words: Iterable[str] = VOCABULARY) -> CLIPTokenizer:
    vocab, merges = build_vocab_and_merges(words)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MAX_LENGTH,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
    )


def check_prompt(prompt: str, vocabulary: Iterable[str] = VOCABULARY) -> list[str]:
    """Split a prompt into words and fail clearly on any the model does not know."""
    known = set(vocabulary)
    words = prompt.lower().split()
    unknown = [w for w in words if w not in known]
    if unknown:
        raise UnknownWordError(
            f"ShapeWorld does not know the word(s) {unknown} in '{prompt}'. "
            f"Its vocabulary is: {', '.join(sorted(known))}. "
            "Captions read like 'a red circle and a blue striped star on a green dotted background'."
        )
    return words
