"""CASA graph core of LOCATEdit: refine a cross-attention mask with a self-attention graph.

Given a row-stochastic self-attention matrix S (N x N) and an initial mask m0 (N,), LOCATEdit
solves the screened graph-Laplacian system

    (Λ + λ L) m* = Λ m0,   L = diag(S_sym 1) - S_sym,   S_sym = (S + Sᵀ)/2,
    Λ = diag(sigmoid(α (m0 - c))²)                      (the reference code squares the sigmoid)

which is the minimiser of J(m) = (m - m0)ᵀ Λ (m - m0) + λ mᵀ L m. The matrix is SPD and well
conditioned (cond ~15-40 for real attention), so a Jacobi-preconditioned CG that never forms
an N x N matrix beats any factorisation by 5-10x (see casa-solver-measurements.md §7).

Everything works on numpy arrays and torch tensors (CPU or CUDA) in their own library, batched
over a leading dimension. Internally arrays are (B, N) and S is (B, N, N) or a shared (N, N).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.linalg
import scipy.special
import torch

Array = Any  # np.ndarray or torch.Tensor

LAM = 0.7800247316325715  # λ, lb_lambda of the reference code
ALPHA = 2.61  # α, lb_alpha
CENTER = 0.4858  # c, the sigmoid centre ("threshold" in the reference code)
BLEND_THRESHOLD = 0.2204  # lb_th[0]: mask = minmax(m) > 0.2204 for latent blending
HUBER_DELTA = 0.05  # default δ of the robust (IRLS) variant
VIMA_GAMMA, VIMA_STEPS = 0.5, 5  # ViMAEdit smoothing m <- γ m + (1-γ) S m, 5 times


# ----------------------------------------------------------------------------- small helpers


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _norm(x: Array) -> Array:
    """Euclidean norm over the last axis, in the input's library."""
    return ((x * x).sum(-1)) ** 0.5


def _sigmoid(z: Array) -> Array:
    return torch.sigmoid(z) if _is_torch(z) else scipy.special.expit(z)


def _mv(S: Array, x: Array) -> Array:
    """S x for every row of x (B, N); S is (N, N) shared or (B, N, N). One (batched) matmul.

    Written as row vectors (x Sᵀ): torch 2.13 CPU runs bmm(S, x[..., None]) 6-15x slower.
    """
    return x @ S.mT if S.ndim == 2 else (x[..., None, :] @ S.mT)[..., 0, :]


def _rmv(S: Array, x: Array) -> Array:
    """Sᵀ x for every row of x, without materialising Sᵀ."""
    return x @ S if S.ndim == 2 else (x[..., None, :] @ S)[..., 0, :]


def _add_diag(A: Array, v: Array) -> None:
    """A[..., i, i] += v[..., i] in place."""
    if _is_torch(A):
        A.diagonal(0, -2, -1).add_(v)
    else:
        i = np.arange(A.shape[-1])
        A[..., i, i] += v


def _fmax(x: Array) -> float:
    return float(x.max())


# ----------------------------------------------------------------------------- public helpers


def symmetrize(S: Array) -> Array:
    """(S + Sᵀ)/2: attention is not symmetric, the graph must be."""
    return (S + S.mT) / 2


def laplacian(S: Array) -> Array:
    """Dense unnormalised Laplacian D - S_sym of the symmetrised graph (self-loops cancel)."""
    L = -symmetrize(S)
    _add_diag(L, (S.sum(-1) + S.sum(-2)) / 2)
    return L


def confidence(m0: Array, alpha: float = ALPHA, center: float = CENTER) -> Array:
    """Diagonal of Λ = sigmoid(α (m0 - c))²: how strongly each node is anchored to m0."""
    return _sigmoid(alpha * (m0 - center)) ** 2


def objective(m: Array, m0: Array, S: Array, lam: float = LAM, alpha: float = ALPHA,
              center: float = CENTER) -> Array:
    """J(m) = (m-m0)ᵀΛ(m-m0) + λ mᵀLm, per batch row (matrix-free: mᵀLm = Σ d m² - mᵀSm)."""
    d = (S.sum(-1) + S.sum(-2)) / 2
    data = (confidence(m0, alpha, center) * (m - m0) ** 2).sum(-1)
    mb = m[None] if m.ndim == 1 else m
    smooth = (d * mb * mb).sum(-1) - (mb * _mv(S, mb)).sum(-1)
    return data + lam * (smooth[0] if m.ndim == 1 else smooth)


