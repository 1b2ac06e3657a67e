"""Mask refinement: re-solve the run's saved m0 and S with other λ, α, c, threshold and top-k, live."""
import numpy as np
import streamlit as st

from analysis.ablation import mask_limits, resolve, spill
from analysis.figures import heatmap_figure, image_figure, overlay, upscale
from analysis.metrics import grid_mask_iou
from dashboard.state import intro, pick_run, use_navigation
from locatedit import graph

use_navigation()
st.header("Mask refinement")
intro("The mask is **m\\* = (Λ + λL)⁻¹ Λ m0**, solved at every step and summed. **λ** weighs the graph against "
      "the attention; **Λ = diag(σ(α(m0 − c))²)** says how much a patch trusts its own attention (**α** the slope, "
      "**c** the centre). Every slider re-solves from the saved maps in milliseconds; no diffusion runs. "
      "λ = 0 (left) is the raw cross-attention mask.")
run = pick_run()
if run is None:
    st.stop()
if not run.meta["blend_words"]:
    st.info("This run has no blend words, so there is no mask to refine.")
    st.stop()
p = run.params
cols = st.columns(5)
lam = cols[0].slider("λ", 0.0, 10.0, float(round(p["lam"], 2)), 0.01, key="ref_lam")
alpha = cols[1].slider("α", 0.1, 20.0, float(p["alpha"]), 0.01, key="ref_alpha")
center = cols[2].slider("c", 0.0, 1.0, float(p["center"]), 0.001, key="ref_center")
threshold = cols[3].slider("threshold", 0.0, 1.0, float(p["blend_threshold"]), 0.001, key="ref_threshold")
n = run.arrays["m0"].shape[-1]
topk = cols[4].select_slider("top-k", ["dense", 4, 8, 16, 32, 64, 128], "dense", key="ref_topk")
topk = None if topk == "dense" or topk >= n else int(topk)
solver = st.selectbox("solver", list(graph.SOLVERS), list(graph.SOLVERS).index(graph.DEFAULT_SOLVER), key="ref_solver")


@st.cache_data(max_entries=256, show_spinner=False)
def solved(run_id: str, lam, alpha, center, solver, topk, threshold, _run):
    return resolve(_run, lam=lam, alpha=alpha, center=center, solver=solver, topk=topk, threshold=threshold)


@st.cache_data(max_entries=64, show_spinner=False)
def limits_of(run_id: str, _run) -> dict:
    return mask_limits(_run)


refined = solved(run.id, lam, alpha, center, solver, topk, threshold, run)
raw = solved(run.id, 0.0, alpha, center, "cg", None, threshold, run)
source = np.asarray(run.image("source"))
panels = st.columns(4)
panels[0].plotly_chart(image_figure(upscale(overlay(source, raw.mask.astype(float))), "λ = 0 mask"), key="ref_raw")
panels[1].plotly_chart(image_figure(upscale(overlay(source, refined.mask.astype(float))), f"λ = {lam} mask"),
                       key="ref_refined")
g = refined.mask.shape[0]
panels[2].plotly_chart(heatmap_figure(refined.map_sum[1].reshape(g, g), "Σ m* (target word)"), key="ref_map")
truth = run.gt_mask()
if truth is not None:
    panels[3].plotly_chart(image_figure(upscale(overlay(source, truth.astype(float), colour=(40, 200, 80))),
                                        "ground truth"), key="ref_truth")
    raw_iou, refined_iou = (grid_mask_iou(r.mask, truth) for r in (raw, refined))
    m = st.columns(4)
    m[0].metric("IoU (λ = 0)", f"{raw_iou:.3f}")
    m[1].metric(f"IoU (λ = {lam})", f"{refined_iou:.3f}", f"{refined_iou - raw_iou:+.3f}")
    m[2].metric("spill (λ = 0)", f"{spill(raw.mask.astype(float), truth):.3f}",
                help="share of the mask outside the dilated ground truth")
    m[3].metric(f"spill (λ = {lam})", f"{spill(refined.mask.astype(float), truth):.3f}",
                f"{spill(refined.mask.astype(float), truth) - spill(raw.mask.astype(float), truth):+.3f}",
                delta_color="inverse")
    limits = limits_of(run.id, run)
    if limits:
        st.markdown(
            f"**Where the run's own IoU goes** (its saved mask: {p['blend_threshold']:.4g} threshold, λ = "
            f"{p['lam']:.3g}): the best mask on the {g}×{g} grid would reach **{limits['mask_iou_grid_ceiling']:.3f}**; "
            f"its summed map at its best threshold ({limits['best_threshold']:.2f}) "
            f"**{limits['mask_iou_best_threshold']:.3f}**; without the Laplacian "
            f"**{limits['mask_iou_unrefined']:.3f}**. A low ceiling is the model's resolution, a gap to the best "
            "threshold is the threshold, and the rest is the shape of the attention.")

    @st.cache_data(show_spinner="Sweeping λ ...")
    def lam_curve(run_id: str, alpha, center, _run):
        from analysis.ablation import sweep

        return sweep(_run, lams=(0.0, 0.1, 0.25, 0.5, 0.78, 1.5, 3.0, 6.0, 10.0), alphas=(alpha,)).drop(columns="mask")

    from analysis.figures import lines_figure

    curve = lam_curve(run.id, alpha, center, run)
    long = curve.melt("lam", ["iou", "spill"], "measure", "value")
    st.plotly_chart(lines_figure(long, "lam", "value", "measure", f"IoU and spill against λ (α = {alpha})"),
                    key="ref_curve")
st.caption(("exact re-solve from per-step S" if refined.exact else
            "approximate: this run stored S as its mean over steps (store_self_attention='per_step' for exact)")
           + f"; {refined.iterations} solver iterations in {1000 * refined.seconds:.1f} ms")
