"""Test-wide settings: offline hub, one BLAS thread per pool unless told otherwise (see locatedit.runtime)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LOCATEDIT_THREADS", "1")

from locatedit.runtime import configure_threads  # noqa: E402

configure_threads()
