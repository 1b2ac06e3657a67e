"""Benchmark the CASA-graph solvers of locatedit.graph against the LOCATEdit reference solve.

    python benchmarks/bench_graph.py [--sizes 256 1024 4096] [--threads 1] [--repeats 5]
                                     [--json out.json] [--include-16384]

For each N: a realistic synthetic self-attention S (float32, row-stochastic, batch of 2 as the
reference runs it; generation is not timed), then for each solver and library the median seconds
of a whole batched `refine` call (building degrees / L / Λ from S included), iterations, relative
error and mask IoU (> 0.2204 after min-max) against an exact float64 solution, and peak extra
memory. Thread counts are set through environment variables BEFORE numpy/torch are imported:
torch 2.13's batched LU returns garbage after torch.set_num_threads(n >= 2), and the "reference"
row is exactly such a batched LU, so this script never calls torch.set_num_threads.
"""

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the rows and metadata here")
    ap.add_argument("--include-16384", action="store_true", help="add N=16384 (slow; ~6 GB RAM)")
    ap.add_argument("--budget", type=float, default=30.0, help="skip a solver whose estimated time at a size exceeds this (s)")
    ap.add_argument("--warm-size", type=int, default=1024, help="N of the warm-start experiment")
    return ap.parse_args()


ARGS = _parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from locatedit import graph as g  # noqa: E402
from locatedit.synthetic import voronoi_attention  # noqa: E402

SOLVER_ORDER = ["cg", "cholesky", "dense", "jacobi", "gauss-seidel", "amg", "irls", "vimaedit"]
GROWTH = {"cholesky": 3, "dense": 3, "reference": 3, "amg": 3}  # time ~ N^p when extrapolating; others 2


# ----------------------------------------------------------------------------- inputs


def make_case(H: int, seed: int):
    return voronoi_attention(H, seed)


def exact_solution(m0: np.ndarray, S: np.ndarray) -> np.ndarray:
    """float64 oracle per batch row: Cholesky up to N=4096, CG to 1e-11 beyond (a 2 GB factor is too slow)."""
    out = []
    for k in range(len(m0)):
        m, s = m0[k].astype(np.float64), S[k].astype(np.float64)
        if len(m) <= 4096:
            Ss = (s + s.T) / 2
            w2 = g.confidence(m)
            A = -g.LAM * Ss
            A[np.diag_indices_from(A)] += w2 + g.LAM * Ss.sum(1)
            out.append(scipy.linalg.cho_solve(scipy.linalg.cho_factor(A, check_finite=False), w2 * m))
        else:
            out.append(g.refine(m, s, rtol=1e-11).solution)
    return np.stack(out)


def reference_solve(m0: torch.Tensor, S: torch.Tensor, lam=g.LAM, alpha=g.ALPHA, center=g.CENTER) -> torch.Tensor:
    """The LOCATEdit formulation: four dense N x N tensors (Q, D, L, Dw) and a batched LU solve."""
    m0 = m0[..., None]  # (B, N, 1) as in the reference
    Q = (S + S.transpose(1, 2)) / 2
    D = torch.diag_embed(Q.sum(-1))
    L = D - Q
    Dw = torch.diag_embed(torch.sigmoid(alpha * (m0 - center)).squeeze(-1) ** 2)
    return torch.linalg.solve(Dw + lam * L, Dw @ m0)[..., 0]


# ----------------------------------------------------------------------------- measuring


class CpuMeter:
    """Foreign CPU use (cores) while a section runs: machine busy time minus this process's."""

    def __enter__(self):
        self.t, self.busy, self.own = time.perf_counter(), self._busy(), time.process_time()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t
        busy = self._busy()
        self.foreign = None if busy is None else max(0.0, ((busy - self.busy) - (time.process_time() - self.own)) / wall)

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        except OSError:
            return None


def peak_extra_mb(fn, lib: str) -> tuple[float, str]:
    """Peak memory allocated during fn beyond what existed before (an untimed extra run).

    numpy: tracemalloc. torch: tracemalloc cannot see torch's allocations and RSS hides them
    (glibc reuses freed pages), so the torch profiler's per-op allocations and frees are summed in
    time order; numpy work inside a torch call (amg) is added from tracemalloc.
    """
    tracemalloc.start()
    if lib == "numpy":
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak / 2**20, "tracemalloc"
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    np_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    level, peak = 0, 0
    for e in events:
        level += e.self_cpu_memory_usage
        peak = max(peak, level)
    return (peak + np_peak) / 2**20, "profiler"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ma, mb = np.asarray(g.binary_mask(a)), np.asarray(g.binary_mask(b))
    return float(min((ma[k] & mb[k]).sum() / max((ma[k] | mb[k]).sum(), 1) for k in range(len(ma))))


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def as_numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else x


