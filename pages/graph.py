"""CASA graph: click a patch to see its strongest self-attention neighbours; semantic or spatial?"""
import numpy as np
import streamlit as st

from analysis.figures import patch_picker_figure, upscale
from analysis.graph_checks import graphml_bytes, patch_neighbours, semantic_vs_spatial
from analysis.metrics import downsample_mask
from dashboard.state import intro, pick_run, use_navigation

use_navigation()
st.header("CASA graph")
intro("Each patch is a node; the edge weights are the symmetrised self-attention **S_sym = (S + Sᵀ)/2** averaged over "
      "the graph-resolution layers and the solve steps. **Click a patch** to draw its top-k neighbours (bigger = "
      "stronger). If the graph were only spatial proximity, the neighbours would hug the patch; a semantic graph "
      "reaches across the image to patches of the same object or texture.")
run = pick_run()
if run is None:
    st.stop()
S = run.arrays["self_attention_mean"]
cols = st.columns(3)
branch = cols[0].radio("Branch", ["source", "target"], horizontal=True, key="graph_branch")
k = cols[1].slider("k (neighbours)", 1, 32, 8, key="graph_k")
S_row = S[0 if branch == "source" else 1]
n = S_row.shape[0]
g = int(round(np.sqrt(n)))
image = upscale(np.asarray(run.image("source")), 384)

selected = st.session_state.get("graph_patch", n // 2 + g // 2)
event = st.session_state.get("graph_click")
if event and event["selection"]["point_indices"]:
    selected = int(event["selection"]["point_indices"][0])
    st.session_state["graph_patch"] = selected
table = patch_neighbours(S_row, selected, k)
left, right = st.columns([3, 2])
left.plotly_chart(patch_picker_figure(image, g, selected, table), key="graph_click", on_select="rerun",
                  selection_mode="points")
right.markdown(f"**Patch {selected}** (row {selected // g}, col {selected % g}): its {k} strongest neighbours")
right.dataframe(table.round(4), hide_index=True, key="graph_table")
right.metric("mean neighbour distance (patches)", f"{table.distance.mean():.2f}")

st.subheader("Semantic or spatial?")
truth = run.gt_mask()
segments = None
if truth is not None:
    segments = downsample_mask(truth, g).astype(int)
report = semantic_vs_spatial(S_row, segments, k=k)
s = report.summary
cols = st.columns(4)
cols[0].metric("neighbour distance / pure-distance graph's", f"{s['mean_distance_ratio']:.2f}",
               help="1 = the graph links only the nearest patches")
if segments is not None:
    cols[1].metric("purity (same segment)", f"{s['purity']:.3f}")
    cols[2].metric("pure-distance graph's purity", f"{s['spatial_purity']:.3f}")
    if "purity_boundary" in s:
        cols[3].metric("purity at the object boundary", f"{s['purity_boundary']:.3f}",
                       f"{s['purity_boundary'] - s['spatial_purity_boundary']:+.3f} vs distance")
else:
    cols[1].info("No ground-truth mask in this run: purity needs one (ShapeWorld runs have it).")
st.download_button("Download the top-k graph (GraphML, for networkx / Gephi)", graphml_bytes(S_row, k),
                   file_name=f"{run.id}-casa-k{k}.graphml", key="graph_download")
