"""Model: the diffusion model on its own: text to image with per-token attention, its training, its quality gates."""
from pathlib import Path

import numpy as np
import streamlit as st

from analysis.figures import heatmap_figure, lines_figure, upscale
from analysis.training import model_card, quality_gates, training_logs
from dashboard.state import get_model, intro, model_choices, model_or_error, use_navigation
from locatedit.generate import generate
from locatedit.loading import ModelNotAvailableError, resolve

use_navigation()
st.header("Model")
intro("Before asking why an edit leaks, look at the model alone. Generate from a prompt and see where each word's "
      "**cross-attention** lands at both levels LOCATEdit reads (the coarse one is **m0**'s). The embedded ShapeWorld "
      "model was trained here; its training curves and quality gates say how far to trust it.")


@st.cache_data(max_entries=64, show_spinner="Generating ...")
def cached_generation(name: str, prompt: str, seed: int, steps: int, guidance: float) -> dict:
    """One text-to-image call per distinct setting; a redraw never reruns the model."""
    model, lock = get_model(name)
    with lock:
        gen = generate(model, prompt, seed=seed, steps=steps, guidance=guidance)
    return {"image": np.asarray(gen.image), "tokens": gen.tokens, "maps": gen.maps}


name = st.selectbox("Model", model_choices(), key="model_name")
generate_tab, training_tab, gates_tab = st.tabs(["Generate", "Training", "Quality gates"])

with generate_tab:
    with st.form("generate_form"):
        prompt = st.text_input("Prompt", "a red circle on a blue striped background", key="gen_prompt")
        cols = st.columns(3)
        seed = int(cols[0].number_input("Seed", 0, 1_000_000, 1, key="gen_seed"))
        steps = int(cols[1].number_input("Steps", 2, 200, 50, key="gen_steps"))
        guidance = float(cols[2].number_input("Guidance", 1.0, 20.0, 5.0, step=0.5, key="gen_guidance"))
        st.form_submit_button("Generate", type="primary", on_click=lambda: st.session_state.update(gen_submit=True))
    if st.session_state.pop("gen_submit", False):
        model, _ = model_or_error(name)
        if model is not None:
            try:
                model.spec.check_prompt(prompt)
                st.session_state["generation"] = cached_generation(name, prompt, seed, steps, guidance)
            except ValueError as err:  # unknown words of a closed vocabulary, prompts too long
                st.error(str(err))
    result = st.session_state.get("generation")
    if result is None:
        st.info("Write a prompt and press **Generate**.")
    else:
        st.image(upscale(result["image"], 256), caption=" ".join(result["tokens"]), width=256)
        for res in sorted(result["maps"], reverse=True):
            st.markdown(f"**Cross-attention at {res}×{res}** (mean over layers, heads and steps; one colour scale "
                        "per word)")
            columns = st.columns(len(result["tokens"]))
            for k, (col, word) in enumerate(zip(columns, result["tokens"])):
                col.plotly_chart(heatmap_figure(result["maps"][res][k], word, height=170), key=f"gen_map_{res}_{k}")

with training_tab:
    try:
        spec = resolve(name)
        folder = Path(spec.pipeline) if Path(spec.pipeline).is_dir() else None
    except ModelNotAvailableError as err:
        st.error(str(err))
        folder = None
    logs = training_logs(folder) if folder else None
    if logs is None or logs.empty:
        st.info("This model has no training logs (only models trained by `python -m locatedit.shapeworld train` do).")
    else:
        card = model_card(folder)
        if card:
            with st.expander("Model card", expanded=False):
                st.markdown(card)
        stage = st.radio("Stage", list(dict.fromkeys(logs.sort_values("order")["stage"])), horizontal=True,
                         key="train_stage")
        part = logs[logs["stage"] == stage]
        st.plotly_chart(lines_figure(part, "step", "value", colour="metric", title=f"{stage}: logged losses",
                                     log_y=True), key="train_curve")

with gates_tab:
    gates = quality_gates()
    if gates is None:
        st.info("No gates measured yet: `python benchmarks/bench_shapeworld.py` writes them.")
    else:
        st.caption("The committed ShapeWorld model, measured by `benchmarks/bench_shapeworld.py` on held-out scenes.")
        st.dataframe(gates, hide_index=True, width="stretch")
