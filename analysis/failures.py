"""Failure signatures, detected automatically from a saved run, each a measurable score with a threshold.

- over-smoothing: the final mask is much smaller than the cross-attention's own support, or the edit vanished
  (the edited image barely differs from the reconstruction inside the mask);
- background drift: the edited image changes outside the (dilated) mask;
- structure loss: the edges inside the mask no longer follow the source's edges;
- target-word spill: much of the final mask comes from the target word's map alone (the union of source- and
  target-word masks keeps it), e.g. "white square" lighting a white triangle beside the black square being edited.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .metrics import resize_mask

THRESHOLDS = {
    "mask_to_support": 0.35,  # over-smoothing: mask area / attention support area below this
    "edit_strength": 0.03,  # over-smoothing: mean |edited - reconstruction| inside the mask below this
    "background_change": 0.04,  # background drift: mean |edited - source| outside the dilated mask above this
    "structure_change": 0.5,  # structure loss: 1 - corr(edge maps of source and edited) inside the mask above this
    "target_only_share": 0.3,  # target-word spill: share of the final mask outside the source word's mask above this
}


def _unit(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def _edges(gray: np.ndarray) -> np.ndarray:
    return np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))


def signatures(run, thresholds: dict[str, float] | None = None) -> dict[str, float | bool]:
    t = {**THRESHOLDS, **(thresholds or {})}
    source, recon, edited = (_unit(run.image(n)) for n in ("source", "reconstruction", "edited"))
    size = source.shape[0]
    masks = run.arrays["mask"]
    final = masks[-1, 1]
    out: dict[str, float | bool] = {}
    if not final.any():
        return {"no_mask": True, "over_smoothing": False, "background_drift": False, "structure_loss": False,
                "target_word_spill": False}
    # Mean cross-attention over the steps that solved for a mask; P2P LocalBlend never solves, so over every step.
    steps = run.solve_steps if len(run.solve_steps) else slice(None)
    m0 = run.arrays["m0"][steps].mean(0)
    side = int(round(np.sqrt(m0.shape[-1])))
    span = np.ptp(m0, axis=-1, keepdims=True)
    norm = np.where(span > 0, (m0 - m0.min(-1, keepdims=True)) / np.where(span > 0, span, 1), 0)
    support = ((norm[0] > 0.5) | (norm[1] > 0.5)).reshape(side, side)
    mask_img = resize_mask(final, size)
    out["mask_to_support"] = float(resize_mask(final, side).mean() / max(support.mean(), 1e-9))
    out["edit_strength"] = float(np.abs(edited - recon)[mask_img].mean())
    out["over_smoothing"] = bool(out["mask_to_support"] < t["mask_to_support"] or out["edit_strength"] < t["edit_strength"])
    outside = ~ndimage.binary_dilation(mask_img, iterations=max(1, size // 32))
    out["background_change"] = float(np.abs(edited - source)[outside].mean()) if outside.any() else 0.0
    out["background_drift"] = bool(out["background_change"] > t["background_change"])
    e_src, e_edit = _edges(source.mean(-1))[mask_img], _edges(edited.mean(-1))[mask_img]
    if e_src.std() > 1e-9 and e_edit.std() > 1e-9:
        out["structure_change"] = float(1 - np.corrcoef(e_src, e_edit)[0, 1])
    else:
        out["structure_change"] = 0.0 if e_src.std() <= 1e-9 and e_edit.std() <= 1e-9 else 1.0
    out["structure_loss"] = bool(out["structure_change"] > t["structure_change"])
    # Mask row 0 is the source word's own mask, row 1 the blend region (by default its union with the target word's;
    # with target_mask="source" the same as row 0, so nothing spills). Without a source-word mask (adding an object:
    # the word is new) there is nothing to spill beyond.
    source_mask = masks[-1, 0]
    out["target_only_share"] = float((final & ~source_mask).sum() / final.sum()) if source_mask.any() else float("nan")
    out["target_word_spill"] = bool(out["target_only_share"] > t["target_only_share"])
    out["no_mask"] = False
    return out
