"""Benchmark & triage: load a benchmark's results, sort, filter by failure signature, open any run."""
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from analysis.bench import summary_table
from analysis.figures import upscale
from analysis.triage import by_object_size
from dashboard.state import add_roots, intro, load, use_navigation
from locatedit.loading import REPO_ROOT

use_navigation()
st.header("Benchmark & triage")
intro("A benchmark folder from `python -m locatedit bench` holds one run per item and method and a results table. "
      "Sort by any metric, filter by **failure signature** (over-smoothing, background drift, structure loss), and "
      "open a run on the other pages to see why it leaked.")
candidates = sorted(str(p.parent) for p in (REPO_ROOT / "data").glob("**/results.csv"))
folder = st.selectbox("results folder", candidates, key="bench_folder") if candidates else None
typed = st.text_input("... or a path", "", key="bench_path")
folder = typed.strip() or folder
if not folder:
    st.info("No benchmark results found under data/. Run one, e.g. `python -m locatedit export-shapeworld --out "
            "data/shapeworld_bench && python -m locatedit bench --data data/shapeworld_bench --out data/bench`.")
    st.stop()
path = Path(folder) / "results.csv"
if not path.is_file():
    st.error(f"{folder} holds no results.csv: is it a benchmark output folder?")
    st.stop()
table = pd.read_csv(path, dtype={"key": str})
add_roots([Path(folder) / "runs" / method for method in table.method.unique()])
st.subheader("Summary (mean over items, NaN skipped)")
st.dataframe(summary_table(table).round(3), hide_index=True, key="bench_summary")
signatures = [c for c in table if c.startswith("fail_") and table[c].dtype == bool]  # the flags, not their scores
cols = st.columns(3)
methods = cols[0].multiselect("methods", sorted(table.method.unique()), sorted(table.method.unique()),
                              key="bench_methods")
signature = cols[1].selectbox("failure signature", ["any"] + signatures, key="bench_sig")
sort = cols[2].selectbox("sort by", [c for c in table.columns if table[c].dtype != object], key="bench_sort")
view = table[table.method.isin(methods)]
if signature != "any":
    view = view[view[signature].astype(bool)]
view = view.sort_values(sort)
st.dataframe(view.round(4), hide_index=True, key="bench_table")
if "object_m0_cells" in table:
    st.subheader("Goals by object size")
    st.caption("Edits of an existing object, by its size in cells of the cross-attention grid (m0), with where the "
               "mask IoU goes: the graph grid's best possible mask (grid_ceiling), the run's summed map at its best "
               "threshold, and the map without the Laplacian. goals_met: IoU >= 0.5, true background >= 30 dB and "
               "the target colour, all in the same edit.")
    st.dataframe(by_object_size(table[table.method.isin(methods)]).reset_index(), hide_index=True, key="bench_sizes")
st.subheader(f"Gallery ({min(len(view), 24)} of {len(view)})")
gallery = st.columns(6)
for i, (_, row) in enumerate(view.head(24).iterrows()):
    run_dir = Path(folder) / "runs" / row.method / row.key
    try:
        run = load(str(run_dir))
    except Exception:
        continue
    col = gallery[i % 6]
    col.image(upscale(np.hstack([np.asarray(run.image("source")), np.asarray(run.image("edited"))]), 256),
              caption=f"{row.method} · {row.key[-4:]}", width="stretch")
    col.page_link("pages/attention.py", label="open", query_params={"run": f"{row.method}/{run.id}"})
