"""Process-wide CPU settings.

Why this exists: on the 2-core machines this project targets, two BLAS thread pools (numpy/scipy's OpenBLAS and
torch's MKL/OpenMP) spin against each other, and torch 2.13's batched LU returns garbage after
``torch.set_num_threads(n >= 2)``. So the thread count is read from the environment once, before torch is imported,
and applied through the environment variables the libraries read at start-up.
"""
from __future__ import annotations

import os

THREADS_ENV = "LOCATEDIT_THREADS"


def configure_threads(default: int = 1) -> int:
    """Set the BLAS/OpenMP thread count from ``LOCATEDIT_THREADS`` (default 1) and return it.

    Call before importing torch, numpy or scipy for it to take effect everywhere; later calls only change torch's
    intra-op count, which is safe for one thread (the batched-LU hazard needs two or more).
    """
    threads = int(os.environ.get(THREADS_ENV, default))
    if threads < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {threads}")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    import sys

    if "torch" in sys.modules and threads == 1:
        sys.modules["torch"].set_num_threads(1)
    return threads
