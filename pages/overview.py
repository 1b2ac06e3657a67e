"""Landing page: what the lab is for, and one CASA refinement worked live."""
import numpy as np
import streamlit as st

from analysis.figures import heatmap_figure, image_figure, overlay, upscale
from analysis.metrics import mask_iou
from dashboard.state import pick_run, use_navigation
from locatedit.graph import DEFAULT_SOLVER, LAM, SOLVERS, binary_mask, refine
from locatedit.synthetic import casa_case

use_navigation()
st.title("LOCATEdit Lab")
st.markdown(
    "LOCATEdit edits an image from a source and a target prompt and keeps the edit where it belongs with a mask: "
    "the blend word's cross-attention **m0** is refined over a graph built from self-attention **S** by solving "
    "**m\\* = (Λ + λL)⁻¹ Λ m0**, where **L** is the Laplacian of (S + Sᵀ)/2 and **Λ** = diag(σ(α(m0 − c))²) says how "
    "much each patch trusts its own attention. This lab shows why an edit stays put or leaks."
)

st.subheader("A ready-made edit, page by page")
run = pick_run()
if run is not None:
    cols = st.columns(4)
    source = np.asarray(run.image("source"))
    for col, name in zip(cols[:3], ("source", "reconstruction", "edited")):
        col.image(upscale(np.asarray(run.image(name))), caption=name, width="stretch")
    if run.meta["blend_words"]:
        cols[3].image(upscale(overlay(source, run.arrays["mask"][-1, 1].astype(float))), caption="mask",
                      width="stretch")
    st.markdown(f"**{run.meta['source_prompt']}** → **{run.meta['target_prompt']}**, blend words "
                f"{run.meta['blend_words']}. Follow it through the lab:")
    for page, text in (
        ("pages/attention.py", "where the blend word looks at each step (m0), and what the graph makes of it (m*)"),
        ("pages/graph.py", "click a patch: are its strongest neighbours the same object, or just nearby?"),
        ("pages/spectrum.py", "the Laplacian's own cuts: does the Fiedler vector outline the object?"),
        ("pages/refinement.py", "move λ, α, c and the threshold and watch the mask and its spill change"),
        ("pages/tau.py", "how much of the CLIP text offset the edit needs"),
        ("pages/solvers.py", "the closed form against iterative solvers on this run's systems"),
        ("pages/compare.py", "this run against another: where do the masks disagree?"),
    ):
        st.page_link(page, label=text, query_params={"run": st.query_params.get("run", run.id)})

st.subheader("One CASA refinement, live (synthetic attention)")
st.caption(
    "A ShapeWorld scene with *synthetic* attention (patch colours + position through a softmax, so S is "
    "row-stochastic and block-structured) and an m0 with spill blobs. Move λ to see the graph pull the spill back."
)


@st.cache_data(show_spinner=False)
def example(seed: int):
    return casa_case(seed)


cols = st.columns(3)
seed = cols[0].number_input("scene seed", 0, 10_000, 4, key="seed")
lam = cols[1].slider("λ (Laplacian weight)", 0.0, 5.0, float(round(LAM, 2)), 0.01, key="lam")
solver = cols[2].selectbox("solver", [s for s in SOLVERS if s != "vimaedit"], index=list(SOLVERS).index(DEFAULT_SOLVER),
                           key="solver")
case = example(int(seed))
result = refine(case.m0, case.S, lam=lam, solver=solver)
res = case.resolution
truth = case.truth.ravel()


m0_mask, refined_mask = binary_mask(case.m0), binary_mask(result.solution)
panels = st.columns(4)
panels[0].plotly_chart(image_figure(case.image, case.caption[:40]), key="img")
panels[1].plotly_chart(heatmap_figure(case.m0.reshape(res, res), f"m0 ('{case.word}')"), key="m0")
panels[2].plotly_chart(heatmap_figure(result.solution.reshape(res, res), "m*"), key="mstar")
panels[3].plotly_chart(heatmap_figure(refined_mask.reshape(res, res).astype(float), "mask (minmax > 0.2204)",
                                      colorscale="Greys"), key="mask")
metrics = st.columns(4)
m0_iou, refined_iou = mask_iou(m0_mask, truth), mask_iou(refined_mask, truth)
metrics[0].metric("IoU of the m0 mask", f"{m0_iou:.3f}")
metrics[1].metric("IoU of the m* mask", f"{refined_iou:.3f}", f"{refined_iou - m0_iou:+.3f}")
metrics[2].metric("solver iterations", result.iterations)
metrics[3].metric("solve time", f"{result.seconds * 1000:.1f} ms")