def huber(r: Array, delta: float) -> Array:
    """ρ(r) = r² for |r| ≤ δ, 2δ|r| - δ² beyond: quadratic near 0, linear for large jumps."""
    a = abs(r)
    return (a.clip(max=delta)) ** 2 + 2 * delta * (a - delta).clip(min=0)


def robust_objective(m: Array, m0: Array, S: Array, lam: float = LAM, alpha: float = ALPHA,
                     center: float = CENTER, delta: float = HUBER_DELTA) -> Array:
    """J_H(m) = (m-m0)ᵀΛ(m-m0) + (λ/2) Σ_ij S_sym,ij ρ(m_i - m_j), the objective "irls" minimises.

    With every |m_i - m_j| ≤ δ it equals J(m). Builds an N x N difference matrix.
    """
    data = (confidence(m0, alpha, center) * (m - m0) ** 2).sum(-1)
    edges = symmetrize(S) * huber(m[..., :, None] - m[..., None, :], delta)
    return data + lam / 2 * edges.sum((-2, -1))


def binary_mask(m: Array, threshold: float = BLEND_THRESHOLD) -> Array:
    """Per-map min-max normalisation then `> threshold`, as the reference builds M_blend."""
    lo = m.min(-1, keepdims=True) if not _is_torch(m) else m.amin(-1, keepdim=True)
    hi = m.max(-1, keepdims=True) if not _is_torch(m) else m.amax(-1, keepdim=True)
    return (m - lo) / (hi - lo + 1e-12) > threshold


def sparsify_topk(S: Array, k: int) -> Array:
    """Keep the k largest off-diagonal entries of each row of S (dense result, zeros elsewhere).

    An option to study, not a default: on diffuse attention it moves the solution by 25-40 %.
    """
    if _is_torch(S):
        eye = torch.eye(S.shape[-1], dtype=torch.bool, device=S.device)
        vals, idx = S.masked_fill(eye, float("-inf")).topk(k, dim=-1)
        return torch.zeros_like(S).scatter_(-1, idx, vals)
    off, i = S.copy(), np.arange(S.shape[-1])
    off[..., i, i] = -np.inf
    idx = np.argpartition(off, -k, axis=-1)[..., -k:]
    out = np.zeros_like(S)
    np.put_along_axis(out, idx, np.take_along_axis(S, idx, axis=-1), axis=-1)
    return out


# ----------------------------------------------------------------------------- the problem


@dataclass
class Problem:
    """One (batched) LOCATEdit system (Λ + λL) m = Λ m0, kept matrix-free around S."""

    S: Array  # (B, N, N) or shared (N, N); not symmetrised (sparsified if topk was given)
    degree: Array  # (N,) or (B, N): d = S_sym 1 = (row sums + column sums)/2
    conf: Array  # (B, N): diagonal of Λ
    lam: float
    m0: Array  # (B, N)

    def __post_init__(self):
        self.rhs = self.conf * self.m0  # b = Λ m0
        self.dl = self.conf + self.lam * self.degree  # Λ + λD, the diagonal part of A before S_ii

    def matvec(self, x: Array) -> Array:
        """A x = Λx + λ(d∘x - (Sx + Sᵀx)/2): two matmuls over S, no N x N temporary."""
        return self.dl * x - self.lam / 2 * (_mv(self.S, x) + _rmv(self.S, x))

    def diagonal(self) -> Array:
        """diag(A) = Λ + λ(d - S_ii), for Jacobi scaling."""
        return self.conf + self.lam * (self.degree - self.S.diagonal(0, -2, -1))

    def matrix(self) -> Array:
        """Dense A = Λ + λL, (B, N, N); one N x N buffer per batch row."""
        S = self.S
        if S.ndim == 2:  # a shared S still needs one A per row, since Λ differs
            S = S.expand(len(self.m0), *S.shape) if _is_torch(S) else np.broadcast_to(S, (len(self.m0), *S.shape))
        A = S + S.mT
        A *= -self.lam / 2
        _add_diag(A, self.dl)
        return A

    def residual(self, x: Array) -> float:
        """max over the batch of ||b - A x|| / ||b||."""
        return _fmax(_norm(self.rhs - self.matvec(x)) / _safe(_norm(self.rhs)))


