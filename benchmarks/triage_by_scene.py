"""Goals met per method, edit type and scene kind (one or two objects) on a finished ShapeWorld benchmark.

    python benchmarks/triage_by_scene.py --bench data/bench --data data/shapeworld_bench

An edit meets the goals when its mask IoU with the truth is >= 0.5, the true background (outside the dilated edit
region) keeps >= 30 dB and the object inside the truth has the target colour (issue 4's end-to-end goals).
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


def by_scene(results: pd.DataFrame, mapping: dict) -> pd.DataFrame:
    keys = results["key"].astype(str).str.zfill(12)
    results = results.assign(
        objects=keys.map(lambda k: 2 if " and " in mapping[k]["original_prompt"] else 1),
        goals=(results.mask_iou_gt >= 0.5) & (results.bg_psnr_true >= 30) & (results.region_colour_match >= 0.5),
        edit=results.editing_type_id.astype(str).map(TYPES),
    ).dropna(subset=["edit"])
    return results.groupby(["edit", "method", "objects"]).agg(
        mask_iou=("mask_iou_gt", "mean"), true_bg_psnr=("bg_psnr_true", "mean"), colour_hit=("region_colour_match", "mean"),
        goals_met=("goals", "sum"), items=("goals", "size"), spill=("fail_target_word_spill", "mean")).round(3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path, default=Path("data/bench"), help="the bench output (results.csv)")
    parser.add_argument("--data", type=Path, default=Path("data/shapeworld_bench"), help="the exported edit set")
    args = parser.parse_args()
    results = pd.read_csv(args.bench / "results.csv", dtype={"key": str})
    mapping = json.loads((args.data / "mapping_file.json").read_text())
    print(by_scene(results, mapping).reset_index().to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