def bench_row(name, lib, run, exact, repeats, budget, estimate):
    """Time `run` (returns (solution, iterations)); the first run also checks the budget."""
    row = {"solver": name, "lib": lib}
    if estimate is not None and estimate > budget:
        return {**row, "skipped": f"estimated {estimate:.0f} s > {budget:.0f} s"}
    t = time.perf_counter()
    sol, iters = run()
    first = time.perf_counter() - t
    times = [first]
    for _ in range(min(repeats, max(1, int(budget / max(first, 1e-6)))) - 1):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    mem, how = peak_extra_mb(run, lib)
    x = as_numpy(sol).astype(np.float64)
    return {**row, "seconds": statistics.median(times), "runs": len(times), "iterations": iters,
            "rel_err": rel_err(x, exact), "iou": iou(x, exact), "peak_mb": mem, "mem_by": how}


def bench_size(N: int, repeats: int, budget: float, prev: dict) -> tuple[list, dict]:
    H = int(round(N**0.5))
    cases = [make_case(H, seed) for seed in (0, 1)]
    m0 = np.stack([c[0] for c in cases])
    S = np.stack([c[1] for c in cases])
    exact = exact_solution(m0, S)
    m0_t, S_t = torch.from_numpy(m0), torch.from_numpy(S)
    rows = []
    with CpuMeter() as meter:

        def estimate(key):
            if key not in prev:
                return None
            n0, t0 = prev[key]
            return t0 * (N / n0) ** GROWTH.get(key.split("/")[0], 2)

        def ref():
            return reference_solve(m0_t, S_t), 1

        rows.append(bench_row("reference", "torch", ref, exact, repeats, budget, estimate("reference/torch")))
        for solver in SOLVER_ORDER:
            for lib, (a, b) in (("torch", (m0_t, S_t)), ("numpy", (m0, S))):
                def run(a=a, b=b, solver=solver):
                    r = g.refine(a, b, solver=solver)
                    return r.solution, r.iterations
                rows.append(bench_row(solver, lib, run, exact, repeats, budget, estimate(f"{solver}/{lib}")))
    for r in rows:
        r["N"] = N
        if "seconds" in r:
            prev[f"{r['solver']}/{r['lib']}"] = (N, r["seconds"])
    return rows, {"N": N, "foreign_cpu_cores": meter.foreign, "S_perplexity_median":
                  float(np.median(np.exp(-(S[0] * np.log(S[0] + 1e-30)).sum(1))))}


def warm_start_experiment(N: int, steps: int = 20) -> list:
    """A slowly drifting sequence of systems (as over denoising steps): cold vs warm-started CG."""
    H = int(round(N**0.5))
    cases = [make_case(H, seed) for seed in (0, 1)]
    m0 = np.stack([c[0] for c in cases])
    S = np.stack([c[1] for c in cases])
    rng = np.random.default_rng(7)
    E, e = rng.random(S.shape).astype(np.float32), rng.normal(size=m0.shape).astype(np.float32)
    seq = []
    for t in range(steps):
        St = S + 0.02 * t / steps * E / N
        St /= St.sum(-1, keepdims=True)
        seq.append((np.clip(m0 + 0.02 * t / steps * e, 0, None), St))
    out = []
    for lib in ("torch", "numpy"):
        conv = (lambda a: torch.from_numpy(a)) if lib == "torch" else (lambda a: a)
        data = [(conv(a), conv(b)) for a, b in seq]
        for mode in ("cold", "warm"):
            prev, iters, t = None, 0, time.perf_counter()
            for a, b in data:
                r = g.refine(a, b, x0=prev if mode == "warm" else None)
                prev, iters = r.solution, iters + r.iterations
            out.append({"lib": lib, "mode": mode, "N": N, "systems": steps,
                        "total_seconds": time.perf_counter() - t, "total_iterations": iters})
    return out


# ----------------------------------------------------------------------------- report


