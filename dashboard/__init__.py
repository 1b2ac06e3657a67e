"""Streamlit-side helpers shared by the pages: the run library, cached models and runs, page intros."""
