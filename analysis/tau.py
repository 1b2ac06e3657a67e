"""τ pruning sensitivity: re-run a run's edit with the share of the CLIP text offset kept swept from 0 % to 100 %.

Each τ is a full edit (on the embedded model a few seconds), cached per (run, τ) under ``<run>/cache/tau/`` so a
page redraw never recomputes. For each τ: the change inside the edit region, the change outside it, and the
CLIP-space change of the edited image; the smallest τ whose edit-region change exceeds the τ = 0 edit by
``visible`` (in [0, 1] pixel units) is the point where the offset starts to matter.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from locatedit.embeddings import image_features, text_features
from locatedit.pipeline import EditParams, locatedit_edit

DEFAULT_KEEPS = (0.0, 10.0, 25.0, 50.0, 75.0, 91.0935948657488, 100.0)
VISIBLE = 0.05


def _cache_path(run, keep: float) -> Path:
    return run.path / "cache" / "tau" / f"{keep:.4f}.npz"


def edit_at(model, run, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """(edited image uint8, final target mask) of the run's edit with keep_percent = keep; cached on disk."""
    path = _cache_path(run, keep)
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            return data["edited"], data["mask"]
    params = EditParams(**{**run.params, "keep_percent": keep, "use_offset": True})
    blend = tuple(run.meta["blend_words"]) if run.meta["blend_words"] else None
    result = locatedit_edit(model, run.image("source"), run.meta["source_prompt"], run.meta["target_prompt"], blend,
                            params)
    edited, mask = np.asarray(result.edited), result.arrays["mask"][-1, 1]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, edited=edited, mask=mask)
    tmp.replace(path)
    return edited, mask


@torch.no_grad()
def _clip_embed(model, images: list[np.ndarray]) -> torch.Tensor:
    from PIL import Image

    pixels = model.pipe.feature_extractor(images=[Image.fromarray(i) for i in images], return_tensors="pt").pixel_values
    return torch.nn.functional.normalize(image_features(model.clip, pixels.to(model.device).float()), dim=-1)


def tau_sweep(model, run, keeps=DEFAULT_KEEPS, progress: Callable[[int, int], None] | None = None,
              region: np.ndarray | None = None, visible: float = VISIBLE) -> tuple[pd.DataFrame, float | None]:
    """A table with one row per τ, and the smallest τ that gives a visible edit (None if none does)."""
    source = np.asarray(run.image("source"))
    size = source.shape[0]
    region = region if region is not None else run.gt_mask()
    results = []
    for i, keep in enumerate(keeps):
        results.append(edit_at(model, run, keep))
        if progress:
            progress(i + 1, len(keeps))
    if region is None:  # no ground truth: the union of the masks the sweep produced
        factor = size // results[0][1].shape[0]
        region = np.kron(np.logical_or.reduce([m for _, m in results]), np.ones((factor, factor))).astype(bool)
    outside = ~ndimage.binary_dilation(region, iterations=max(1, size // 32))
    src = source.astype(np.float64) / 255
    embeds = _clip_embed(model, [source] + [e for e, _ in results])
    text = torch.nn.functional.normalize(
        text_features(model.clip, model.clip_tokenizer, [run.meta["source_prompt"], run.meta["target_prompt"]]), dim=-1)
    rows = []
    for k, (keep, (edited, mask)) in enumerate(zip(keeps, results)):
        e = edited.astype(np.float64) / 255
        rows.append({
            "keep_percent": keep,
            "edit_region_change": float(np.abs(e - src)[region].mean()),
            "background_change": float(np.abs(e - src)[outside].mean()) if outside.any() else 0.0,
            "clip_change": float(1 - embeds[0] @ embeds[k + 1]),
            "clip_direction": float(embeds[k + 1] @ text[1] - embeds[k + 1] @ text[0]),
            "mask_area": float(mask.mean()),
        })
    table = pd.DataFrame(rows)
    baseline = table.edit_region_change.iloc[0] if keeps[0] == 0 else 0.0
    visible_rows = table[table.edit_region_change - baseline >= visible]
    threshold = float(visible_rows.keep_percent.min()) if len(visible_rows) else None
    return table, threshold
