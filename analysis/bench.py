"""Benchmark runs over a PIE-Bench-format folder: every item x method, resumable, sharded across processes.

Each (item, method) becomes a Run under ``<out>/runs/<method>/<key>``; a Run directory only appears once complete
(atomic rename), so a killed benchmark loses at most the item in progress and a second call skips what is done.
Metrics (PIE-Bench's weight-free ones, ground-truth scores on ShapeWorld) and failure signatures are computed from
the saved runs and written to ``results.csv`` and ``results.sqlite``; ``summary.md`` holds the paper-style table.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from locatedit.piebench import EDITING_TYPES, BenchItem, load_mapping
from locatedit.pipeline import EditParams
from locatedit.run import Run, RunError, save_run

from . import ablation, failures, metrics

# Method name -> overrides of EditParams: the variants are switches of one pipeline.
METHODS: dict[str, dict] = {
    "locatedit": {},
    "no_laplacian": {"lam": 0.0},
    "vimaedit_smoothing": {"solver": "vimaedit"},
    "p2p_localblend": {"mask_source": "localblend"},
    "no_pruning": {"keep_percent": 100.0},
    "source_word_mask": {"target_mask": "source"},
}
# Paper table columns and their reporting scale (§c).
SCALES = {"clip_whole": 1.0, "clip_edited": 1.0, "bg_psnr": 1.0, "bg_mse": 1e4, "bg_ssim": 1e2, "mask_iou_gt": 1.0, "target_psnr": 1.0, "bg_psnr_true": 1.0,
          "region_colour_match": 1.0}


def select(items: list[BenchItem], types: list[str] | None, limit: int | None) -> list[BenchItem]:
    if types:
        wanted = {t if t in EDITING_TYPES else _type_id(t) for t in types}
        items = [i for i in items if i.editing_type_id in wanted]
    return items[:limit] if limit else items


def _type_id(name: str) -> str:
    for key, value in EDITING_TYPES.items():
        if value == name:
            return key
    raise ValueError(f"unknown editing type '{name}'; use an id 0-9 or one of {sorted(EDITING_TYPES.values())}")


def run_path(out: Path, method: str, item: BenchItem) -> Path:
    return out / "runs" / method / item.key


def _resume_mismatch(run: Run, model, params: EditParams, item: BenchItem) -> str | None:
    """What differs between a finished run and the edit this benchmark would make in its place (None: the same)."""
    meta = run.meta
    if meta["model"] != model.spec.name:
        return f"model '{meta['model']}', not '{model.spec.name}'"
    if meta.get("model_fingerprint") != model.fingerprint:
        return (f"other weights of '{model.spec.name}' (fingerprint {meta.get('model_fingerprint')}, "
                f"now {model.fingerprint})")
    changed = sorted(k for k, v in json.loads(json.dumps(params.to_dict())).items() if meta["params"].get(k) != v)
    if changed:
        return f"other parameters ({', '.join(changed)})"
    if (meta["source_prompt"], meta["target_prompt"]) != (item.source_prompt, item.target_prompt):
        return "other prompts"
    return None


def run_item(model, item: BenchItem, method: str, out: Path, base: EditParams, process: int = 0) -> Run:
    """Edit one item with one method unless its run already exists (resume)."""
    from locatedit.pipeline import locatedit_edit

    path = run_path(out, method, item)
    params = dataclasses.replace(base, **METHODS[method])
    if path.exists():
        try:
            run = Run.load(path)
        except RunError:
            raise RunError(f"{path} exists but is not a complete run; delete it to redo that item") from None
        reason = _resume_mismatch(run, model, params, item)
        if reason:
            raise RunError(f"{path} was made with {reason}, so resuming would mix two benchmarks; pass a new --out "
                           "or delete the old one")
        return run
    image = Image.open(item.image_path)
    gt_mask = item.mask((image.height, image.width))
    result = locatedit_edit(model, image, item.source_prompt, item.target_prompt, item.blend_words, params)
    side = result.source_image.size[0]
    gt_mask = metrics.resize_mask(gt_mask, side) if gt_mask.shape[0] != side else gt_mask
    target = Image.open(item.target_image_path).convert("RGB") if item.target_image_path else None
    extra = {"bench": {"key": item.key, "method": method, "editing_type_id": item.editing_type_id,
                       "process": process}}
    return save_run(result, path.parent, run_id=path.name, extra=extra, gt_mask=gt_mask, gt_target=target)


def score(run: Run, clip=None) -> dict:
    row = {"key": run.meta["bench"]["key"], "method": run.meta["bench"]["method"],
           "editing_type_id": run.meta["bench"]["editing_type_id"], "seconds": run.meta["timings"]["total"]}
    row |= {k: v for k, v in metrics.run_metrics(run, clip).items() if not isinstance(v, str)}
    row |= {f"fail_{k}": v for k, v in failures.signatures(run).items()}
    row |= ablation.mask_limits(run)
    return row


def run_benchmark(model, data: str | Path, out: str | Path, methods: list[str], limit: int | None = None,
                  types: list[str] | None = None, base: EditParams | None = None,
                  progress: Callable[[int, int, float], None] | None = None, state=None) -> list[Path]:
    """Edit this process's share of the (item, method) jobs; returns the run paths it owns.

    ``state``: an ``accelerate.PartialState``; its ``split_between_processes`` gives each process a contiguous
    slice of the jobs (None: one process does everything)."""
    out = Path(out)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    items = select(load_mapping(data), types, limit)
    jobs = [(item, method) for item in items for method in methods]
    if state is not None and state.num_processes > 1:
        with state.split_between_processes(jobs) as mine:
            jobs = list(mine)
    process = state.process_index if state is not None else 0
    paths, start = [], time.perf_counter()
    for k, (item, method) in enumerate(jobs):
        paths.append(run_item(model, item, method, out, base or EditParams(), process).path)
        if progress:
            progress(k + 1, len(jobs), time.perf_counter() - start)
    return paths


def collect(out: str | Path) -> pd.DataFrame:
    """Score every complete run under ``<out>/runs`` (all shards) into one table and write it."""
    out = Path(out)
    rows = []
    clip = metrics.load_piebench_clip()  # CLIP whole / edited only where openai's CLIP is in the local cache
    for path in sorted((out / "runs").glob("*/*")):
        try:
            rows.append(score(Run.load(path), clip))
        except RunError:
            continue
    table = pd.DataFrame(rows)
    if table.empty:
        raise RunError(f"no complete runs under {out}/runs; run the benchmark first")
    table.to_csv(out / "results.csv", index=False)
    with sqlite3.connect(out / "results.sqlite") as db:
        table.to_sql("results", db, if_exists="replace", index=False)
    (out / "summary.md").write_text(summary_markdown(table))
    return table


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over images per method, NaN skipped, in the paper's scale factors."""
    columns = [c for c in SCALES if c in table]
    summary = table.groupby("method")[columns + ["seconds"]].mean()
    for column in columns:
        summary[column] = summary[column] * SCALES[column]
    summary["items"] = table.groupby("method").size()
    fails = [c for c in table if c.startswith("fail_") and table[c].dtype == bool]
    for column in fails:
        summary[column] = table.groupby("method")[column].mean()
    return summary.reset_index()


