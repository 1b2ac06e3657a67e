"""Tests of locatedit.graph on realistic synthetic self-attention (block structure, not symmetric).

The oracle is an independent float64 Cholesky solve of (Λ + λL) m = Λ m0 built here from scratch.
"""

import functools

import networkx as nx
import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.csgraph
import torch


from locatedit import graph as g
from locatedit.synthetic import voronoi_attention

ITERATIVE = ["cg", "jacobi", "gauss-seidel", "amg"]
DIRECT = ["dense", "cholesky"]
LIBS = ["numpy64", "numpy32", "torch32", "torch64"]


# ----------------------------------------------------------------------------- data


def make_case(H: int, seed: int = 0, temp: float = 1.0):
    """Realistic attention with spill blobs in m0 (see locatedit.synthetic.voronoi_attention), in float64."""
    m0, S = voronoi_attention(H, seed, temperature=temp)
    return m0.astype(np.float64), S.astype(np.float64)


def exact(m0, S, lam=g.LAM, alpha=2.61, center=0.4858):
    """Independent float64 oracle: Cholesky of Λ + λ(D - S_sym)."""
    m0, S = np.asarray(m0, np.float64), np.asarray(S, np.float64)
    Ss = (S + S.T) / 2
    w2 = (1 / (1 + np.exp(-alpha * (m0 - center)))) ** 2
    A = np.diag(w2) + lam * (np.diag(Ss.sum(1)) - Ss)
    return scipy.linalg.cho_solve(scipy.linalg.cho_factor(A), w2 * m0), A


def iou(a, b, th=0.2204):
    ma, mb = [(x - x.min()) / (x.max() - x.min()) > th for x in (np.asarray(a), np.asarray(b))]
    return (ma & mb).sum() / max((ma | mb).sum(), 1)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def to_lib(x, lib):
    dt = {"64": np.float64, "32": np.float32}[lib[-2:]]
    x = np.asarray(x, dt)
    return torch.from_numpy(x) if lib.startswith("torch") else x


def np_(x):
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.fixture(scope="module")
def case256():
    m0, S = make_case(16, seed=0)
    return m0, S, exact(m0, S)[0]


@pytest.fixture(scope="module")
def case1024():
    m0, S = make_case(32, seed=1)
    return m0, S, exact(m0, S)[0]


@pytest.fixture(scope="module")
def pair256():
    cases = [make_case(16, seed=s) for s in (2, 3)]
    return np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases])


# ----------------------------------------------------------------------------- building blocks


def test_synthetic_attention_is_realistic(case1024):
    m0, S, x = case1024
    assert np.allclose(S.sum(1), 1) and not np.allclose(S, S.T)
    perplexity = np.exp(-(S * np.log(S)).sum(1))
    assert 10 < np.median(perplexity) < 400
    assert 0.05 < (x > 0.5 * x.max()).mean() < 0.4  # the object is a minority of the latent


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_laplacian_matches_scipy_and_networkx(seed):
    rng = np.random.default_rng(seed)
    n = 40
    W = rng.random((n, n)) * (rng.random((n, n)) < 0.3)
    W = np.triu(W, 1)
    W = W + W.T
    L = g.laplacian(W)
    assert np.allclose(L, scipy.sparse.csgraph.laplacian(W), atol=1e-12)
    G = nx.from_numpy_array(W)
    assert np.allclose(L, nx.laplacian_matrix(G, nodelist=range(n), weight="weight").toarray(), atol=1e-12)
    assert np.allclose(g.laplacian(torch.from_numpy(W)).numpy(), L, atol=1e-12)
    # Non-symmetric S: the Laplacian of S_sym; self-loops cancel, so the diagonal of S is irrelevant.
    S = rng.random((n, n))
    S /= S.sum(1, keepdims=True)
    Ss = (S + S.T) / 2
    np.fill_diagonal(Ss, 0)
    assert np.allclose(g.laplacian(S), scipy.sparse.csgraph.laplacian(Ss), atol=1e-12)
    assert np.allclose(g.symmetrize(S), (S + S.T) / 2)
    batched = g.laplacian(np.stack([S, S.T]))
    assert np.allclose(batched[0], batched[1]) and np.allclose(batched[0], g.laplacian(S))