def _safe(bnorm: Array) -> Array:
    return bnorm + (bnorm == 0)  # ||b|| = 0 -> absolute residual


def build_problem(m0: Array, S: Array, lam: float = LAM, alpha: float = ALPHA, center: float = CENTER,
                  topk: int | None = None) -> Problem:
    """Degrees and Λ from S and m0 (B, N). O(N²) work, O(N) memory unless topk is used."""
    if topk is not None:
        S = sparsify_topk(S, topk)
    degree = (S.sum(-1) + S.sum(-2)) / 2
    if not bool((abs(degree) < float("inf")).all()):  # a NaN/inf anywhere in S reaches its row sum
        raise ValueError("S contains NaN or inf; pass a finite attention matrix.")
    return Problem(S, degree, confidence(m0, alpha, center), lam, m0)


# ----------------------------------------------------------------------------- iterations

Callback = Callable[[dict], None] | None


def _pcg(matvec: Callable, precond: Callable, b: Array, x: Array, rtol: float, max_iter: int,
         callback: Callback) -> tuple[Array, int]:
    """Batched preconditioned CG: every row of b is its own SPD system; stops when all reach rtol.

    Converged rows are frozen (step 0) so the batch matches a loop over single solves.
    """
    bnorm = _safe(_norm(b))
    r = b - matvec(x)
    rel = _norm(r) / bnorm
    if _fmax(rel) <= rtol:
        return x, 0
    z = precond(r)
    p, rz = z, (r * z).sum(-1)
    for i in range(1, max_iter + 1):
        Ap = matvec(p)
        active = rel > rtol
        pAp = (p * Ap).sum(-1)
        alpha = active * rz / (pAp + ~active)
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rel = _norm(r) / bnorm
        worst = _fmax(rel)  # one host sync per iteration (CUDA)
        if callback:
            callback({"i": i, "x": x, "residual": worst})
        if worst <= rtol or i == max_iter:
            return x, i
        z = precond(r)
        rz, rz_old = (r * z).sum(-1), rz
        p = z + (rz / (rz_old + (rz_old == 0)))[:, None] * p
    return x, 0  # max_iter == 0


def _stationary(step: Callable, matvec: Callable, b: Array, x: Array, rtol: float, max_iter: int,
                callback: Callback) -> tuple[Array, int]:
    """x <- x + step(b - A x) until the relative residual is below rtol (Jacobi, Gauss-Seidel).

    Rows that have converged are frozen, as in _pcg.
    """
    bnorm = _safe(_norm(b))
    r = b - matvec(x)
    rel, i = _norm(r) / bnorm, 0
    while _fmax(rel) > rtol and i < max_iter:
        x = x + (rel > rtol)[:, None] * step(r)
        r = b - matvec(x)
        rel, i = _norm(r) / bnorm, i + 1
        if callback:
            callback({"i": i, "x": x, "residual": _fmax(rel)})
    return x, i


# ----------------------------------------------------------------------------- solvers
# Every solver: fn(problem, x0, callback, rtol, max_iter) -> (x, iterations, residual).
# x0 is None or (B, N); callback gets {"i", "x", "residual"} once per iteration.


def _start(p: Problem, x0: Array | None) -> Array:
    return p.m0 * 0 if x0 is None else x0


def _direct_done(p: Problem, x: Array, callback: Callback) -> tuple[Array, int, float]:
    res = p.residual(x)
    if callback:
        callback({"i": 1, "x": x, "residual": res})
    return x, 1, res


def solve_dense(p: Problem, x0, callback, rtol, max_iter):
    """LU on the dense A, what the reference code does (torch.linalg.solve).

    torch 2.13 CPU: batched LU returns garbage pivots after torch.set_num_threads(n >= 2), so for
    torch the batch is solved one matrix at a time (costs nothing measurable; LU is O(N³)).
    """
    A, b = p.matrix(), p.rhs
    if _is_torch(A):
        x = torch.stack([torch.linalg.solve(A[k], b[k]) for k in range(len(b))])
    else:
        x = np.linalg.solve(A, b[..., None])[..., 0]
    return _direct_done(p, x, callback)


