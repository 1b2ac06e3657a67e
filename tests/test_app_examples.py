"""The dashboard as a newcomer opens it: the committed example runs of the trained model, and a real τ sweep."""

import pytest
from streamlit.testing.v1 import AppTest

from locatedit.loading import REPO_ROOT
from locatedit.run import list_runs

APP = str(REPO_ROOT / "streamlit_app.py")
EXAMPLES = REPO_ROOT / "data" / "examples"


@pytest.fixture(autouse=True)
def default_library(monkeypatch):
    monkeypatch.delenv("LOCATEDIT_RUNS", raising=False)


def test_examples_are_ready_and_the_landing_page_walks_through_one():
    examples = list_runs(EXAMPLES)
    assert len(examples) >= 3 and all(r.meta["model"] == "shapeworld" for r in examples)
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    assert at.selectbox(key="run").value in {r.id for r in examples}
    links = [e for e in at.get("page_link")]
    assert len(links) >= 6  # one per page of the walkthrough


def test_tau_sweep_runs_edits_and_finds_where_tau_matters(tmp_path):
    run = list_runs(EXAMPLES)[0]
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["run"] = run.id
    at.run()
    at.switch_page("pages/tau.py").run()
    at.multiselect(key="tau_keeps").set_value([0.0, 100.0])
    at.button(key="tau_run").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table.keep_percent) == [0.0, 100.0]
    assert (table.edit_region_change >= 0).all() and table.clip_change.between(-1e-6, 2).all()
    assert (run.path / "cache" / "tau").is_dir()  # cached per (run, τ): a redraw does not recompute
