"""Benchmark runs: resumable, filtered by type, scored into one table, sharded across 2 CPU processes."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.bench import collect, per_type_table, run_benchmark, select
from locatedit.loading import load_model
from locatedit.piebench import load_mapping
from locatedit.pipeline import EditParams
from locatedit.run import RunError
from locatedit.shapeworld.train import export_untrained
from locatedit.shapeworld.world import export_piebench, sample_edits

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    model_path = export_untrained(root / "model", seed=0)
    data = export_piebench(sample_edits(seed=1, per_type=1), root / "data")
    return root, model_path, data


def test_resume_skips_finished_items_and_scores_them(setup, tmp_path):
    root, model_path, data = setup
    model = load_model(str(model_path), device="cpu")
    params = EditParams(steps=4)
    first = run_benchmark(model, data, tmp_path, ["locatedit", "no_laplacian"], limit=2, base=params)
    stamps = {p: p.stat().st_mtime_ns for p in first}
    second = run_benchmark(model, data, tmp_path, ["locatedit", "no_laplacian"], limit=2, base=params)
    assert second == first and all(p.stat().st_mtime_ns == stamps[p] for p in second)
    table = collect(tmp_path)
    assert len(table) == 4 and set(table.method) == {"locatedit", "no_laplacian"}
    assert {"bg_psnr", "mask_iou_gt", "target_psnr", "fail_background_drift"} <= set(table.columns)
    assert (tmp_path / "results.sqlite").exists() and "| method |" in (tmp_path / "summary.md").read_text()
    assert first[0].joinpath("run.json").read_text().count(model.fingerprint) == 1  # runs say which weights
    with pytest.raises(RunError, match=r"other parameters \(lam\)"):
        run_benchmark(model, data, tmp_path, ["locatedit"], limit=1, base=EditParams(steps=4, lam=2.0))
    retrained = dataclasses.replace(model, fingerprint="0" * 16)
    with pytest.raises(RunError, match="other weights"):
        run_benchmark(retrained, data, tmp_path, ["locatedit"], limit=1, base=params)


def test_type_filter_and_unknown_method(setup, tmp_path):
    _, _, data = setup
    items = load_mapping(data)
    assert {i.editing_type_id for i in select(items, ["change_attribute_color"], None)} == {"6"}
    with pytest.raises(ValueError, match="unknown method"):
        run_benchmark(None, data, tmp_path, ["magic"])


def test_two_cpu_processes_split_the_items_and_merge(setup, tmp_path):
    root, model_path, data = setup
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LOCATEDIT_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # torchrun is what `accelerate launch --multi_gpu` runs underneath; on CPU it gives two gloo processes.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "locatedit", "bench", "--data", str(data), "--out", str(tmp_path), "--model", str(model_path),
           "--limit", "4", "--steps", "3"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results.csv", dtype={"key": str})
    assert sorted(table.key) == [f"{i:012d}" for i in range(4)]  # every item once ...
    processes = {json.loads(p.read_text())["bench"]["process"] for p in tmp_path.glob("runs/*/*/run.json")}
    assert processes == {0, 1}  # ... split between the two processes


def test_per_type_table_counts_edits_meeting_all_three_goals():
    table = pd.DataFrame({
        "method": ["locatedit"] * 3 + ["no_laplacian"],
        "editing_type_id": ["6", "6", "8", "6"],
        "mask_iou_gt": [0.6, 0.7, 0.9, 0.4],
        "bg_psnr_true": [35.0, 29.0, 40.0, 35.0],
        "region_colour_match": [1.0, 1.0, 0.0, 1.0],
    })
    rows = per_type_table(table).set_index(["method", "editing_type"])
    colour = rows.loc[("locatedit", "change_attribute_color")]
    assert colour["all goals"] == 0.5 and colour["items"] == 2  # the second edit's background is below 30 dB
    assert rows.loc[("locatedit", "change_background"), "all goals"] == 0  # no colour hit
    assert rows.loc[("no_laplacian", "change_attribute_color"), "all goals"] == 0  # IoU below 0.5
    # Real PIE-Bench has no ground truth: no table rather than a table of NaN.
    assert per_type_table(table.assign(mask_iou_gt=float("nan"))) is None
