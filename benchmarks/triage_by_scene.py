"""Goals met per method, edit type and scene kind (one or two objects) on a finished ShapeWorld benchmark.

    python benchmarks/triage_by_scene.py --bench data/bench --data data/shapeworld_bench

An edit meets the goals when its mask IoU with the truth is >= 0.5, the true background (outside the dilated edit
region) keeps >= 30 dB and the object inside the truth has the target colour (issue 4's end-to-end goals). A second
table groups the same edits by the object's size in cells of the cross-attention grid, beside where the mask IoU
goes (the grid's ceiling, the summed map at its best threshold, the unrefined attention: analysis.ablation.mask_limits).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from locatedit.shapeworld.world import EDIT_TYPES  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path, default=Path("data/bench"), help="the bench output (results.csv)")
    parser.add_argument("--data", type=Path, default=Path("data/shapeworld_bench"), help="the exported edit set")
    args = parser.parse_args()
    results = pd.read_csv(args.bench / "results.csv", dtype={"key": str})
    mapping = json.loads((args.data / "mapping_file.json").read_text())
    print(by_scene(results, mapping).reset_index().to_markdown(index=False))
    if "object_m0_cells" in results:
        print()
        print(by_object_size(results).reset_index().to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
