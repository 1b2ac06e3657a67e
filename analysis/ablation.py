"""Laplacian ablation and parameter sweeps, re-solved from a run's saved m0 and S (no diffusion re-run).

A run stores m0 for every step and S either per step (exact) or as the mean over the solve steps (then each step's
system uses the mean S: an approximation, reported in the result). Re-solving sums m* over the solve steps,
min-max normalises and thresholds, exactly as the pipeline builds its blend mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from locatedit import graph

from .metrics import grid_mask_iou


@dataclass
class Resolve:
    map_sum: np.ndarray  # (2, N) summed m* over steps
    mask: np.ndarray  # (res, res) bool: the target row's union mask at graph resolution
    exact: bool  # True when per-step S was available
    seconds: float
    iterations: int


def _minmax(x: np.ndarray) -> np.ndarray:
    span = x.max(-1, keepdims=True) - x.min(-1, keepdims=True)
    return np.where(span > 0, (x - x.min(-1, keepdims=True)) / np.where(span > 0, span, 1), 0.0)


def union_mask(map_sum: np.ndarray, threshold: float, target_mask: str = "union") -> np.ndarray:
    """Target-row blend mask at graph resolution: minmax(Map) > threshold, source | target (the reference) or, for
    a run made with ``target_mask="source"``, the source word's alone."""
    masks = _minmax(map_sum) > threshold
    side = int(round(np.sqrt(map_sum.shape[-1])))
    return (masks[0] | masks[1] if target_mask == "union" else masks[0]).reshape(side, side)


def resolve(run, lam: float | None = None, alpha: float | None = None, center: float | None = None,
            solver: str = graph.DEFAULT_SOLVER, topk: int | None = None, threshold: float | None = None) -> Resolve:
    """Re-solve every solve step of a run with other parameters (defaults: the run's own)."""
    p = run.params
    lam = p["lam"] if lam is None else lam
    alpha = p["alpha"] if alpha is None else alpha
    center = p["center"] if center is None else center
    threshold = p["blend_threshold"] if threshold is None else threshold
    target_mask = p.get("target_mask", "union")  # runs saved before the switch existed used the union
    arrays = run.arrays
    steps = run.solve_steps
    per_step = arrays.get("self_attention_per_step")
    mean_S = arrays["self_attention_mean"]
    total = np.zeros_like(arrays["m0"][0], dtype=np.float64)
    seconds, iterations, previous = 0.0, 0, None
    for k, step in enumerate(steps):
        S = per_step[k].astype(np.float32) if per_step is not None else mean_S
        result = graph.refine(arrays["m0"][step], S, lam=lam, alpha=alpha, center=center, solver=solver, topk=topk,
                              x0=previous)
        previous = result.solution if solver != "vimaedit" else None
        total += result.solution
        seconds += result.seconds
        iterations += result.iterations
    return Resolve(total, union_mask(total, threshold, target_mask), per_step is not None, seconds, iterations)


def spill(map_or_mask: np.ndarray, truth: np.ndarray, dilation: int = 2) -> float:
    """Share of the mask's (or a normalised map's) mass outside the dilated ground-truth region (0 = no spill)."""
    m = np.asarray(map_or_mask, dtype=np.float64)
    if m.shape != truth.shape:
        m = np.kron(m, np.ones((truth.shape[0] // m.shape[0],) * 2))
    m = m - m.min()
    if m.sum() == 0:
        return 0.0
    allowed = ndimage.binary_dilation(truth, iterations=dilation) if dilation else truth
    return float(m[~allowed].sum() / m.sum())


def sweep(run, lams=(0.0, 0.25, 0.78, 2.0, 5.0), alphas=(2.61,), truth: np.ndarray | None = None,
          solver: str = graph.DEFAULT_SOLVER) -> pd.DataFrame:
    """Spill and IoU per (λ, α): one row each, with the refined mask kept for drawing."""
    truth = run.gt_mask() if truth is None else truth
    rows = []
    for lam in lams:
        for alpha in alphas:
            r = resolve(run, lam=lam, alpha=alpha, solver=solver)
            side = r.mask.shape[0]
            target_map = _minmax(r.map_sum)[1].reshape(side, side)
            row = {"lam": lam, "alpha": alpha, "mask_area": float(r.mask.mean()), "exact": r.exact,
                   "seconds": r.seconds, "mask": r.mask}
            if truth is not None:
                gt = np.asarray(truth, bool)
                # iou: pixel IoU, as the benchmark's mask_iou_gt; spill: share of the blend mask outside the dilated
                # truth; map_spill: the same for the map's mass
                row |= {"iou": grid_mask_iou(r.mask, gt), "spill": spill(r.mask.astype(float), gt),
                        "map_spill": spill(target_map, gt)}
            rows.append(row)
    return pd.DataFrame(rows)


def grid_ceiling(truth: np.ndarray, side: int) -> float:
    """The best IoU any mask made of whole cells of a side x side grid can reach against a pixel mask.

    For k cells the intersection is largest when they are the k cells the truth covers most, so sweeping k over the
    cells sorted by coverage finds the exact optimum."""
    gt = np.asarray(truth, bool)
    f = gt.shape[0] // side
    coverage = np.sort(gt.reshape(side, f, side, f).sum((1, 3)).ravel())[::-1].astype(np.float64)  # pixels per cell
    inter = np.cumsum(coverage)
    size = f * f * np.arange(1, coverage.size + 1)
    return float(np.max(inter / (gt.sum() + size - inter)))


def mask_limits(run, thresholds: np.ndarray = np.linspace(0.02, 0.98, 49)) -> dict[str, float]:
    """Where a CASA mask's IoU with the ground truth goes (pixel IoU, as the benchmark's ``mask_iou_gt``):

    - ``mask_iou_grid_ceiling``: the best any mask on the graph's grid could do (the model's resolution);
    - ``mask_iou_best_threshold`` at ``best_threshold``: the summed refined map at its best threshold, the run's own
      among those tried (the map's shape, with the threshold's share of the loss taken out);
    - ``mask_iou_unrefined``: the summed cross-attention m0 at the run's threshold (λ = 0: what the Laplacian added);
    - ``object_m0_cells``: the truth's area in cells of the cross-attention grid that finds it (m0's own resolution).
    Empty for runs without ground truth or without CASA solves (P2P LocalBlend)."""
    truth = run.gt_mask()
    steps = run.solve_steps
    if truth is None or not len(steps) or run.params.get("mask_source", "casa") != "casa":
        return {}
    p, arrays = run.params, run.arrays
    target_mask = p.get("target_mask", "union")
    side = int(round(np.sqrt(arrays["map_sum"].shape[-1])))

    def pixel_iou(map_sum: np.ndarray, threshold: float) -> float:
        return grid_mask_iou(union_mask(map_sum, threshold, target_mask), truth)

    best = max((pixel_iou(arrays["map_sum"], float(t)), float(t)) for t in [*thresholds, p["blend_threshold"]])
    return {"mask_iou_grid_ceiling": grid_ceiling(truth, side), "mask_iou_best_threshold": best[0],
            "best_threshold": best[1],
            "mask_iou_unrefined": pixel_iou(arrays["m0"][steps].sum(0), p["blend_threshold"]),
            **({"object_m0_cells": float(truth.mean() * arrays["cross_maps"].shape[-1] ** 2)}
               if "cross_maps" in arrays else {})}
