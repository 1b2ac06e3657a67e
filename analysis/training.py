"""What a model folder says about how it was made and how good it is: its training logs, model card and gates.

A trained ShapeWorld folder carries ``training/<stage>.jsonl`` (one row per logged step) and ``README.md`` (written by
the training command); the quality gates of the committed model are ``benchmarks/results/shapeworld/gates.json``
(written by ``benchmarks/bench_shapeworld.py``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from locatedit.loading import REPO_ROOT
from locatedit.shapeworld.train import STAGES
GATES_FILE = REPO_ROOT / "benchmarks" / "results" / "shapeworld" / "gates.json"


def training_logs(model_dir: Path) -> pd.DataFrame:
    """Long table (stage, step, metric, value) of every logged loss; empty when the folder has no logs."""
    rows = []
    for order, stage in enumerate(STAGES):
        path = Path(model_dir) / "training" / f"{stage}.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            for metric, value in record.items():
                if metric != "step" and isinstance(value, (int, float)):
                    rows.append({"stage": stage, "order": order, "step": record["step"], "metric": metric,
                                 "value": float(value)})
    return pd.DataFrame(rows, columns=["stage", "order", "step", "metric", "value"])


def model_card(model_dir: Path) -> str | None:
    path = Path(model_dir) / "README.md"
    return path.read_text() if path.exists() else None


def quality_gates(path: Path = GATES_FILE) -> pd.DataFrame | None:
    """The gates table (gate, measured, goal, pass) of the last ``bench_shapeworld.py`` run, if any."""
    if not Path(path).exists():
        return None
    gates = json.loads(Path(path).read_text()).get("gates", [])
    return pd.DataFrame([{"gate": g["gate"], "measured": round(g["value"], 3), "goal": g["goal"], "pass": g["pass"]}
                         for g in gates])
