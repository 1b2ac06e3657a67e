"""LOCATEdit Lab: the dashboard's entry point (navigation only; pages live in pages/)."""
import streamlit as st

from dashboard.state import use_navigation

use_navigation()
st.set_page_config(page_title="LOCATEdit Lab", page_icon=":material/biotech:", layout="wide")

PAGES = {
    "Start": [
        st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
        st.Page("pages/edit.py", title="Edit", icon=":material/edit:", url_path="edit"),
        st.Page("pages/model.py", title="Model", icon=":material/model_training:", url_path="model"),
    ],
    "Inspect a run": [
        st.Page("pages/attention.py", title="Attention", icon=":material/visibility:", url_path="attention"),
        st.Page("pages/graph.py", title="CASA graph", icon=":material/hub:", url_path="graph"),
        st.Page("pages/spectrum.py", title="Spectrum", icon=":material/equalizer:", url_path="spectrum"),
        st.Page("pages/refinement.py", title="Mask refinement", icon=":material/tune:", url_path="refinement"),
        st.Page("pages/tau.py", title="τ sensitivity", icon=":material/percent:", url_path="tau"),
        st.Page("pages/solvers.py", title="Solvers", icon=":material/speed:", url_path="solvers"),
    ],
    "Many runs": [
        st.Page("pages/benchmark.py", title="Benchmark & triage", icon=":material/table_chart:", url_path="benchmark"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
    ],
}
st.navigation(PAGES).run()
