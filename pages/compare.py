"""Compare: two runs side by side: images, masks, their difference and metric deltas."""
import numpy as np
import pandas as pd
import streamlit as st

from analysis.figures import image_figure, overlay, upscale
from analysis.metrics import run_metrics
from dashboard.state import intro, pick_run, use_navigation

use_navigation()
st.header("Compare")
intro("Two runs of the same image (different settings or methods) side by side: where do their masks disagree, "
      "and what did that cost in the background? Red: only run A's mask; blue: only run B's.")
cols = st.columns(2)
with cols[0]:
    a = pick_run(key="cmp_a", label="Run A", sidebar=False)
with cols[1]:
    b = pick_run(key="cmp_b", label="Run B", sidebar=False)
if a is None or b is None:
    st.stop()
for col, run in zip(cols, (a, b)):
    col.caption(f"{run.meta['target_prompt']} · λ={run.params['lam']:.2f}, solver={run.params['solver']}, "
                f"τ={run.params['keep_percent']:.1f}")
    images = [np.asarray(run.image(n)) for n in ("source", "edited")]
    col.image(upscale(np.hstack(images), 384), caption="source | edited", width="stretch")
if a.arrays["mask"].shape != b.arrays["mask"].shape:
    st.warning("The runs' masks have different sizes (different models?): no mask difference.")
else:
    ma, mb = a.arrays["mask"][-1, 1], b.arrays["mask"][-1, 1]
    diff = np.zeros((*ma.shape, 3), np.uint8)
    diff[ma & ~mb] = (230, 50, 50)
    diff[mb & ~ma] = (50, 90, 230)
    diff[ma & mb] = (200, 200, 200)
    panels = st.columns(3)
    panels[0].plotly_chart(image_figure(upscale(overlay(np.asarray(a.image("source")), ma.astype(float))),
                                        "mask A"), key="cmp_ma")
    panels[1].plotly_chart(image_figure(upscale(overlay(np.asarray(b.image("source")), mb.astype(float))),
                                        "mask B"), key="cmp_mb")
    panels[2].plotly_chart(image_figure(upscale(diff), "A only (red), B only (blue), both (grey)"), key="cmp_diff")
    edited_diff = np.abs(np.asarray(a.image("edited")).astype(int) - np.asarray(b.image("edited")).astype(int))
    st.metric("mean |edited A − edited B|", f"{edited_diff.mean() / 255:.4f}")
ma_, mb_ = run_metrics(a), run_metrics(b)
rows = [{"metric": k, "A": ma_[k], "B": mb_.get(k), "B − A": (mb_.get(k) - ma_[k])
         if isinstance(ma_[k], float) and isinstance(mb_.get(k), float) else None}
        for k in ma_ if not isinstance(ma_[k], str)]
st.dataframe(pd.DataFrame(rows).round(4), hide_index=True, key="cmp_metrics")
