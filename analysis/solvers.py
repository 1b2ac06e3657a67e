"""Closed form versus iterative solvers on a run's actual systems (every solve step, both words).

Each solver of the graph core runs through the same ``refine`` call, so the comparison is a loop; the reference is a
float64 Cholesky solve. Per-iteration callbacks give convergence curves.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from locatedit import graph

EXACT_PROBLEM_SOLVERS = ("cg", "cholesky", "dense", "jacobi", "gauss-seidel", "amg")
OTHER_OBJECTIVES = ("irls", "vimaedit")  # different problems: their error is a distance, not an accuracy


def _systems(run):
    arrays = run.arrays
    per_step = arrays.get("self_attention_per_step")
    for k, step in enumerate(run.solve_steps):
        S = per_step[k].astype(np.float32) if per_step is not None else arrays["self_attention_mean"]
        yield int(step), arrays["m0"][step].astype(np.float32), S


def compare_solvers(run, solvers=EXACT_PROBLEM_SOLVERS + OTHER_OBJECTIVES, warm_start: bool = True,
                    threshold: float | None = None, max_steps: int | None = None) -> pd.DataFrame:
    """One row per (solver, step): seconds, iterations, residual, relative error and mask IoU vs the exact solve."""
    p = run.params
    threshold = p["blend_threshold"] if threshold is None else threshold
    kwargs = dict(lam=p["lam"], alpha=p["alpha"], center=p["center"])
    rows = []
    systems = list(_systems(run))[:max_steps]
    exact = {step: graph.refine(m0.astype(np.float64), S.astype(np.float64), solver="cholesky", **kwargs).solution
             for step, m0, S in systems}
    for name in solvers:
        previous = None
        for step, m0, S in systems:
            result = graph.refine(m0, S, solver=name, x0=previous if warm_start else None, **kwargs)
            if warm_start and name not in OTHER_OBJECTIVES:
                previous = result.solution
            x, ref = result.solution.astype(np.float64), exact[step]
            rel = float(np.linalg.norm(x - ref) / np.linalg.norm(ref))
            a, b = graph.binary_mask(x, threshold), graph.binary_mask(ref, threshold)
            union = (a | b).sum()
            rows.append({"solver": name, "step": step, "seconds": result.seconds, "iterations": result.iterations,
                         "residual": result.residual, "relative_error": rel,
                         "mask_iou": float((a & b).sum() / union) if union else 1.0,
                         "same_objective": name not in OTHER_OBJECTIVES})
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per solver: total and median seconds, mean iterations, worst relative error and IoU."""
    return table.groupby("solver", sort=False).agg(
        total_ms=("seconds", lambda s: 1000 * s.sum()), median_ms=("seconds", lambda s: 1000 * s.median()),
        iterations=("iterations", "mean"), worst_relative_error=("relative_error", "max"),
        worst_mask_iou=("mask_iou", "min"), same_objective=("same_objective", "first"),
    ).reset_index()


def convergence(run, step: int | None = None, solvers=EXACT_PROBLEM_SOLVERS + OTHER_OBJECTIVES) -> pd.DataFrame:
    """Residual per iteration of each solver on one system (from the per-iteration callbacks)."""
    systems = {s: (m0, S) for s, m0, S in _systems(run)}
    step = step if step is not None else max(systems)
    m0, S = systems[step]
    p = run.params
    rows = []
    for name in solvers:
        graph.refine(m0, S, lam=p["lam"], alpha=p["alpha"], center=p["center"], solver=name,
                     callback=lambda info, name=name: rows.append(
                         {"solver": name, "iteration": info["i"], "residual": info["residual"]}))
    return pd.DataFrame(rows)
