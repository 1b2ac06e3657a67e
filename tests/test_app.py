"""Every dashboard page runs headless (AppTest) on a saved run, shows its key elements, and reacts to widgets."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from locatedit.loading import load_model
from locatedit.pipeline import EditParams, locatedit_edit
from locatedit.run import save_run
from locatedit.shapeworld.train import export_untrained
from locatedit.shapeworld.world import sample_edit

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two saved runs of one ShapeWorld edit (λ default and λ = 0) with ground truth, on a tiny seeded model."""
    root = tmp_path_factory.mktemp("runs")
    model = load_model(str(export_untrained(root.parent / "model", seed=0)), device="cpu")
    edit = sample_edit(np.random.default_rng(2), "change_colour")
    src, tgt, gt = edit.render()
    paths = []
    for name, lam in (("default", 0.78), ("nolap", 0.0)):
        result = locatedit_edit(model, src.copy(), edit.source_prompt, edit.target_prompt, edit.blend_words,
                                EditParams(steps=8, lam=lam, store_self_attention="per_step"))
        paths.append(save_run(result, root, run_id=name, gt_mask=gt, gt_target=tgt).path)
    old = os.environ.get("LOCATEDIT_RUNS")
    os.environ["LOCATEDIT_RUNS"] = str(root)
    yield paths
    if old is None:
        os.environ.pop("LOCATEDIT_RUNS")
    else:
        os.environ["LOCATEDIT_RUNS"] = old


