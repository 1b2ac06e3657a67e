"""The run library, cached models and runs, and the run picker every page shares.

Runs live in folders listed by ``LOCATEDIT_RUNS`` (``:``-separated; default ``data/examples`` then ``data/runs``).
The selected run is mirrored in the URL (``?run=<id>``) so a page and run can be shared as a link.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import streamlit as st

from locatedit.loading import REPO_ROOT, ModelNotAvailableError, load_model
from locatedit.run import Run, RunError, list_runs


def run_roots() -> list[Path]:
    configured = os.environ.get("LOCATEDIT_RUNS")
    if configured:
        return [Path(p) for p in configured.split(":") if p]
    return [REPO_ROOT / "data" / "examples", REPO_ROOT / "data" / "runs"]


def save_root() -> Path:
    """Where new runs from the dashboard go: the last run root."""
    return run_roots()[-1]


@st.cache_resource(show_spinner="Loading the model ...")
def get_model(name: str):
    """One pipeline per model name for every session, with a lock: one edit at a time on the device."""
    return load_model(name), threading.Lock()


@st.cache_resource(max_entries=32, show_spinner=False)
def get_run(path: str, stamp: float) -> Run:
    """A run by path (its arrays load once and stay cached); ``stamp`` invalidates a rewritten run."""
    return Run.load(path)


def library(extra_roots: tuple[str, ...] = ()) -> dict[str, str]:
    """Run id -> path over every root (newest first). Runs of extra roots (a benchmark's per-method folders) are
    keyed '<folder>/<id>'; a clash between the main roots is resolved the same way."""
    return _library(tuple(map(str, run_roots())), extra_roots)


@st.cache_data(ttl=3, show_spinner=False)
def _library(roots: tuple[str, ...], extra_roots: tuple[str, ...]) -> dict[str, str]:
    """Cached per set of roots, so a changed ``LOCATEDIT_RUNS`` is seen at once."""
    runs: dict[str, str] = {}
    for root in map(Path, roots):
        for run in list_runs(root):
            key = run.id if run.id not in runs else f"{root.name}/{run.id}"
            runs[key] = str(run.path)
    for root in map(Path, extra_roots):
        for run in list_runs(root):
            runs[f"{root.name}/{run.id}"] = str(run.path)
    return runs


def refresh_library() -> None:
    """Forget the cached listing (after a new run is saved)."""
    _library.clear()


def add_roots(roots: list[Path]) -> None:
    """Make more run folders (e.g. a benchmark's) visible to every page's run picker in this session."""
    st.session_state["extra_roots"] = tuple(sorted({*st.session_state.get("extra_roots", ()), *map(str, roots)}))


def load(path: str) -> Run:
    return get_run(path, os.path.getmtime(Path(path) / "run.json"))


def run_label(run_id: str, runs: dict[str, str]) -> str:
    try:
        run = load(runs[run_id])
        return f"{run.meta['target_prompt'][:48]} · {run.id[-4:]}"
    except RunError:
        return run_id


def pick_run(key: str = "run", label: str = "Run", sidebar: bool = True) -> Run | None:
    """The run selector (sidebar by default), bound to the URL; None with a message when the library is empty."""
    runs = library(st.session_state.get("extra_roots", ()))
    place = st.sidebar if sidebar else st
    if not runs:
        place.info("No runs yet: make one on the Edit page (or `python -m locatedit edit --shapeworld-edit "
                   "change_colour`).")
        return None
    options = list(runs)
    choice = place.selectbox(label, options, key=key, bind="query-params",
                             format_func=lambda rid: run_label(rid, runs))
    try:
        return load(runs[choice])
    except RunError as err:
        place.error(str(err))
        return None


def intro(text: str) -> None:
    """The two or three sentences that open every page: what it shows and how to read it."""
    st.markdown(text)


def model_choices() -> list[str]:
    """The embedded model, SD 1.5, and any model folders or SD 1.5 hub ids in ``LOCATEDIT_MODELS`` (``:``-separated)."""
    extra = [p for p in os.environ.get("LOCATEDIT_MODELS", "").split(":") if p]
    return ["shapeworld", "sd15", *extra]


def model_or_error(name: str):
    try:
        return get_model(name)
    except ModelNotAvailableError as err:
        st.error(str(err))
        return None, None


def use_navigation() -> None:
    """Leave Streamlit's legacy multipage mode if it is on, then rerun through ``st.navigation``.

    A folder named ``pages/`` beside the entry point makes a fresh Streamlit server start in its legacy mode, in which
    it runs a page file directly (no sections, no titles, no URL paths of ours) until some session calls
    ``st.navigation``. Every page and the entry point call this first, so the first visit, whatever its URL, switches
    the server to the navigation app once (Streamlit 1.67's ``PagesManager`` flag) and reruns.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