def solve_cholesky(p: Problem, x0, callback, rtol, max_iter):
    """Cholesky on the dense A (SPD): half the flops of LU and unaffected by the LU bug."""
    A, b = p.matrix(), p.rhs
    if _is_torch(A):
        x = torch.cholesky_solve(b[..., None], torch.linalg.cholesky(A))[..., 0]
    else:
        x = np.stack([scipy.linalg.cho_solve(scipy.linalg.cho_factor(A[k], lower=True, overwrite_a=True,
                                                                     check_finite=False), b[k], check_finite=False)
                      for k in range(len(b))])
    return _direct_done(p, x, callback)


def solve_cg(p: Problem, x0, callback, rtol, max_iter):
    """Matrix-free Jacobi-PCG on the dense S: 2 matmuls per iteration, 12-25 iterations to 1e-5."""
    dinv = 1 / p.diagonal()
    x, it = _pcg(p.matvec, lambda r: r * dinv, p.rhs, _start(p, x0), rtol, max_iter or 1000, callback)
    return x, it, p.residual(x)


def solve_jacobi(p: Problem, x0, callback, rtol, max_iter):
    """Jacobi x <- x + D_A⁻¹(b - A x); converges because A is strictly diagonally dominant."""
    dinv = 1 / p.diagonal()
    x, it = _stationary(lambda r: r * dinv, p.matvec, p.rhs, _start(p, x0), rtol, max_iter or 10000, callback)
    return x, it, p.residual(x)


def solve_gauss_seidel(p: Problem, x0, callback, rtol, max_iter):
    """Forward Gauss-Seidel x <- x + tril(A)⁻¹(b - A x); builds A, one triangular solve per sweep.

    numpy: the product also goes through scipy's BLAS (gemv), so the inner loop uses one BLAS
    thread pool; alternating numpy's and scipy's OpenBLAS costs 1.3-22x on 2 cores.
    """
    A = p.matrix()
    T = A.tril() if _is_torch(A) else np.tril(A)
    if _is_torch(A):
        step = lambda r: torch.linalg.solve_triangular(T, r[..., None], upper=False)[..., 0]
        matvec = lambda x: _mv(A, x)
    else:
        gemv = scipy.linalg.get_blas_funcs("gemv", (A,))
        step = lambda r: np.stack([scipy.linalg.solve_triangular(T[k], r[k], lower=True, check_finite=False)
                                   for k in range(len(r))])
        # A[k].T is Fortran-ordered, so f2py passes it without a copy; trans=1 gives A x back.
        matvec = lambda x: np.stack([gemv(1.0, A[k].T, x[k], trans=1) for k in range(len(x))])
    x, it = _stationary(step, matvec, p.rhs, _start(p, x0), rtol, max_iter or 5000, callback)
    return x, it, p.residual(x)


def solve_amg(p: Problem, x0, callback, rtol, max_iter):
    """CG preconditioned by one pyamg smoothed-aggregation V-cycle per row (numpy/scipy only).

    The hierarchy is built on A as CSR: sparse with topk, dense-as-CSR otherwise (setup then
    grows like N² and dominates; AMG pays only on sparse graphs).
    """
    import pyamg
    import scipy.sparse as sp

    A = p.matrix()
    mls = [pyamg.smoothed_aggregation_solver(sp.csr_matrix(A[k])) for k in range(len(A))]
    Ms = [ml.aspreconditioner() for ml in mls]
    csr = [ml.levels[0].A for ml in mls]
    precond = lambda r: np.stack([M @ r[k] for k, M in enumerate(Ms)]).astype(r.dtype, copy=False)
    # The operator: sparse A when topk made it sparse, the matrix-free dense one otherwise.
    matvec = (lambda x: np.stack([a @ x[k] for k, a in enumerate(csr)])) if csr[0].nnz < A[0].size / 4 else p.matvec
    x, it = _pcg(matvec, precond, p.rhs, _start(p, x0), rtol, max_iter or 200, callback)
    return x, it, p.residual(x)


solve_amg.numpy_only = True


def solve_vimaedit(p: Problem, x0, callback, rtol, max_iter):
    """ViMAEdit's smoothing, a DIFFERENT model: m <- γ m + (1-γ) S m, 5 times (or max_iter), from m0.

    Uses the non-symmetrised S and ignores Λ, λ, x0 and rtol; the residual it reports is that of
    the LOCATEdit system, only to compare how far from the LOCATEdit answer it ends.
    """
    x = p.m0
    steps = max_iter or VIMA_STEPS
    for i in range(1, steps + 1):
        x = VIMA_GAMMA * x + (1 - VIMA_GAMMA) * _mv(p.S, x)
        if callback:
            callback({"i": i, "x": x, "residual": p.residual(x)})
    return x, steps, p.residual(x)


