"""The paper's validation checks as plain functions over saved runs (no Streamlit), plus the figures pages draw."""
