"""Goals met per method and edit of an existing object, by scene kind (one or two objects) or by the object's size
in cells of the cross-attention grid, on a finished ShapeWorld benchmark's results table.

An edit meets the goals when its mask IoU with the truth is >= 0.5, the true background (outside the dilated edit
region) keeps >= 30 dB and the object inside the truth has the target colour (issue 4's end-to-end goals). Both tables
carry where the mask IoU goes where the runs have it (analysis.ablation.mask_limits).
"""
from __future__ import annotations

import pandas as pd

from locatedit.shapeworld.world import EDIT_TYPES

# The edits of an object that is already there, by PIE-Bench editing_type_id.
TYPES = {EDIT_TYPES[name]: name for name in ("change_shape", "change_colour", "change_texture")}


# Where the mask IoU goes (analysis.ablation.mask_limits), for the methods that solve CASA masks.
LIMITS = {"object_m0_cells": "object_m0_cells", "grid_ceiling": "mask_iou_grid_ceiling",
          "best_threshold_iou": "mask_iou_best_threshold", "unrefined_iou": "mask_iou_unrefined"}


# Object size in cells of the cross-attention grid that finds it (m0's resolution: 8x8 on ShapeWorld).
SIZES = {"under 3 cells": (0.0, 3.0), "3 to 6 cells": (3.0, 6.0), "6 cells or more": (6.0, float("inf"))}


def _goals(results: pd.DataFrame) -> pd.DataFrame:
    """The edits of an existing object, each with whether it met all three goals."""
    return results.assign(
        goals=(results.mask_iou_gt >= 0.5) & (results.bg_psnr_true >= 30) & (results.region_colour_match >= 0.5),
        edit=results.editing_type_id.astype(str).map(TYPES),
    ).dropna(subset=["edit"])


def _aggregate(results: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return results.groupby(keys, observed=True).agg(
        mask_iou=("mask_iou_gt", "mean"), true_bg_psnr=("bg_psnr_true", "mean"), colour_hit=("region_colour_match", "mean"),
        goals_met=("goals", "sum"), items=("goals", "size"), spill=("fail_target_word_spill", "mean"),
        **{name: (column, "mean") for name, column in LIMITS.items() if column in results}).round(3)


def by_scene(results: pd.DataFrame, mapping: dict) -> pd.DataFrame:
    keys = results["key"].astype(str).str.zfill(12)
    results = _goals(results.assign(objects=keys.map(lambda k: 2 if " and " in mapping[k]["original_prompt"] else 1)))
    return _aggregate(results, ["edit", "method", "objects"])


def by_object_size(results: pd.DataFrame) -> pd.DataFrame:
    """The same, by the edited object's size in m0 cells (runs with CASA masks only: they carry the size)."""
    results = _goals(results.dropna(subset=["object_m0_cells"]))
    edges = [lo for lo, _ in SIZES.values()] + [float("inf")]
    size = pd.cut(results.object_m0_cells, edges, right=False, labels=list(SIZES))
    return _aggregate(results.assign(size=size), ["edit", "method", "size"])
