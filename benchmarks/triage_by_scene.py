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
from analysis.triage import by_object_size, by_scene  # noqa: E402


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
