"""Edits run in a worker thread owned by a process-wide registry, so no rerun of the page can lose one.

Streamlit reruns a script when a widget changes, raising inside whatever the script was doing; an edit driven from
the script would be lost. Here the page only submits a job and polls it; the worker saves the run when it finishes.
The worker never calls Streamlit (it is not allowed from other threads).
"""
from __future__ import annotations

import threading
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st


@dataclass
class Job:
    id: str
    stage: str = "queued"
    step: int = 0
    total: int = 1
    run_path: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / max(1, self.total))


@st.cache_resource
def registry() -> dict[str, Job]:
    return {}


def submit(model_and_lock, image, source_prompt: str, target_prompt: str, blend, params, root: Path,
           gt_mask=None, gt_target=None) -> Job:
    from locatedit.pipeline import locatedit_edit
    from locatedit.run import save_run

    job = Job(uuid.uuid4().hex[:8])
    registry()[job.id] = job
    model, lock = model_and_lock

    def progress(stage: str, i: int, n: int) -> None:
        job.stage, job.step, job.total = stage, i, n

    def work() -> None:
        try:
            job.stage = "waiting for the model"
            with lock:
                result = locatedit_edit(model, image, source_prompt, target_prompt, blend, params, progress)
            job.stage = "saving"
            job.warnings = result.warnings
            job.run_path = str(save_run(result, root, gt_mask=gt_mask, gt_target=gt_target).path)
            job.stage = "done"
        except Exception as err:  # reported on the page; the traceback goes to the server log
            job.error = f"{type(err).__name__}: {err}"
            job.stage = "failed"
            traceback.print_exc()
        finally:
            job.done.set()

    threading.Thread(target=work, name=f"edit-{job.id}", daemon=True).start()
    return job