def fmt_row(r) -> str:
    if "skipped" in r:
        return f"| {r['N']} | {r['solver']} | {r['lib']} | skipped ({r['skipped']}) | | | | |"
    return (f"| {r['N']} | {r['solver']} | {r['lib']} | {1e3 * r['seconds']:.2f} | {r['iterations']} | "
            f"{r['rel_err']:.1e} | {r['iou']:.3f} | {r['peak_mb']:.1f} ({r['mem_by']}) |")


def main() -> None:
    sizes = sorted(set(ARGS.sizes + ([16384] if ARGS.include_16384 else [])))
    load0 = os.getloadavg()
    meta = {"threads": ARGS.threads, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "loadavg_start": load0, "repeats": ARGS.repeats, "default_solver": g.DEFAULT_SOLVER,
            "note": "threads set via env vars; torch.set_num_threads never called (batched-LU hazard)"}
    peak_extra_mb(lambda: torch.zeros(1) + 1, "torch")  # the profiler's first use allocates ~65 MB itself
    rows, sections, prev = [], [], {}
    for N in sizes:
        r, sec = bench_size(N, ARGS.repeats, ARGS.budget, prev)
        rows += r
        sections.append(sec)
        print(f"... N={N} done (foreign CPU {sec['foreign_cpu_cores']:.2f} cores)", file=sys.stderr)
    warm = warm_start_experiment(ARGS.warm_size)
    meta["loadavg_end"] = os.getloadavg()

    lines = ["# CASA graph solvers: batch of 2, float32 S, whole `refine` call (build + solve)", "",
             f"threads={ARGS.threads} (torch reports {meta['torch_threads']}), torch {meta['torch']}, numpy "
             f"{meta['numpy']}, {meta['cpus']} CPUs; load average start {load0[0]:.2f} / end "
             f"{meta['loadavg_end'][0]:.2f}; median of up to {ARGS.repeats} runs; rtol 1e-5; default solver "
             f"`{g.DEFAULT_SOLVER}`.", "",
             "Foreign CPU use while each size ran (cores, other processes): " + ", ".join(
                 f"N={s['N']}: {s['foreign_cpu_cores']:.2f}" for s in sections) + ".",
             "Median row perplexity of S: " + ", ".join(f"N={s['N']}: {s['S_perplexity_median']:.0f}" for s in sections)
             + ".", "",
             "`reference` = LOCATEdit formulation (diag_embed D, L, Dw; batched torch.linalg.solve). rel err and IoU "
             "(mask > 0.2204 after min-max, worst of the batch) are against an exact float64 solve. `irls` and "
             "`vimaedit` solve different problems, so their error is a distance, not an accuracy.", "",
             "| N | solver | lib | ms / batch | iters | rel err | IoU | peak extra MB |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [fmt_row(r) for r in rows]

    def find(N, solver, lib):
        return next((r for r in rows if r["N"] == N and r["solver"] == solver and r["lib"] == lib and "seconds" in r), None)

    lines += ["", "## Goals", ""]
    for lib in ("torch", "numpy"):
        d, ref = find(1024, g.DEFAULT_SOLVER, lib), find(1024, "reference", "torch")
        if d and ref:
            sp = ref["seconds"] / d["seconds"]
            lines.append(f"- N=1024, `{g.DEFAULT_SOLVER}` ({lib}) vs reference: **{sp:.1f}x** faster (goal >= 5x), "
                         f"rel err {d['rel_err']:.1e} (goal <= 1e-3) -> {'met' if sp >= 5 and d['rel_err'] <= 1e-3 else 'NOT met'}")
        d, ch = find(4096, g.DEFAULT_SOLVER, lib), find(4096, "cholesky", lib)
        if d and ch:
            sp = ch["seconds"] / d["seconds"]
            lines.append(f"- N=4096, `{g.DEFAULT_SOLVER}` ({lib}) vs cholesky ({lib}): **{sp:.1f}x** faster (goal >= 5x), "
                         f"IoU {d['iou']:.4f} (goal >= 0.999) -> {'met' if sp >= 5 and d['iou'] >= 0.999 else 'NOT met'}")
    lines += ["", f"## Warm start: {warm[0]['systems']} slowly drifting systems at N={ARGS.warm_size} (batch 2, cg)", "",
              "| lib | start | total ms | total iterations |", "|---|---|---|---|"]
    lines += [f"| {w['lib']} | {w['mode']} | {1e3 * w['total_seconds']:.1f} | {w['total_iterations']} |" for w in warm]
    print("\n".join(lines))
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump({"meta": meta, "sections": sections, "rows": rows, "warm_start": warm}, f, indent=1)


if __name__ == "__main__":
    main()