def _edge_weights(S_sym: Array, x: Array, delta: float) -> Array:
    """ω_ij = S_sym,ij · δ / max(|x_i - x_j|, δ), in place in one (B, N, N) buffer (torch CPU
    temporaries of this size cost 2-4x numpy's, so avoid them)."""
    D = x[..., :, None] - x[..., None, :]
    if _is_torch(D):
        return D.abs_().clamp_(min=delta).reciprocal_().mul_(delta).mul_(S_sym)
    np.abs(D, out=D)
    np.maximum(D, delta, out=D)
    np.divide(delta, D, out=D)
    D *= S_sym
    return D


def solve_irls(p: Problem, x0, callback, rtol, max_iter, delta: float = HUBER_DELTA):
    """IRLS for the ROBUST objective J_H(m) = (m-m0)ᵀΛ(m-m0) + (λ/2) Σ S_sym,ij ρ_δ(m_i - m_j).

    ρ_δ is the Huber penalty, so large jumps between neighbours cost linearly, not quadratically:
    edges survive. Each outer step re-weights ω_ij = S_sym,ij min(1, δ/|m_i - m_j|) and solves
    (Λ + λ L_ω) m = Λ m0 by warm-started Jacobi-PCG (a majorise-minimise step, so J_H never rises).
    Starts from x0 or the closed-form LOCATEdit solution; stops when ||Δm||/||m|| < rtol or after
    max_iter (20) outer steps. The callback's "residual" is that relative change; the returned
    residual is the stationarity ||Λm0 - (Λ + λL_ω(m))m|| / ||Λm0|| of J_H at the result.
    Builds two N x N matrices (S_sym and ω) per batch row.
    """
    S_sym, b = symmetrize(p.S), p.rhs
    x = solve_cg(p, None, None, rtol, None)[0] if x0 is None else x0

    def weighted(x):
        W = _edge_weights(S_sym, x, delta)
        dl = p.conf + p.lam * W.sum(-1)
        matvec = lambda v: dl * v - p.lam * _mv(W, v)
        return matvec, 1 / (dl - p.lam * W.diagonal(0, -2, -1))

    active = _norm(b) >= 0  # all True; rows whose change fell below rtol are frozen
    for i in range(1, (max_iter or 20) + 1):
        matvec, dinv = weighted(x)
        x_new, _ = _pcg(matvec, lambda r: r * dinv, b, x, rtol, 1000, None)
        change = active * _norm(x_new - x) / _safe(_norm(x_new))
        x = x + active[:, None] * (x_new - x)
        active = change > rtol
        if callback:
            callback({"i": i, "x": x, "residual": _fmax(change)})
        if not bool(active.any()):
            break
    matvec, _ = weighted(x)
    return x, i, _fmax(_norm(b - matvec(x)) / _safe(_norm(b)))


SOLVERS: dict[str, Callable] = {
    "cg": solve_cg,
    "cholesky": solve_cholesky,
    "dense": solve_dense,
    "jacobi": solve_jacobi,
    "gauss-seidel": solve_gauss_seidel,
    "amg": solve_amg,
    "irls": solve_irls,
    "vimaedit": solve_vimaedit,
}
DEFAULT_SOLVER = "cg"


# ----------------------------------------------------------------------------- entry point


@dataclass
class RefineResult:
    solution: Array  # same library, device, shape as m0 (and m0's dtype when it is floating)
    iterations: int  # 1 for direct solvers
    residual: float  # max over the batch of ||b - A x|| / ||b|| (irls: stationarity of J_H)
    seconds: float  # wall time of the whole call, building included
    solver: str


