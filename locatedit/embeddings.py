"""CLIP features for IP-Adapter guidance, and LOCATEdit's pruned text offset (H_tau).

v_edit = v + H_tau(t~_target - t~_source), where t~ are the CLIP text features rescaled to the image feature's norm
and H_tau keeps the ``keep_percent`` % largest-magnitude coordinates of the offset (reference: 91.09 %).
"""
from __future__ import annotations

import numpy as np
import torch


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output (projected features in ``pooler_output``); 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def image_features(clip, pixel_values: torch.Tensor) -> torch.Tensor:
    return _features(clip.get_image_features(pixel_values=pixel_values))


@torch.no_grad()
def text_features(clip, tokenizer, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
    return _features(clip.get_text_features(input_ids=ids.to(clip.device)))


def prune_offset(offset: torch.Tensor, keep_percent: float) -> torch.Tensor:
    """H_tau: zero all but the ``keep_percent`` % largest-magnitude coordinates (the reference's percentile rule)."""
    if not 0.0 <= keep_percent <= 100.0:
        raise ValueError(f"keep_percent must lie in [0, 100], got {keep_percent}")
    if keep_percent == 0.0:
        return torch.zeros_like(offset)
    magnitude = offset.abs().detach().cpu().double().numpy()
    threshold = np.percentile(magnitude, 100.0 - keep_percent)
    return torch.where(offset.abs() >= float(threshold), offset, torch.zeros_like(offset))
