"""The dashboard runs headless (AppTest) and its widgets change what it shows."""
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def _app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=60)


def test_overview_renders_a_real_refinement():
    at = _app().run()
    assert not at.exception, at.exception
    assert "LOCATEdit Lab" in at.title[0].value
    labels = [m.label for m in at.metric]
    assert "IoU of the m* mask" in labels
    assert int(at.metric[2].value) > 1  # the default iterative solver really iterated


def test_lambda_zero_leaves_m0_unchanged():
    at = _app().run()
    at.slider(key="lam").set_value(0.0).run()
    assert not at.exception
    m0_iou, refined_iou = at.metric[0].value, at.metric[1].value
    assert m0_iou == refined_iou  # with λ = 0 the system is Λ m = Λ m0, so m* = m0