def _prepare(m0: Array, S: Array, x0: Array | None, lam: float, topk: int | None):
    """Validate and bring inputs to (B, N) / (N, N) or (B, N, N) in one floating dtype."""
    if _is_torch(m0) != _is_torch(S):
        raise ValueError("m0 and S must both be numpy arrays or both torch tensors; convert one of them.")
    if not _is_torch(S):
        m0, S = np.asarray(m0), np.asarray(S)
    elif m0.device != S.device:
        raise ValueError(f"m0 is on {m0.device} but S is on {S.device}; move them to the same device.")
    if S.ndim not in (2, 3) or S.shape[-1] != S.shape[-2]:
        raise ValueError(f"S must be square, (N, N) or (B, N, N); got shape {tuple(S.shape)}.")
    if m0.ndim not in (1, 2):
        raise ValueError(f"m0 must be (N,) or (B, N); got shape {tuple(m0.shape)}. Flatten the spatial axes.")
    N = S.shape[-1]
    if m0.shape[-1] != N:
        raise ValueError(f"m0 has {m0.shape[-1]} nodes but S is {N} x {N}; they must describe the same grid.")
    if S.ndim == 3 and (m0.ndim == 1 or m0.shape[0] != S.shape[0]):
        raise ValueError(f"batch mismatch: S {tuple(S.shape)} needs m0 of shape ({S.shape[0]}, {N}), "
                         f"got {tuple(m0.shape)}.")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0 (it weights the smoothness term); got {lam}.")
    if topk is not None and not (isinstance(topk, int) and 1 <= topk <= N - 1):
        raise ValueError(f"topk must be an int in [1, N-1] = [1, {N - 1}] or None; got {topk!r}.")
    if x0 is not None and tuple(x0.shape) != tuple(m0.shape):
        raise ValueError(f"x0 must have m0's shape {tuple(m0.shape)}; got {tuple(x0.shape)}.")
    f64 = torch.float64 if _is_torch(S) else np.float64
    dtype = f64 if f64 in (m0.dtype, S.dtype) else (torch.float32 if _is_torch(S) else np.float32)
    if _is_torch(S):
        cast = lambda a: torch.as_tensor(a, dtype=dtype, device=S.device)
    else:
        cast = lambda a: np.asarray(a).astype(dtype, copy=False)
    m0, S = cast(m0).reshape(-1, N), cast(S)
    x0 = None if x0 is None else cast(x0).reshape(-1, N)
    if not bool((abs(m0) < float("inf")).all()):
        raise ValueError("m0 contains NaN or inf; pass a finite mask.")
    return m0, S, x0


def refine(m0: Array, S: Array, *, lam: float = LAM, alpha: float = ALPHA, center: float = CENTER,
           solver: str | Callable = DEFAULT_SOLVER, topk: int | None = None, x0: Array | None = None,
           callback: Callback = None, rtol: float = 1e-5, max_iter: int | None = None) -> RefineResult:
    """Refine m0 (N,) or (B, N) on the self-attention graph S (N, N) or (B, N, N): solve (Λ + λL) m = Λ m0.

    Works in the input's library and device (torch: float32 unless an input is float64; numpy:
    float64 unless both are float32). "amg" is numpy/scipy only: torch inputs are moved to a
    numpy array once on entry and the result moved back once. `solver` may also be a callable
    with the solver signature (e.g. functools.partial(solve_irls, delta=0.01)). x0 warm-starts the
    iterative solvers; callback(info) gets {"i", "x", "residual"} once per iteration (x shaped like m0).
    """
    t0 = time.perf_counter()
    if callable(solver):
        fn, name = solver, getattr(solver, "__name__", "custom")
    elif solver in SOLVERS:
        fn, name = SOLVERS[solver], solver
    else:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}.")
    unbatched = np.ndim(m0) == 1 if not _is_torch(m0) else m0.ndim == 1
    out_like = m0
    m0, S, x0 = _prepare(m0, S, x0, lam, topk)
    to_numpy = getattr(fn, "numpy_only", False) and _is_torch(S)
    if to_numpy:
        m0, S = m0.cpu().numpy(), S.cpu().numpy()
        x0 = None if x0 is None else x0.cpu().numpy()

    def finish(x: Array) -> Array:
        x = x[0] if unbatched else x
        if _is_torch(out_like):
            x = torch.as_tensor(x, device=out_like.device)
            return x.to(out_like.dtype) if out_like.is_floating_point() else x
        out_like_np = np.asarray(out_like)
        return x.astype(out_like_np.dtype, copy=False) if out_like_np.dtype.kind == "f" else x

    cb = None if callback is None else (lambda info: callback({**info, "x": finish(info["x"])}))
    with torch.no_grad() if _is_torch(S) else nullcontext():
        problem = build_problem(m0, S, lam, alpha, center, topk)
        x, iters, res = fn(problem, x0, cb, rtol, max_iter)
        sol = finish(x)
    return RefineResult(sol, int(iters), float(res), time.perf_counter() - t0, name)