def app(page: str | None = None, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_overview_renders_a_real_refinement(runs):
    at = app()
    assert "LOCATEdit Lab" in at.title[0].value
    assert "IoU of the m* mask" in [m.label for m in at.metric]
    assert int(at.metric[2].value) > 1  # the default iterative solver really iterated


def test_lambda_zero_leaves_m0_unchanged(runs):
    at = app()
    at.slider(key="lam").set_value(0.0).run()
    assert not at.exception
    assert at.metric[0].value == at.metric[1].value  # with λ = 0, Λ m = Λ m0, so m* = m0


def test_attention_page_follows_the_step_slider(runs):
    at = app("pages/attention.py", run="default")
    assert len(at.get("plotly_chart")) >= 5
    first = at.get("plotly_chart")[1].proto.spec
    at.slider(key="att_step").set_value(0).run()
    assert not at.exception and at.get("plotly_chart")[1].proto.spec != first


def test_graph_page_draws_neighbours_of_a_clicked_patch(runs):
    at = app("pages/graph.py", run="default")
    assert "Patch" in at.markdown[-1].value or any("Patch" in m.value for m in at.markdown)
    at.session_state["graph_click"] = {"selection": {"points": [], "point_indices": [37], "box": [], "lasso": []}}
    at.run()
    assert not at.exception
    assert any("**Patch 37**" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert len(table) == 8 and 37 not in table.patch.values
    at.slider(key="graph_k").set_value(4).run()
    assert len(at.dataframe[0].value) == 4
    assert any(m.label.startswith("purity") for m in at.metric)


def test_spectrum_page_reports_iou_with_the_truth(runs):
    at = app("pages/spectrum.py", run="default")
    assert len(at.get("plotly_chart")) >= 5
    assert at.dataframe[0].value["IoU with the ground-truth edit region"].between(0, 1).all()


def test_refinement_sliders_resolve_from_saved_maps(runs):
    at = app("pages/refinement.py", run="default")
    iou = {m.label: m.value for m in at.metric}
    at.slider(key="ref_lam").set_value(0.0).run()
    after = {m.label: m.value for m in at.metric}
    assert after["IoU (λ = 0)"] == after["IoU (λ = 0.0)"]  # λ = 0 shown beside itself is identical
    assert iou["IoU (λ = 0)"] == after["IoU (λ = 0)"]
    assert any("exact re-solve" in c.value for c in at.caption)
    assert any("Where the run's own IoU goes" in m.value and "grid would reach" in m.value for m in at.markdown)


def test_solver_page_table(runs):
    at = app("pages/solvers.py", run="default")
    summary = at.dataframe[0].value.set_index("solver")
    assert summary.loc["cg", "worst_mask_iou"] >= 0.99 and summary.loc["cholesky", "worst_relative_error"] < 1e-4


def test_compare_page_shows_metric_deltas(runs):
    at = app("pages/compare.py")
    at.selectbox(key="cmp_a").select("default").run()
    at.selectbox(key="cmp_b").select("nolap").run()
    assert not at.exception
    metrics = at.dataframe[0].value
    assert "mask_iou_gt" in set(metrics.metric)


def test_benchmark_page_reads_the_committed_results(runs):
    at = app("pages/benchmark.py")
    summary = at.dataframe[0].value
    assert {"locatedit", "no_laplacian", "p2p_localblend"} <= set(summary.method)
    sizes = at.dataframe[2].value
    assert set(sizes["size"]) == {"under 3 cells", "3 to 6 cells", "6 cells or more"}
    assert (sizes.grid_ceiling >= sizes.best_threshold_iou).all() and (sizes.goals_met <= sizes["items"]).all()
    at.selectbox(key="bench_sig").select("fail_background_drift").run()
    assert not at.exception and at.dataframe[1].value.fail_background_drift.all()


def test_a_broken_run_in_the_library_is_skipped(runs, tmp_path):
    (Path(os.environ["LOCATEDIT_RUNS"]) / "broken").mkdir(exist_ok=True)
    at = app("pages/attention.py")
    assert "broken" not in at.selectbox(key="run").options


def test_edit_page_runs_an_edit_in_the_background_and_saves_it(runs, tmp_path, monkeypatch):
    import time

    from dashboard import jobs

    model_dir = Path(runs[0]).parent.parent / "model"
    monkeypatch.setenv("LOCATEDIT_MODELS", str(model_dir))
    at = app("pages/edit.py")
    at.selectbox(key="edit_model").select(str(model_dir))
    at.number_input(key="p_steps").set_value(4)
    assert at.selectbox(key="p_target_mask").options == ["union", "source"]  # text knobs offer only valid values
    at.selectbox(key="p_target_mask").select("source")
    submit = [b for b in at.button if b.label == "Run the edit"]
    assert submit, [b.label for b in at.button]
    submit[0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    job = jobs.registry()[at.session_state["edit_job"]]
    assert job.done.wait(120) and job.error is None, job.error
    at.run()
    time.sleep(0.2)
    assert any("Saved run" in s.value for s in at.success)
    run_path = Path(job.run_path)
    assert (run_path / "edited.png").exists() and (run_path / "gt_mask.png").exists()
    saved = json.loads((run_path / "run.json").read_text())["params"]
    assert saved["target_mask"] == "source" and saved["steps"] == 4
    assert at.query_params["run"] == [run_path.name] or at.query_params["run"] == run_path.name


def test_model_page_generates_with_word_maps_and_refuses_unknown_words(runs):
    at = app("pages/model.py")
    at.text_input(key="gen_prompt").set_value("a red circle on a blue background")
    at.number_input(key="gen_steps").set_value(3)
    [b for b in at.button if b.label == "Generate"][0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.get("image")) == 1
    words = "a red circle on a blue background".split()
    # one heatmap per word at each of the two attention levels LOCATEdit reads
    assert len(at.get("plotly_chart")) >= 2 * len(words)
    at.text_input(key="gen_prompt").set_value("a pink circle on a blue background")
    [b for b in at.button if b.label == "Generate"][0].click().run()
    assert at.error and "pink" in at.error[0].value and "circle" in at.error[0].value  # names the vocabulary


def test_model_page_shows_the_training_record_of_the_embedded_model(runs):
    at = app("pages/model.py")
    stages = at.radio(key="train_stage").options
    assert {"unet", "ip_adapter"} <= set(stages)
    at.radio(key="train_stage").set_value("unet").run()
    assert not at.exception
    gates = at.dataframe[0].value
    assert {"gate", "measured", "goal", "pass"} <= set(gates.columns) and len(gates) >= 6