def test_system_is_spd_and_solution_minimises_objective(case256):
    m0, S, x = case256
    _, A = exact(m0, S)
    assert np.allclose(A, A.T, atol=1e-14)
    assert np.linalg.eigvalsh(A).min() > 1e-3
    w2 = (1 / (1 + np.exp(-2.61 * (m0 - 0.4858)))) ** 2
    assert np.allclose(g.confidence(m0), w2)
    L = g.laplacian(S)
    J = lambda m: (m - m0) @ (w2 * (m - m0)) + g.LAM * m @ L @ m
    assert np.isclose(g.objective(x, m0, S), J(x), rtol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(100):
        e = rng.normal(size=x.shape) * 1e-3 * np.linalg.norm(x) / np.sqrt(x.size)
        assert g.objective(x, m0, S) < g.objective(x + e, m0, S)
    # batched and torch versions agree
    Jb = g.objective(np.stack([x, m0]), np.stack([m0, m0]), np.stack([S, S]))
    assert np.allclose(Jb, [J(x), J(m0)])
    assert np.isclose(float(g.objective(torch.from_numpy(x), torch.from_numpy(m0), torch.from_numpy(S))), J(x))


# ----------------------------------------------------------------------------- solvers vs the oracle


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("solver", DIRECT + ITERATIVE)
def test_solver_matches_exact(solver, lib, case256):
    m0, S, x = case256
    r = g.refine(to_lib(m0, lib), to_lib(S, lib), solver=solver, rtol=1e-5)
    sol = r.solution
    assert type(sol) is type(to_lib(m0, lib)) and tuple(sol.shape) == m0.shape
    assert str(sol.dtype).endswith(lib[-2:])
    tol = 1e-5 if solver in DIRECT else 1e-3
    assert rel(np_(sol), x) <= tol
    assert iou(np_(sol), x) >= 0.99
    assert r.residual <= 1e-5 and r.seconds > 0 and r.solver == solver
    assert (r.iterations == 1) if solver in DIRECT else (r.iterations > 1)


@pytest.mark.parametrize("lib", ["numpy32", "torch32"])
@pytest.mark.parametrize("solver", ["cg", "cholesky", "dense"])
def test_solver_matches_exact_n1024(solver, lib, case1024):
    m0, S, x = case1024
    r = g.refine(to_lib(m0, lib), to_lib(S, lib), solver=solver)
    assert rel(np_(r.solution), x) <= (1e-3 if solver == "cg" else 1e-5)
    assert iou(np_(r.solution), x) >= 0.99


def test_dtype_rules(case256):
    m0, S, x = case256
    r = g.refine(m0, S.astype(np.float32))  # float64 m0 -> computed in float64
    assert r.solution.dtype == np.float64 and rel(r.solution, x) < 1e-4
    r = g.refine(torch.from_numpy(m0).half(), torch.from_numpy(S).half())  # fp16 as the UNet gives it
    assert r.solution.dtype == torch.float16 and iou(r.solution.float().numpy(), x) >= 0.95


@pytest.mark.parametrize("solver", list(g.SOLVERS))
@pytest.mark.parametrize("lib", ["numpy64", "torch64"])
def test_batched_equals_looped(solver, lib, pair256):
    m0, S = pair256
    batched = np_(g.refine(to_lib(m0, lib), to_lib(S, lib), solver=solver).solution)
    assert batched.shape == m0.shape
    for k in range(2):
        single = np_(g.refine(to_lib(m0[k], lib), to_lib(S[k], lib), solver=solver).solution)
        # pyamg's setup estimates a spectral radius from a random start: same answer only to ~rtol
        assert rel(batched[k], single) <= (1e-4 if solver == "amg" else 1e-9)


@pytest.mark.parametrize("solver", ["cg", "cholesky", "jacobi"])
def test_shared_S_for_a_batch_of_masks(solver, pair256):
    m0, S = pair256
    shared = g.refine(m0, S[0], solver=solver).solution
    stacked = g.refine(m0, np.stack([S[0], S[0]]), solver=solver).solution
    assert rel(shared, stacked) <= 1e-9
    assert rel(shared[1], exact(m0[1], S[0])[0]) <= (1e-3 if solver != "cholesky" else 1e-10)


def test_warm_start_saves_iterations(case1024):
    m0, S, _ = case1024
    rng = np.random.default_rng(5)
    S2 = S * (1 + 0.02 * rng.random(S.shape))
    S2 /= S2.sum(1, keepdims=True)
    m02 = np.clip(m0 + 0.01 * rng.normal(size=m0.shape), 0, None)
    prev = g.refine(m02, S2).solution
    for lib in ("numpy32", "torch32"):
        cold = g.refine(to_lib(m0, lib), to_lib(S, lib))
        warm = g.refine(to_lib(m0, lib), to_lib(S, lib), x0=to_lib(prev, lib))
        assert warm.iterations < cold.iterations
        assert rel(np_(warm.solution), np_(cold.solution)) < 1e-3
    # starting at the answer costs no iteration
    assert g.refine(m0, S, x0=g.refine(m0, S, solver="cholesky").solution).iterations == 0


@pytest.mark.parametrize("solver", list(g.SOLVERS))
def test_callback_once_per_iteration(solver, case256):
    m0, S, _ = case256
    calls = []
    r = g.refine(torch.from_numpy(m0).float(), torch.from_numpy(S).float(), solver=solver, callback=calls.append)
    assert len(calls) == r.iterations >= 1
    assert [c["i"] for c in calls] == list(range(1, r.iterations + 1))
    for c in calls:
        assert {"i", "x", "residual"} <= set(c) and isinstance(c["residual"], float)
        assert isinstance(c["x"], torch.Tensor) and c["x"].shape == m0.shape
    if solver in ("cg", "jacobi", "gauss-seidel", "amg"):
        assert calls[-1]["residual"] <= 1e-5 < calls[0]["residual"]
        assert np.isclose(calls[-1]["residual"], r.residual, rtol=0.5)
    if solver == "cg":  # CG's residual is not monotone, but it must fall overall
        res = [c["residual"] for c in calls]
        assert all(b < 3 * a for a, b in zip(res, res[1:])) and res[-1] < res[0] / 100


# ----------------------------------------------------------------------------- irls, vimaedit, topk


def huber_objective(m, m0, S, delta, lam=g.LAM):
    """Independent J_H for checking graph.robust_objective."""
    w2 = (1 / (1 + np.exp(-2.61 * (m0 - 0.4858)))) ** 2
    D = np.abs(m[:, None] - m[None, :])
    rho = np.where(D <= delta, D**2, 2 * delta * D - delta**2)
    return (w2 * (m - m0) ** 2).sum() + lam / 2 * ((S + S.T) / 2 * rho).sum()


def test_irls_with_huge_delta_is_the_closed_form(case256):
    m0, S, x = case256
    r = g.refine(m0, S, solver=functools.partial(g.solve_irls, delta=1e6))
    assert rel(r.solution, x) <= 1e-4
    assert np.isclose(g.robust_objective(x, m0, S, delta=1e6), g.objective(x, m0, S))


def test_irls_lowers_the_robust_objective(case256):
    m0, S, x = case256
    r = g.refine(m0, S, solver="irls", max_iter=30)
    assert r.residual < 1e-3  # stationary point of J_H
    JH = lambda m: huber_objective(m, m0, S, g.HUBER_DELTA)
    assert np.isclose(g.robust_objective(r.solution, m0, S), JH(r.solution))
    assert JH(r.solution) < JH(x)
    assert rel(r.solution, x) > 1e-2  # and it is a different answer


def test_irls_preserves_a_sharp_edge():
    H, d = 16, 16
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:H, 0:H] / H
    left = xx < 0.5
    X = np.where(left[..., None], 0.5, -0.5) * rng.normal(size=d) + 0.7 * rng.normal(size=(H, H, d))
    X = X.reshape(-1, d)
    logits = X @ X.T / np.sqrt(d)
    S = np.exp(logits - logits.max(1, keepdims=True))
    S /= S.sum(1, keepdims=True)  # attention leaks across the step
    m0 = np.where(left, 0.9, 0.1).ravel() + 0.05 * rng.normal(size=H * H)
    L = left.ravel()
    contrast = lambda m: (m[L].mean() - m[~L].mean()) / (m0[L].mean() - m0[~L].mean())
    closed = g.refine(m0, S, solver="cholesky").solution
    robust = g.refine(m0, S, solver="irls", max_iter=50).solution
    assert contrast(robust) > contrast(closed) + 0.2, (contrast(robust), contrast(closed))


