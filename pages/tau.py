"""τ sensitivity: sweep the share of the CLIP text offset kept and watch the edit appear."""
import streamlit as st

from analysis.figures import lines_figure, upscale
from analysis.tau import DEFAULT_KEEPS, edit_at, tau_sweep
from dashboard.state import intro, model_or_error, pick_run, use_navigation
from locatedit.loading import ModelNotAvailableError, resolve

use_navigation()
st.header("τ sensitivity")
intro("The target branch is guided by an image embedding shifted by the CLIP text offset **t̃_target − t̃_source**; "
      "**τ** keeps only that share of the offset's largest coordinates (the reference keeps 91.09 %). The sweep "
      "re-runs the edit for each τ (cached per run and τ) and measures the change inside the edit region, outside "
      "it, and in CLIP space. Where the curves flatten, τ stops mattering.")
run = pick_run()
if run is None:
    st.stop()
try:
    resolve(run.meta["model"])
except ModelNotAvailableError:
    st.info(f"τ sweeps re-run edits with the run's model; '{run.meta['model']}' is not loadable by name.")
    st.stop()
keeps = st.multiselect("τ values (% kept)", [0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 91.0935948657488, 100.0],
                       list(DEFAULT_KEEPS), key="tau_keeps")
# A callback flag, not the button's return value: it survives a rerun between the click and the script body.
st.button("Run / load the sweep", key="tau_run", type="primary", on_click=lambda: st.session_state.update(tau_go=True))
if st.session_state.pop("tau_go", False):
    model, lock = model_or_error(run.meta["model"])
    if model is not None:
        bar = st.progress(0.0, text="sweeping τ")
        with lock:
            table, threshold = tau_sweep(model, run, sorted(keeps),
                                         progress=lambda i, n: bar.progress(i / n, text=f"τ {i} of {n}"))
        st.session_state["tau_result"] = (run.id, table, threshold)
result = st.session_state.get("tau_result")
if result and result[0] == run.id:
    _, table, threshold = result
    st.metric("smallest τ giving a visible edit", "none" if threshold is None else f"{threshold:.1f} %",
              help="edit-region change at least 0.05 above the τ = 0 edit")
    cols = st.columns(2)
    long = table.melt("keep_percent", ["edit_region_change", "background_change"], "region", "mean |Δ|")
    cols[0].plotly_chart(lines_figure(long, "keep_percent", "mean |Δ|", "region", "pixel change vs τ"), key="tau_pix")
    cols[1].plotly_chart(lines_figure(table, "keep_percent", "clip_change", title="CLIP-space change vs τ"),
                         key="tau_clip")
    st.dataframe(table.round(4), hide_index=True, key="tau_table")
    pick = st.select_slider("See the edit at τ", options=list(table.keep_percent), key="tau_pick")
    model, lock = model_or_error(run.meta["model"])
    if model is not None:
        with lock:
            edited, mask = edit_at(model, run, pick)
        st.image(upscale(edited, 256), caption=f"edited with τ = {pick:.1f} %", width=256)
