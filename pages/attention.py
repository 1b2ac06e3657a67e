"""Attention: per token, per layer, per step cross-attention, and m0 against m* step by step."""
import numpy as np
import pandas as pd
import streamlit as st

from analysis.figures import heatmap_figure, image_figure, lines_figure, overlay, upscale
from dashboard.state import intro, pick_run, use_navigation

use_navigation()
st.header("Attention")
intro("Cross-attention says where each prompt token looks. LOCATEdit reads the **blend word**'s maps at the coarse "
      "level (the mask resolution) as **m0**, then refines them over the self-attention graph **S** into **m\\***. "
      "Move the step slider: early steps are noisy, late ones sharp; the stored maps already include the P2P edits "
      "(×15 on new words during the first 40 % of steps) unless the run says otherwise.")
run = pick_run()
if run is None:
    st.stop()
a = run.arrays
cross = a["cross_maps"]  # (steps, layers, 2, tokens, r, r)
steps, layers = cross.shape[0], cross.shape[1]
source = np.asarray(run.image("source"))

cols = st.columns(4)
branch = cols[0].radio("Branch", ["source", "target"], horizontal=True, key="att_branch")
row = 0 if branch == "source" else 1
tokens = run.meta["tokens"][branch]
token = cols[1].selectbox("Token", list(range(1, len(tokens))), format_func=lambda i: f"{i}: {tokens[i]}",
                          key="att_token")
names = run.meta.get("layers", {}).get("cross", [])
layer = cols[2].selectbox("Layer", ["mean"] + list(range(layers)), key="att_layer",
                          format_func=lambda i: i if i == "mean" or i >= len(names) else names[i].split(".attn2")[0])
step = cols[3].slider("Step", 0, steps - 1, steps - 1, key="att_step")

maps = cross[step, :, row, token].astype(np.float32)
shown = maps.mean(0) if layer == "mean" else maps[int(layer)]
panels = st.columns(3)
panels[0].plotly_chart(image_figure(upscale(overlay(source, shown)), f"'{tokens[token]}' over the source"),
                       key="att_overlay")
panels[1].plotly_chart(heatmap_figure(shown, f"cross-attention, step {step}, layer {layer}"), key="att_map")
over_steps = cross[:, :, row, token].astype(np.float32).mean(1).sum((1, 2))
panels[2].plotly_chart(lines_figure(pd.DataFrame({"step": np.arange(steps), "total attention": over_steps}), "step",
                                    "total attention", title=f"'{tokens[token]}' mass per step"), key="att_mass")

st.subheader("m0 against m*")
if not run.meta["blend_words"]:
    st.info("This run has no blend words, so no mask was built.")
    st.stop()
g = int(round(np.sqrt(a["m0"].shape[-1])))
solved = run.solve_steps
m_star = a["m_star"][step] if step in solved else None
words = run.meta["blend_words"]
cols = st.columns(4)
for k, (name, word) in enumerate(zip(("source", "target"), words)):
    cols[2 * k].plotly_chart(heatmap_figure(a["m0"][step, k].reshape(g, g), f"m0 '{word}' ({name})", height=260),
                             key=f"att_m0_{k}")
    if m_star is not None:
        cols[2 * k + 1].plotly_chart(heatmap_figure(m_star[k].reshape(g, g), f"m* '{word}' ({name})", height=260),
                                     key=f"att_mstar_{k}")
    else:
        cols[2 * k + 1].info(f"No solve at step {step}: the graph starts at step {int(solved.min())}.")
st.caption(f"Solver per step: {run.params['solver']}, iterations "
           f"{int(a['solver_iterations'][solved].mean()) if len(solved) else 0} on average.")
