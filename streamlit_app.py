"""LOCATEdit Lab: the dashboard's entry point (navigation only; pages live in pages/)."""
import streamlit as st

st.set_page_config(page_title="LOCATEdit Lab", page_icon=":material/biotech:", layout="wide")

pages = [
    st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
]
st.navigation(pages).run()