def test_vimaedit_is_the_plain_smoothing_loop():
    rng = np.random.default_rng(0)
    S = rng.random((16, 16))
    S /= S.sum(1, keepdims=True)
    m0 = rng.random(16)
    m = m0.copy()
    for _ in range(5):
        m = 0.5 * m + 0.5 * S @ m
    r = g.refine(m0, S, solver="vimaedit")
    assert np.allclose(r.solution, m, rtol=0, atol=1e-12) and r.iterations == 5
    rt = g.refine(torch.from_numpy(m0), torch.from_numpy(S), solver="vimaedit")
    assert np.allclose(rt.solution.numpy(), m, atol=1e-12)
    assert r.residual > 1e-3  # it does not solve the LOCATEdit system


def test_topk_is_a_different_but_close_model(case256):
    m0, S, x = case256
    N = S.shape[0]
    for solver in ("cg", "cholesky", "amg"):
        r = g.refine(m0, S, solver=solver, topk=16)
        assert rel(r.solution, x) > 1e-2 and iou(r.solution, x) > 0.5
        every_edge = g.refine(m0, S, solver=solver, topk=N - 1).solution
        assert rel(every_edge, g.refine(m0, S, solver=solver).solution) <= 1e-5
    a = g.refine(m0, S, topk=16, solver="cholesky").solution
    b = g.refine(torch.from_numpy(m0), torch.from_numpy(S), topk=16, solver="cholesky").solution.numpy()
    assert rel(a, b) < 1e-10  # argpartition and torch.topk keep the same edges
    Sk = g.sparsify_topk(S, 16)
    assert ((Sk > 0).sum(1) == 16).all() and (np.diag(Sk) == 0).all()


