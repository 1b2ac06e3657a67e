"""Solvers: the closed form against every iterative solver on this run's systems."""
import streamlit as st

from analysis.figures import lines_figure
from analysis.solvers import EXACT_PROBLEM_SOLVERS, OTHER_OBJECTIVES, compare_solvers, convergence, summarize
from dashboard.state import intro, pick_run, use_navigation

use_navigation()
st.header("Solvers")
intro("Every solve step of the run is re-solved by every solver through one signature. The reference factorises "
      "(LU); the system is small and well conditioned, so Jacobi-preconditioned CG reaches the same mask in a "
      "handful of iterations, warm-started from the previous step. **irls** minimises a robust (Huber) objective "
      "and **vimaedit** is the smoothing LOCATEdit replaced: their 'error' is a distance from the closed form.")
run = pick_run()
if run is None:
    st.stop()
if not len(run.solve_steps):
    st.info("This run solved nothing (no blend words).")
    st.stop()
chosen = st.multiselect("solvers", list(EXACT_PROBLEM_SOLVERS + OTHER_OBJECTIVES),
                        ["cg", "cholesky", "dense", "jacobi", "irls", "vimaedit"], key="solv_chosen")
warm = st.checkbox("warm start from the previous step", True, key="solv_warm")


@st.cache_data(show_spinner="Solving every step with every solver ...")
def table_for(run_id: str, chosen: tuple, warm: bool, _run):
    return compare_solvers(_run, chosen, warm_start=warm)


table = table_for(run.id, tuple(chosen), warm, run)
st.dataframe(summarize(table).round(6), hide_index=True, key="solv_summary")
cols = st.columns(2)
cols[0].plotly_chart(lines_figure(table, "step", "iterations", "solver", "iterations per step"), key="solv_iters")
cols[1].plotly_chart(lines_figure(table, "step", "seconds", "solver", "seconds per step", log_y=True),
                     key="solv_secs")
step = st.select_slider("convergence at step", list(run.solve_steps), int(run.solve_steps[-1]), key="solv_step")
curves = convergence(run, step, tuple(chosen))
st.plotly_chart(lines_figure(curves, "iteration", "residual", "solver", f"residual per iteration, step {step}",
                             log_y=True), key="solv_conv")
