"""Edit: run a LOCATEdit edit (ShapeWorld scene, uploaded image, or a run's source) and save it as a run."""
import dataclasses

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from analysis.figures import heatmap_figure, lines_figure, overlay, upscale
from dashboard import jobs
from dashboard.state import (intro, load, model_choices, model_or_error, pick_run, refresh_library, save_root,
                             use_navigation)
from locatedit.pipeline import EditParams, read_image
from locatedit.shapeworld.world import EDIT_TYPES, sample_edit

use_navigation()
st.header("Edit")
intro("Run an edit and keep it as a **run**: source image, source and target prompts, and the **blend words** whose "
      "cross-attention **m0** becomes the mask. The run records every step, so the other pages can look inside it "
      "without running the model again. ShapeWorld scenes come with their ground-truth edit.")

source_kind = st.radio("Source image", ["ShapeWorld scene", "Upload an image", "A run's source"], horizontal=True,
                       key="edit_source")
gt_mask = gt_target = None
defaults = {"source": "", "target": "", "blend": ""}
image = None
if source_kind == "ShapeWorld scene":
    cols = st.columns(2)
    kind = cols[0].selectbox("Edit type", sorted(EDIT_TYPES), index=sorted(EDIT_TYPES).index("change_colour"),
                             key="edit_type")
    seed = cols[1].number_input("Scene seed", 0, 100_000, 0, key="edit_seed")
    pair = sample_edit(np.random.default_rng(int(seed)), kind)
    src, gt_target, gt_mask = pair.render()
    image = Image.fromarray(src)
    defaults = {"source": pair.source_prompt, "target": pair.target_prompt, "blend": pair.blend_words}
elif source_kind == "Upload an image":
    upload = st.file_uploader("Image (PNG or JPEG; centre-cropped to a square)", type=["png", "jpg", "jpeg"],
                              key="edit_upload")
    if upload is not None:
        try:  # the pipeline's own reader: size checked from the header, fully decoded, clear messages
            image = read_image(upload)
        except ValueError as err:
            st.error(str(err))
            image = None
else:
    run = pick_run(key="edit_from_run", label="Source run", sidebar=False)
    if run is not None:
        image = run.image("source")
        defaults = {"source": run.meta["source_prompt"], "target": run.meta["target_prompt"],
                    "blend": " ".join(run.meta["blend_words"] or [])}

if image is not None:
    st.image(upscale(np.asarray(image.convert("RGB")), 192), caption="source", width=192)

with st.form("edit_form"):
    source_prompt = st.text_input("Source prompt", defaults["source"], key=f"sp_{defaults['source']}")
    target_prompt = st.text_input("Target prompt", defaults["target"], key=f"tp_{defaults['target']}")
    blend = st.text_input("Blend words (source word, target word)", defaults["blend"], key=f"bw_{defaults['blend']}")
    model_name = st.selectbox("Model", model_choices(), key="edit_model",
                              help="shapeworld runs on a CPU; sd15 needs SD 1.5 + IP-Adapter weights and a GPU")
    values = {}
    with st.expander("All hyperparameters (reference defaults)"):
        columns = st.columns(3)
        for k, f in enumerate(dataclasses.fields(EditParams)):
            default = getattr(EditParams(), f.name)
            if f.name == "store_self_attention":
                default = "per_step"  # exact re-solves on the refinement page; ~10 MB per ShapeWorld run
            col = columns[k % 3]
            if isinstance(default, bool):
                values[f.name] = col.checkbox(f.name, default, key=f"p_{f.name}")
            elif isinstance(default, int) and default is not None:
                values[f.name] = int(col.number_input(f.name, value=default, step=1, key=f"p_{f.name}"))
            elif isinstance(default, float):
                values[f.name] = float(col.number_input(f.name, value=default, format="%.4f", key=f"p_{f.name}"))
            elif default is None:
                text = col.text_input(f"{f.name} (blank = none)", "", key=f"p_{f.name}")
                values[f.name] = int(text) if text.strip().isdigit() else None
            else:
                options = EditParams.CHOICES[f.name]
                values[f.name] = col.selectbox(f.name, options, index=options.index(default), key=f"p_{f.name}")
    # A callback flag, not the button's return value: it survives a rerun between the click and the script body.
    st.form_submit_button("Run the edit", type="primary", on_click=lambda: st.session_state.update(edit_submit=True))

if st.session_state.pop("edit_submit", False):
    if image is None:
        st.error("Choose a source image first.")
    else:
        try:
            params = EditParams(**values)
        except ValueError as err:
            st.error(f"Hyperparameters: {err}")
            params = None
        model_and_lock = model_or_error(model_name) if params else (None, None)
        if params and model_and_lock[0] is not None:
            job = jobs.submit(model_and_lock, image, source_prompt, target_prompt, blend.strip() or None, params,
                              save_root(), gt_mask=gt_mask if source_kind == "ShapeWorld scene" else None,
                              gt_target=gt_target if source_kind == "ShapeWorld scene" else None)
            st.session_state["edit_job"] = job.id


@st.fragment(run_every=0.5)
def job_status() -> None:
    job = jobs.registry().get(st.session_state.get("edit_job", ""))
    if job is None:
        return
    if not job.done.is_set():
        st.progress(job.fraction, text=f"{job.stage}: step {job.step} of {job.total}")
        return
    if job.error:
        st.error(f"The edit failed: {job.error}")
        return
    for warning in job.warnings:
        st.warning(warning)
    if st.session_state.get("shown_job") != job.id:
        st.session_state["shown_job"] = job.id
        refresh_library()
        st.rerun()


job_status()
finished = jobs.registry().get(st.session_state.get("edit_job", ""))
if finished is not None and finished.done.is_set() and finished.run_path:
    run = load(finished.run_path)
    st.success(f"Saved run **{run.id}**; it is selected in the sidebar for every page.")
    st.query_params["run"] = run.id
    source = np.asarray(run.image("source"))
    panels = st.columns(4)
    for col, name in zip(panels[:3], ("source", "reconstruction", "edited")):
        col.image(upscale(np.asarray(run.image(name))), caption=name, width="stretch")
    final = run.arrays["mask"][-1, 1] if run.meta["blend_words"] else np.zeros((1, 1))
    panels[3].image(upscale(overlay(source, final.astype(float))), caption="final mask over the source",
                    width="stretch")
    if run.meta["blend_words"]:
        steps = run.solve_steps
        step = st.slider("Mask at step", int(steps.min()), int(steps.max()), int(steps.max()), key="edit_mask_step")
        cols = st.columns(2)
        cols[0].plotly_chart(heatmap_figure(run.arrays["mask"][step, 1].astype(float), f"blend mask, step {step}",
                                            colorscale="Greys"), key="edit_mask_fig")
        area = run.arrays["mask"][steps, 1].mean((1, 2))
        cols[1].plotly_chart(lines_figure(pd.DataFrame({"step": steps, "mask area": area}), "step", "mask area",
                                          title="mask area over time"), key="edit_area_fig")
    st.caption(f"timings (s): {', '.join(f'{k} {v:.2f}' for k, v in run.meta['timings'].items())}")
