"""Spectrum: the smallest eigenpairs of the CASA Laplacian, the Fiedler vector and spectral clusters."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.figures import heatmap_figure, image_figure, overlay, upscale
from analysis.metrics import downsample_mask
from analysis.spectrum import best_segment_iou, fiedler_split, laplacian_spectrum, spectral_clusters
from dashboard.state import intro, pick_run, use_navigation

use_navigation()
st.header("Spectrum")
intro("The Laplacian **L = D − S_sym** has one zero eigenvalue per connected part of the graph; the next small "
      "ones describe the cheapest cuts. The **Fiedler vector** (second eigenvector) is the graph's best two-way "
      "split; a big **eigengap** after the k-th eigenvalue says the graph falls into k regions. If these regions "
      "follow the object, the Laplacian term in **m\\* = (Λ + λL)⁻¹ Λ m0** pulls the mask to the object's edges.")
run = pick_run()
if run is None:
    st.stop()
cols = st.columns(3)
branch = cols[0].radio("Branch", ["source", "target"], horizontal=True, key="spec_branch")
k = cols[1].slider("eigenpairs", 4, 32, 12, key="spec_k")
clusters = cols[2].slider("spectral clusters", 2, 8, 3, key="spec_clusters")
S = run.arrays["self_attention_mean"][0 if branch == "source" else 1]
g = int(round(np.sqrt(S.shape[0])))


@st.cache_data(show_spinner="Computing eigenpairs ...")
def spectrum_of(run_id: str, branch: str, k: int, _S):
    return laplacian_spectrum(_S, k=k)


spec = spectrum_of(run.id, branch, k, S)
fig = go.Figure(go.Scatter(x=np.arange(1, len(spec.eigenvalues) + 1), y=spec.eigenvalues, mode="lines+markers",
                           hovertemplate="λ%{x}: %{y:.4f}<extra></extra>"))
fig.add_vline(x=spec.eigengap_index + 0.5, line_dash="dot", annotation_text=f"largest gap ({spec.eigengap:.3f})")
fig.update_layout(title="smallest eigenvalues of L", height=300, xaxis_title="index", yaxis_title="eigenvalue",
                  margin=dict(l=10, r=10, t=40, b=10))
st.plotly_chart(fig, key="spec_values")
st.caption(f"near-zero eigenvalues (connected components): {spec.near_zero}")
source = np.asarray(run.image("source"))
panels = st.columns(4)
panels[0].plotly_chart(heatmap_figure(spec.fiedler.reshape(g, g), "Fiedler vector", colorscale="RdBu"),
                       key="spec_fiedler")
vector = panels[1].slider("eigenvector", 2, len(spec.eigenvalues), 3, key="spec_vector")
panels[1].plotly_chart(heatmap_figure(spec.eigenvectors[:, vector - 1].reshape(g, g), f"eigenvector {vector}",
                                      colorscale="RdBu"), key="spec_vec")
labels = spectral_clusters(S, clusters)
panels[2].plotly_chart(heatmap_figure(labels.reshape(g, g).astype(float), f"{clusters} spectral clusters",
                                      colorscale="Turbo"), key="spec_clusters_fig")
split = fiedler_split(spec).reshape(g, g)
panels[3].plotly_chart(image_figure(upscale(overlay(source, split.astype(float), colour=(40, 120, 255))),
                                    "Fiedler split over the image"), key="spec_split")
truth = run.gt_mask()
if truth is not None:
    small = downsample_mask(truth, g)
    iou_cluster, _ = best_segment_iou(labels, small)
    iou_fiedler, _ = best_segment_iou(split.ravel().astype(int), small)
    st.dataframe(pd.DataFrame({"segmentation": ["Fiedler split", f"{clusters} spectral clusters (best cluster)"],
                               "IoU with the ground-truth edit region": [iou_fiedler, iou_cluster]}).round(3),
                 hide_index=True, key="spec_iou")