def summary_markdown(table: pd.DataFrame) -> str:
    s = summary_table(table)
    names = {"bg_psnr": "PSNR ↑", "bg_mse": "MSE ×10⁴ ↓", "bg_ssim": "SSIM ×10² ↑", "mask_iou_gt": "mask IoU (GT) ↑",
             "target_psnr": "PSNR vs GT target ↑", "bg_psnr_true": "true bg PSNR ↑", "seconds": "s / item",
             "region_colour_match": "colour hit (GT region) ↑"}
    cols = [c for c in s.columns if c != "method"]
    head = "| method | " + " | ".join(names.get(c, c) for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for _, row in s.iterrows():
        values = [f"{row[c]:.3f}" if isinstance(row[c], (float, np.floating)) else str(row[c]) for c in cols]
        lines.append(f"| {row['method']} | " + " | ".join(values) + " |")
    note = ("Structure distance, LPIPS and CLIP scores need model weights that are not on this machine; "
            "see analysis.metrics.model_metrics_status().")
    text = "\n".join(lines) + "\n\n" + note + "\n"
    per_type = per_type_table(table)
    if per_type is not None:
        text += ("\nPer editing type (ground truth: mask IoU, background PSNR outside the dilated true edit region, "
                 f"object colour hit; 'all goals' = IoU >= {GOAL_IOU}, background >= {GOAL_BG_PSNR} dB and colour "
                 "hit in the same edit):\n\n" + per_type.to_markdown(index=False, floatfmt=".3f") + "\n")
    return text


GOAL_IOU, GOAL_BG_PSNR = 0.5, 30.0  # issue 4's per-edit goals on ground-truth benchmarks


def per_type_table(table: pd.DataFrame) -> pd.DataFrame | None:
    """Method x editing type means of the ground-truth scores, and the share of edits meeting all three goals;
    None when the benchmark has no ground truth (real PIE-Bench)."""
    needed = ["mask_iou_gt", "bg_psnr_true", "region_colour_match"]
    if not set(needed) <= set(table) or table[needed].isna().all().any():
        return None
    scored = table.assign(
        editing_type=table["editing_type_id"].astype(str).map(lambda t: EDITING_TYPES.get(t, t)),
        all_goals=(table["mask_iou_gt"] >= GOAL_IOU) & (table["bg_psnr_true"] >= GOAL_BG_PSNR)
        & (table["region_colour_match"] >= 1),
    )
    grouped = scored.groupby(["method", "editing_type"])
    result = grouped[needed + ["all_goals"]].mean()
    result["items"] = grouped.size()
    return result.reset_index().rename(columns={"mask_iou_gt": "mask IoU", "bg_psnr_true": "true bg PSNR",
                                                "region_colour_match": "colour hit", "all_goals": "all goals"})


def write_config(out: Path, config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(config, indent=2))
