"""A Run: one edit saved as a directory that anyone can open later without the model.

    run.json      prompts, blend words, model, every parameter, timings, warnings, package versions, array index
    source.png, reconstruction.png, edited.png, mask.png
    arrays.npz    per-step m0, m*, masks; S (mean or per step); cross-attention per token at the mask resolution;
                  the CLIP offset before and after pruning; solver statistics (numpy, no pickle)

Writes are atomic: everything goes to a hidden temporary folder that is renamed into place only when complete, so a
crash never leaves a half run that looks whole.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

FORMAT_VERSION = 1
IMAGES = ("source", "reconstruction", "edited", "mask", "gt_target", "gt_mask")
REQUIRED = ("run.json", "arrays.npz", "source.png", "reconstruction.png", "edited.png")


class RunError(ValueError):
    """A directory that is not a (complete) run; the message says what is wrong and what to do."""


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "numpy", "scipy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        if commit:
            versions["locatedit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return versions


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "edit"


def new_run_id(target_prompt: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(target_prompt)}-{uuid.uuid4().hex[:4]}"


def save_run(
    result,
    root: str | Path,
    run_id: str | None = None,
    extra: dict | None = None,
    gt_mask: np.ndarray | None = None,
    gt_target: Image.Image | np.ndarray | None = None,
) -> "Run":
    """Write an ``EditResult`` under ``root/<run_id>`` atomically and return the loaded Run.

    ``gt_mask`` / ``gt_target``: the ground-truth edit region and edited image, when known (ShapeWorld).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    run_id = run_id or new_run_id(result.target_prompt)
    final = root / run_id
    if final.exists():
        raise RunError(f"a run named '{run_id}' already exists in {root}; pick another id")
    tmp = root / f".tmp-{run_id}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        result.source_image.save(tmp / "source.png")
        result.reconstruction.save(tmp / "reconstruction.png")
        result.edited.save(tmp / "edited.png")
        final_mask = result.arrays["mask"][-1][1] if result.blend_words is not None else None
        if final_mask is not None:
            Image.fromarray(final_mask.astype(np.uint8) * 255).save(tmp / "mask.png")
        if gt_mask is not None:
            Image.fromarray(np.asarray(gt_mask, dtype=bool).astype(np.uint8) * 255).save(tmp / "gt_mask.png")
        if gt_target is not None:
            (gt_target if isinstance(gt_target, Image.Image) else Image.fromarray(gt_target)).save(tmp / "gt_target.png")
        np.savez_compressed(tmp / "arrays.npz", **result.arrays)
        meta = {
            "format": FORMAT_VERSION,
            "id": run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "model": result.model,
            "model_fingerprint": result.model_fingerprint,
            "source_prompt": result.source_prompt,
            "target_prompt": result.target_prompt,
            "blend_words": list(result.blend_words) if result.blend_words else None,
            "params": result.params.to_dict(),
            "tokens": result.tokens,
            "layers": result.layers,
            "timings": result.timings,
            "warnings": result.warnings,
            "ground_truth": [n for n, v in (("mask", gt_mask), ("target", gt_target)) if v is not None],
            "versions": _versions(),
            "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in result.arrays.items()},
            **(extra or {}),
        }
        (tmp / "run.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Run.load(final)


@dataclass
class Run:
    path: Path
    meta: dict

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path} is not a run directory (it does not exist or is a file); pick a folder made by "
                           "an edit (python -m locatedit edit ... or the dashboard's Edit page)")
        missing = [name for name in REQUIRED if not (path / name).is_file()]
        if missing:
            raise RunError(f"{path} is not a complete run: {', '.join(missing)} missing. Runs are written "
                           "atomically, so this folder was not made by LOCATEdit Lab or was changed since; re-run it")
        try:
            meta = json.loads((path / "run.json").read_text())
        except json.JSONDecodeError as err:
            raise RunError(f"{path}/run.json is not valid JSON ({err}); the run is damaged, re-run the edit") from err
        if meta.get("format") != FORMAT_VERSION:
            raise RunError(f"{path} has run format {meta.get('format')}, this version reads {FORMAT_VERSION}")
        return cls(path, meta)

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def params(self) -> dict:
        return self.meta["params"]

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """All arrays, loaded once (no pickle)."""
        try:
            with np.load(self.path / "arrays.npz", allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise RunError(f"{self.path}/arrays.npz cannot be read ({err}); the run is damaged, re-run it") from err

    def image(self, name: str) -> Image.Image:
        if name not in IMAGES:
            raise KeyError(f"no image '{name}'; runs hold {IMAGES}")
        return Image.open(self.path / f"{name}.png").convert("L" if name.endswith("mask") else "RGB")

    def has(self, name: str) -> bool:
        return (self.path / f"{name}.png").is_file()

    def gt_mask(self) -> np.ndarray | None:
        """The ground-truth edit region at image resolution (ShapeWorld runs), else None."""
        return np.asarray(self.image("gt_mask")) > 127 if self.has("gt_mask") else None

    @property
    def solve_steps(self) -> np.ndarray:
        """Steps at which the CASA system was solved (m* is NaN elsewhere)."""
        return np.flatnonzero(~np.isnan(self.arrays["m_star"][:, 0, 0]))


def list_runs(root: str | Path) -> list[Run]:
    """Every complete run under ``root`` (newest first); incomplete or foreign folders are skipped."""
    root = Path(root)
    runs = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith("."):
                continue
            try:
                runs.append(Run.load(child))
            except RunError:
                continue
    return sorted(runs, key=lambda r: r.meta.get("created", ""), reverse=True)
