"""Prompt-to-Prompt control as LOCATEdit runs it, plus recording of exactly the maps the CASA mask needs.

UNet batch layout (reference §A.5): rows [uncond-source, uncond-target, cond-source, cond-target]. Control acts on
the conditional half only (rows 2 and 3):
- self-attention injection: target <- source at layers up to the graph resolution, steps < self_steps;
- text cross-attention: target <- Refine(source) x equalizer for steps < cross_steps (Refine maps aligned tokens
  from the source, new tokens keep their own attention; the equalizer multiplies new target words, no renormalising);
- IP cross-attention injection: target <- source at layers up to the graph resolution, steps < ip_steps.
Recorded (conditional rows, mean over heads): self-attention at the graph resolution (summed over its layers) and
text cross-attention at the mask resolution (per layer). The maps are taken after the edits above, as the reference
does, or before them (``maps_after_p2p=False``) to study that choice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import CROSS, IP, SELF

SOURCE_ROW, TARGET_ROW = 2, 3


class BlendWordError(ValueError):
    """A blend word that appears in neither prompt (nothing to build a mask from)."""


def word_token_indices(tokenizer, prompt: str, word: str) -> list[int]:
    """Token positions (BOS = 0) of every occurrence of ``word`` in ``prompt``, split on single spaces like the
    reference; a word that tokenizes into several pieces contributes all of them."""
    positions, cursor = [], 1
    for piece in prompt.split(" "):
        if not piece:
            continue
        n = len(tokenizer.encode(piece, add_special_tokens=False))
        if piece == word:
            positions += list(range(cursor, cursor + n))
        cursor += n
    return [p for p in positions if p < tokenizer.model_max_length - 1]


def new_word_indices(tokenizer, source: str, target: str) -> list[int]:
    """Token positions of target words that do not occur in the source (they get the x15 equalizer)."""
    source_words = set(source.split(" "))
    indices: list[int] = []
    for word in dict.fromkeys(target.split(" ")):
        if word and word not in source_words:
            indices += word_token_indices(tokenizer, target, word)
    return sorted(indices)


def refinement_mapper(tokenizer, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """For each target token position, the source position it copies attention from, and whether it copies at all.

    Alignment is the longest common subsequence of token ids (a global alignment with match +1, mismatch -1 and
    gap 0 never prefers a substitution, so only identical tokens align). Positions past the target's end (padding)
    copy the same position of the source.
    """
    length = tokenizer.model_max_length
    src = tokenizer.encode(source)[:length]
    tgt = tokenizer.encode(target)[:length]
    n, m = len(src), len(tgt)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = table[i + 1][j + 1] + 1 if src[i] == tgt[j] else max(table[i + 1][j], table[i][j + 1])
    mapper = torch.arange(length)
    alphas = torch.ones(length)
    mapper[:m] = 0
    alphas[:m] = 0
    i = j = 0
    while i < n and j < m:
        if src[i] == tgt[j]:
            mapper[j], alphas[j] = i, 1.0
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return mapper, alphas


@dataclass
class ControlConfig:
    steps: int = 50
    self_replace: float = 0.6  # self-attention injection for steps < int(0.6 * steps)
    cross_replace: float = 0.4  # Refine + equalizer for steps < int(0.4 * (steps + 1)) (the alpha table has 51 rows)
    ip_replace: float = 0.1  # IP-attention injection for steps < int(0.1 * steps)
    equalizer: float = 15.0
    maps_after_p2p: bool = True

    @property
    def self_steps(self) -> int:
        return int(self.self_replace * self.steps)

    @property
    def cross_steps(self) -> int:
        return int(self.cross_replace * (self.steps + 1))

    @property
    def ip_steps(self) -> int:
        return int(self.ip_replace * self.steps)


@dataclass
class StepMaps:
    """What one UNet pass recorded (conditional rows only)."""

    self_attention: torch.Tensor | None = None  # (2, N, N) mean over graph-resolution layers and heads
    self_layers: int = 0
    cross: list[torch.Tensor] = field(default_factory=list)  # per mask-resolution layer: (2, Q, T) mean over heads


class LocatEditController:
    """P2P control and map recording for one edit; passed per call as ``cross_attention_kwargs["controller"]``."""

    def __init__(
        self,
        resolutions: dict[str, int],
        graph_resolution: int,
        mask_resolution: int,
        mapper: torch.Tensor,
        alphas: torch.Tensor,
        equalizer: torch.Tensor,
        config: ControlConfig,
        record_tokens: int,
    ):
        self.resolutions = resolutions
        self.graph_res, self.mask_res = graph_resolution, mask_resolution
        self.mapper, self.alphas, self.equalizer = mapper, alphas, equalizer
        self.config = config
        self.record_tokens = record_tokens
        self.step = 0
        self.maps = StepMaps()

    def begin_step(self, step: int) -> None:
        self.step, self.maps = step, StepMaps()

    def wants(self, layer: str, kind: str, query_len: int) -> bool:
        res, c = self.resolutions[layer], self.config
        if kind == SELF:
            return res == self.graph_res or (res <= self.graph_res and self.step < c.self_steps)
        if kind == CROSS:
            return res == self.mask_res or self.step < c.cross_steps
        if kind == IP:
            return res <= self.graph_res and self.step < c.ip_steps
        return False

    def __call__(self, layer: str, kind: str, probs: torch.Tensor) -> torch.Tensor:
        res, c = self.resolutions[layer], self.config
        if probs.shape[0] != 4:
            raise ValueError(f"LOCATEdit's controller expects a UNet batch of 4 (2 branches x CFG), got {probs.shape[0]}")
        record = (kind == SELF and res == self.graph_res) or (kind == CROSS and res == self.mask_res)
        if record and not c.maps_after_p2p:
            self._record(kind, probs)
        if kind == SELF and res <= self.graph_res and self.step < c.self_steps:
            probs[TARGET_ROW] = probs[SOURCE_ROW]
        elif kind == CROSS and self.step < c.cross_steps:
            source = probs[SOURCE_ROW]
            mapper = self.mapper[: probs.shape[-1]].to(probs.device)
            alphas = self.alphas[: probs.shape[-1]].to(probs.device, probs.dtype)
            refined = source[..., mapper] * alphas + probs[TARGET_ROW] * (1 - alphas)
            probs[TARGET_ROW] = refined * self.equalizer[: probs.shape[-1]].to(probs.device, probs.dtype)
        elif kind == IP and res <= self.graph_res and self.step < c.ip_steps:
            probs[TARGET_ROW] = probs[SOURCE_ROW]
        if record and c.maps_after_p2p:
            self._record(kind, probs)
        return probs

    def _record(self, kind: str, probs: torch.Tensor) -> None:
        cond = probs[SOURCE_ROW : TARGET_ROW + 1].mean(dim=1).float()
        if kind == SELF:
            m = self.maps
            m.self_attention = cond if m.self_attention is None else m.self_attention + cond
            m.self_layers += 1
        else:
            self.maps.cross.append(cond[..., : self.record_tokens])