# ----------------------------------------------------------------------------- bad input


def _bad_cases():
    rng = np.random.default_rng(0)
    S = rng.random((8, 8))
    m0 = rng.random(8)
    nan_S, inf_S, nan_m = S.copy(), S.copy(), m0.copy()
    nan_S[2, 3], inf_S[1, 5], nan_m[4] = np.nan, np.inf, np.nan
    return [
        ("NaN or inf", m0, nan_S, {}),
        ("NaN or inf", m0, inf_S, {}),
        ("NaN or inf", nan_m, S, {}),
        ("square", m0, S[:, :5], {}),
        ("square", m0, S[0], {}),
        ("nodes", m0[:6], S, {}),
        ("batch mismatch", np.stack([m0] * 3), np.stack([S, S]), {}),
        ("batch mismatch", m0, np.stack([S, S]), {}),
        ("lam", m0, S, {"lam": -0.1}),
        ("unknown solver", m0, S, {"solver": "lu"}),
        ("topk", m0, S, {"topk": 0}),
        ("topk", m0, S, {"topk": 8}),
        ("x0", m0, S, {"x0": np.zeros(5)}),
        ("both be numpy", torch.from_numpy(m0), S, {}),
    ]


@pytest.mark.parametrize("match,m0,S,kw", _bad_cases())
def test_bad_input_raises_value_error(match, m0, S, kw):
    with pytest.raises(ValueError, match=match):
        g.refine(m0, S, **kw)
    if isinstance(m0, np.ndarray) and "x0" not in kw:  # the same check in torch
        with pytest.raises(ValueError, match=match):
            g.refine(torch.from_numpy(m0), torch.from_numpy(S), **kw)


def test_unknown_solver_lists_the_valid_ones():
    with pytest.raises(ValueError, match="cholesky"):
        g.refine(np.zeros(4), np.eye(4), solver="nope")


# ----------------------------------------------------------------------------- GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("solver", ["cg", "cholesky", "dense", "jacobi", "gauss-seidel", "amg", "irls", "vimaedit"])
def test_cuda_stays_on_device(solver, case1024):
    m0, S, x = case1024
    m0_t, S_t = torch.from_numpy(m0).float().cuda(), torch.from_numpy(S).float().cuda()
    r = g.refine(torch.stack([m0_t, m0_t]), torch.stack([S_t, S_t]), solver=solver)
    assert r.solution.is_cuda and r.solution.shape == (2, m0.size)
    if solver not in ("irls", "vimaedit"):
        assert rel(r.solution[1].cpu().numpy(), x) <= 1e-3
