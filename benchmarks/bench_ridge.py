"""Benchmark: brainalign ``fit_ridge_cv`` vs himalaya ``RidgeCV`` and scikit-learn ``RidgeCV``.

Run from the repository root::

    uv run --locked python benchmarks/bench_ridge.py            # the issue's problem, writes BENCHMARKS.md
    uv run --locked python benchmarks/bench_ridge.py --quick    # a scaled-down smoke run, no write

Measured side by side in one process (medians of ``--repeats`` warm runs; the first,
compiling call of brainalign is reported separately):

* brainalign vs himalaya ``RidgeCV`` (numpy backend) on the same contiguous folds, alphas and
  selection score (R²), with agreement of their best alphas and held-out Pearson r;
* vs scikit-learn ``RidgeCV(alpha_per_target=True)`` (efficient leave-one-out, not K-fold:
  a different, cheaper-per-alpha problem, reported for scale only);
* vs the flop lower bound: the matmul and eigendecomposition flops of the algorithm (see
  ``ridge.py``) divided by this machine's float32 matmul rate, measured with jax in this run;
* ``n_spaces`` feature spaces in one batched call vs the same number of sequential calls, on a
  matmul-bound and on a small, overhead-bound per-space problem;
* peak resident memory of a 100k-target fit under a memory budget, in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def make_problem(n: int, p: int, t: int, seed: int = 0, n_spaces: int | None = None):
    """Random design with decaying spectrum and targets with a noisy linear response."""
    rng = np.random.default_rng(seed)
    shape = (n, p) if n_spaces is None else (n_spaces, n, p)
    X = rng.standard_normal(shape, dtype=np.float32)
    X *= 1.0 / np.sqrt(1.0 + np.arange(p, dtype=np.float32))  # decaying feature scales
    Xw = X if n_spaces is None else X[0]
    k = min(p, 64)
    W = rng.standard_normal((k, t), dtype=np.float32) * rng.uniform(0, 1, t).astype(np.float32)
    Y = Xw[:, :k] @ W + 3.0 * rng.standard_normal((n, t), dtype=np.float32) + 10.0
    return X, Y.astype(np.float32)


def ridge_flops(n: int, p: int, t: int, n_alphas: int, folds, platform: str = "cpu") -> float:
    """Flops of fit_ridge_cv (primal or dual, direct or compact scoring, training products
    sliced per fold or from atoms, as it chooses on ``platform`` with all folds in one chunk),
    counting ~9 r³ per eigh and ~4 n_val r² per QR of the validation design."""
    from brainalign.encoders.ridge import (
        _atoms_pay,
        _compact,
        _pad_index_sets,
        _train_atoms,
        _triangular_size,
    )

    n_train = max(len(f[0]) for f in folds)
    n_val = max(len(f[1]) for f in folds)
    found = None if p > n_train else _train_atoms(folds, n)
    atom_rows = _pad_index_sets(found[0])[0].size if found else 0
    atoms = bool(found) and _atoms_pay(atom_rows, len(found[0]), p, p, n_train, len(folds), 1)
    total = 2 * atom_rows * p * t if atoms else 0.0
    for _ in folds:
        r = min(p, n_train)
        dual = p > n_train
        gram = 2 * n_train * n_train * p if dual else 2 * n_train * p * p
        basis = 2 * n_val * n_train * p + 2 * n_val * n_train * r if dual else 2 * (n_train + n_val) * p * r
        if _compact(r, n_val, n_alphas, t, platform):  # QR, projected targets, triangular products
            scoring = 4 * n_val * r * r + 2 * n_val * r * t + 2 * n_alphas * _triangular_size(r) * t
        else:
            scoring = 2 * n_alphas * n_val * r * t
        project = 2 * p * r * t if atoms else 2 * n_train * r * t
        total += gram + 9 * r**3 + basis + project + scoring
    r = min(p, n)
    dual = p > n
    total += (2 * n * n * p + 2 * n * p * r) if dual else (4 * n * p * p)
    total += 9 * r**3 + 2 * n * r * t + 2 * p * r * t
    return total


def matmul_gflops(repeats: int = 5) -> float:
    """Float32 matmul rate of this machine with jax, on a problem-sized product: the faster of
    XLA's default CPU compilation and brainalign's compiler options (so the bound is never
    loosened by a slow matmul)."""
    import jax
    import jax.numpy as jnp

    from brainalign.encoders._compile import compiler_options

    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((4000, 1024), dtype=np.float32))
    b = jnp.asarray(rng.standard_normal((1024, 8000), dtype=np.float32))
    best = float("inf")
    for options in ((), compiler_options(jax.default_backend())):
        f = jax.jit(lambda a, b: a @ b, compiler_options=dict(options) or None)
        f(a, b).block_until_ready()
        best = min(best, _median_time(lambda f=f: f(a, b).block_until_ready(), repeats)[0])
    return 2 * 4000 * 1024 * 8000 / best / 1e9


@contextlib.contextmanager
def xla_default_fusions():
    """Compile brainalign's programs with XLA's default CPU options (its YNNPACK library
    fusions on), to measure what :mod:`brainalign.encoders._compile` changes."""
    from brainalign.encoders import _compile

    saved = dict(_compile.CPU_OPTIONS)
    _compile.CPU_OPTIONS.clear()
    try:
        yield
    finally:
        _compile.CPU_OPTIONS.update(saved)


def memory_child(args) -> None:
    """Runs in a fresh process: peak RSS of a fit with many targets under a budget."""
    from brainalign.encoders import block_folds, fit_ridge_cv
    from brainalign.encoders.ridge import _plan

    n, p, t = args.n_train, args.n_features, args.mem_targets
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, p), dtype=np.float32)
    Y = rng.standard_normal((n, t), dtype=np.float32)
    folds = block_folds(n, args.n_folds)
    alphas = np.logspace(-1, 4, args.n_alphas)
    budget = args.mem_budget
    plan = _plan(
        n_spaces=1,
        n_samples=n,
        n_features=p,
        n_train=max(len(f[0]) for f in folds),
        n_val=max(len(f[1]) for f in folds),
        n_alphas=args.n_alphas,
        n_folds=len(folds),
        n_targets=t,
        itemsize=4,
        memory_budget=budget,
    )
    # compile the very programs of the big fit on one batch of targets, so the peak below is
    # the fit's data, not XLA's compiler
    first = _reset_peak_rss()
    fit_ridge_cv(X, Y[:, : plan.batch_size], alphas=alphas, folds=folds, memory_budget=budget)
    compile_peak = _peak_rss() - first
    base = _reset_peak_rss()
    t0 = time.perf_counter()
    fit = fit_ridge_cv(X, Y, alphas=alphas, folds=folds, memory_budget=budget)
    dt = time.perf_counter() - t0
    peak = _peak_rss()
    outputs = sum(a.nbytes for a in fit)
    print(
        json.dumps(
            dict(
                base=base,
                peak=peak,
                budget=budget,
                outputs=outputs,
                inputs=X.nbytes + Y.nbytes,
                batch_size=plan.batch_size,
                compile_peak=compile_peak,
                n_batches=-(-t // plan.batch_size),
                seconds=dt,
            )
        )
    )


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) so it only covers what follows; return RSS now.

    Falls back to ``ru_maxrss`` (peak since start) where /proc/self/clear_refs is not writable.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss() -> int:
    try:
        return _status_kib("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--n-features", type=int, default=1024)
    ap.add_argument("--n-targets", type=int, default=20000)
    ap.add_argument("--n-alphas", type=int, default=10)
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-spaces", type=int, default=16)
    ap.add_argument("--spaces-big", default="2000,256,2000", help="n,p,t per space, matmul-bound")
    ap.add_argument("--spaces-small", default="300,32,500", help="n,p,t per space, overhead-bound")
    ap.add_argument(
        "--runs-problem",
        default="4,750,256,10000,13",
        help="runs,TRs per run,p,t,alphas: PCA-reduced features, leave-one-run-out",
    )
    ap.add_argument("--mem-targets", type=int, default=100_000)
    ap.add_argument("--mem-budget", type=int, default=1 << 30)
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument(
        "--skip-default-fusions", action="store_true", help="do not also time XLA's default CPU fusions"
    )
    ap.add_argument("--quick", action="store_true", help="scale everything down; do not write")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.n_features, args.n_targets = 600, 150, 256, 3000
        args.spaces_big, args.spaces_small = "600,128,1000", "200,16,200"
        args.runs_problem = "4,200,64,2000,13"
        args.mem_targets, args.mem_budget, args.no_write = 20_000, 200 << 20, True
    if args.memory_child:
        memory_child(args)
        return

    import jax
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV as HimalayaRidgeCV
    from sklearn.linear_model import RidgeCV as SkRidgeCV

    from brainalign.encoders import block_folds, fit_ridge_cv, pearson_r, predict

    set_backend("numpy")
    n, nt, p, t = args.n_train, args.n_test, args.n_features, args.n_targets
    alphas = np.logspace(-1, 5, args.n_alphas)
    X, Y = make_problem(n + nt, p, t)
    Xtr, Ytr, Xte, Yte = X[:n], Y[:n], X[n:], Y[n:]
    folds = block_folds(n, args.n_folds)
    rows: list[tuple[str, str]] = []
    print(f"problem: n_train={n} n_test={nt} p={p} t={t} alphas={args.n_alphas} folds={args.n_folds}")

    def ours():
        return fit_ridge_cv(Xtr, Ytr, alphas=alphas, folds=folds, score="r2")

    t0 = time.perf_counter()
    fit = ours()
    first = time.perf_counter() - t0
    hm = HimalayaRidgeCV(
        alphas=alphas.astype(np.float32),
        cv=folds,
        fit_intercept=True,
        solver_params=dict(score_func=_himalaya_r2()),
    )

    # alternate the three measurements so they see the same machine load (it is shared)
    flops = ridge_flops(n, p, t, args.n_alphas, folds)
    t_ours, t_him, t_fused, rates = [], [], [], []
    if args.skip_default_fusions:
        t_fused = None
    else:
        with xla_default_fusions():
            ours()  # compile
    for _ in range(args.repeats):
        rates.append(matmul_gflops(3))
        t_ours.append(_median_time(ours, 1)[0])
        t_him.append(_median_time(lambda: hm.fit(Xtr, Ytr), 1)[0])
        if t_fused is not None:
            with xla_default_fusions():
                t_fused.append(_median_time(ours, 1)[0])
    med_ours, med_him = statistics.median(t_ours), statistics.median(t_him)
    fit = ours()
    same_mask = np.isclose(fit.best_alpha, np.asarray(hm.best_alphas_), rtol=1e-4)
    same = float(np.mean(same_mask))
    r_ours = np.asarray(pearson_r(Yte, predict(fit, Xte)))
    r_him = np.asarray(pearson_r(Yte, np.asarray(hm.predict(Xte), dtype=np.float32)))
    dr = np.abs(r_ours - r_him)
    # targets whose alphas differ are near-ties of the validation curve (float32 round-off)
    cv_sorted = np.sort(np.asarray(fit.cv_scores), axis=0)
    gaps = (cv_sorted[-1] - cv_sorted[-2])[~same_mask]
    print(
        f"brainalign {_fmt(t_ours)} (first call {first:.2f}s)  himalaya {_fmt(t_him)}  GFLOP/s {_fmt(rates)}"
    )
    gflops = statistics.median(rates)
    bound = flops / (gflops * 1e9)
    bound_ratios = [to / (flops / (g * 1e9)) for to, g in zip(t_ours, rates, strict=True)]

    sk_time = None
    if not args.skip_sklearn:
        sk = SkRidgeCV(alphas=alphas, alpha_per_target=True, fit_intercept=True)
        sk_time, _ = _median_time(lambda: sk.fit(Xtr, Ytr), args.repeats)
        print(f"sklearn {sk_time:.2f}s")

    rows += [
        (
            "problem",
            f"n_train={n}, n_test={nt}, n_features={p}, n_targets={t}, "
            f"{args.n_alphas} alphas, {args.n_folds} contiguous folds, float32, score R²",
        ),
        (
            "brainalign fit_ridge_cv (median, warm)",
            f"{med_ours:.2f} s (runs: {_fmt(t_ours)}; first call incl. compile {first:.2f} s)",
        ),
        ("himalaya RidgeCV, numpy backend (median)", f"{med_him:.2f} s (runs: {_fmt(t_him)})"),
    ]
    if t_fused:
        med_fused = statistics.median(t_fused)
        rows.append(
            (
                "brainalign compiled with XLA's default CPU fusions (median)",
                f"{med_fused:.2f} s (runs: {_fmt(t_fused)}) → the compiler options save "
                f"{100 * (1 - med_ours / med_fused):.0f}%",
            )
        )
    rows += [
        ("**speed-up vs himalaya**", f"**{med_him / med_ours:.2f}x** (target >= 2x)"),
        (
            "agreement with himalaya",
            f"same best alpha on {100 * same:.2f}% of targets; max |Δ held-out r| on those "
            f"{dr[same_mask].max():.2e}"
            + (
                f"; the {(~same_mask).sum()} others are ties (best two mean validation R² within "
                f"{gaps.max():.0e}), max |Δ r| {dr[~same_mask].max():.2e}"
                if (~same_mask).any()
                else ""
            ),
        ),
    ]
    if sk_time is not None:
        rows.append(
            (
                "scikit-learn RidgeCV(alpha_per_target=True) (median)",
                f"{sk_time:.2f} s → brainalign **{sk_time / med_ours:.2f}x** faster "
                "(sklearn does efficient leave-one-out (GCV) in float64, not 5-fold CV)",
            )
        )
    rows += [
        (
            "float32 matmul rate (jax, this run, measured before each brainalign run)",
            f"{gflops:.0f} GFLOP/s (runs: {', '.join(f'{g:.0f}' for g in rates)})",
        ),
        (
            "algorithm flops",
            f"{flops / 1e9:.0f} GFLOP (matmuls + 9r³ per eigh + 4 n_val r² per QR where used) → bound {bound:.2f} s",
        ),
        (
            "**time / flop bound**",
            f"**{med_ours / bound:.2f}x** of medians; per run {_fmt(bound_ratios)} (target <= 1.3x)",
        ),
    ]

    # PCA-reduced features and leave-one-run-out folds: fewer components than validation TRs,
    # where validation predictions are scored through the QR factors of the validation design
    from brainalign.encoders import group_folds
    from brainalign.encoders import ridge as ridge_module

    n_runs, run_len, rp, rt, rk = (int(v) for v in args.runs_problem.split(","))
    Xr, Yr = make_problem(n_runs * run_len, rp, rt, seed=3)
    rfolds = group_folds(np.repeat(np.arange(n_runs), run_len))
    ralphas = np.logspace(-1, 5, rk)
    rule = ridge_module._compact

    def fit_runs(compact: bool):
        ridge_module._compact = rule if compact else (lambda *a: False)
        try:
            return fit_ridge_cv(Xr, Yr, alphas=ralphas, folds=rfolds)
        finally:
            ridge_module._compact = rule

    hr = HimalayaRidgeCV(
        alphas=ralphas.astype(np.float32),
        cv=rfolds,
        fit_intercept=True,
        solver_params=dict(score_func=_himalaya_r2()),
    )
    fc, fd = fit_runs(True), fit_runs(False)  # also compiles both
    tc, td, th = [], [], []
    for _ in range(args.repeats):
        tc.append(_median_time(lambda: fit_runs(True), 1)[0])
        td.append(_median_time(lambda: fit_runs(False), 1)[0])
        th.append(_median_time(lambda: hr.fit(Xr, Yr), 1)[0])
    mc, mdir, mh = (statistics.median(v) for v in (tc, td, th))
    same_r = float(np.mean(np.isclose(fc.best_alpha, np.asarray(hr.best_alphas_), rtol=1e-4)))
    print(f"runs problem: compact {_fmt(tc)} direct {_fmt(td)} himalaya {_fmt(th)}")
    rows.append(
        (
            f"leave-one-run-out, PCA-reduced ({n_runs} runs x {run_len} TRs, p={rp}, t={rt}, {rk} alphas)",
            f"scored through the validation design's QR factors "
            f"({'chosen' if rule(rp, run_len, rk, rt) else 'not chosen'} by the fit): "
            f"{mc:.2f} s (runs: {_fmt(tc)}); scored from the predictions {mdir:.2f} s → "
            f"**{mdir / mc:.2f}x**; himalaya {mh:.2f} s → **{mh / mc:.2f}x**; cv scores of the two "
            f"forms within {np.abs(fc.cv_scores - fd.cv_scores).max():.1e}, same best alpha as "
            f"himalaya on {100 * same_r:.2f}% of targets",
        )
    )

    for label, spec in (("matmul-bound", args.spaces_big), ("overhead-bound", args.spaces_small)):
        sn, sp, st = (int(v) for v in spec.split(","))
        Xs, Ys = make_problem(sn, sp, st, seed=2, n_spaces=args.n_spaces)
        sf = block_folds(sn, args.n_folds)

        def batched(Xs=Xs, Ys=Ys, sf=sf):
            return fit_ridge_cv(Xs, Ys, alphas=alphas, folds=sf)

        def seq(Xs=Xs, Ys=Ys, sf=sf):
            return [fit_ridge_cv(x, Ys, alphas=alphas, folds=sf) for x in Xs]

        batched(), seq()  # compile both
        tb, ts, tf = [], [], []
        if not args.skip_default_fusions:
            with xla_default_fusions():
                batched(), seq()
        for _ in range(args.repeats):
            tb.append(_median_time(batched, 1)[0])
            ts.append(_median_time(seq, 1)[0])
            if not args.skip_default_fusions:
                with xla_default_fusions():
                    tf.append((_median_time(batched, 1)[0], _median_time(seq, 1)[0]))
        mb, ms = statistics.median(tb), statistics.median(ts)
        print(f"{args.n_spaces} spaces {label}: batched {mb:.3f}s sequential {ms:.3f}s")
        value = f"batched {mb:.3f} s, sequential {ms:.3f} s → **{ms / mb:.2f}x** (target >= 1.5x)"
        if tf:
            fb, fs = (statistics.median(x) for x in zip(*tf, strict=True))
            value += f"; with XLA's default CPU fusions: batched {fb:.3f} s, sequential {fs:.3f} s"
        rows.append(
            (
                f"{args.n_spaces} spaces batched vs sequential, {label} (n={sn}, p={sp}, t={st} per space)",
                value,
            )
        )

    env = dict(os.environ)
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-child",
            "--n-train",
            str(n),
            "--n-features",
            str(p),
            "--n-alphas",
            str(args.n_alphas),
            "--n-folds",
            str(args.n_folds),
            "--mem-targets",
            str(args.mem_targets),
            "--mem-budget",
            str(args.mem_budget),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    m = json.loads(child.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    grew = m["peak"] - m["base"]
    rows.append(
        (
            f"peak memory, {args.mem_targets} targets (n={n}, p={p}), budget {m['budget'] / mib:.0f} MiB",
            f"{m['n_batches']} batches of {m['batch_size']}; {m['seconds']:.1f} s; RSS before fit "
            f"{m['base'] / mib:.0f} MiB (inputs {m['inputs'] / mib:.0f} MiB + runtime), peak {m['peak'] / mib:.0f} MiB: "
            f"grew {grew / mib:.0f} MiB = outputs {m['outputs'] / mib:.0f} MiB + working "
            f"{(grew - m['outputs']) / mib:.0f} MiB (budget {m['budget'] / mib:.0f} MiB); the first, "
            f"compiling call on one batch grew RSS by {m['compile_peak'] / mib:.0f} MiB",
        )
    )

    from _report import machine

    md = [
        f"### Ridge with cross-validated per-target alphas\n\nMachine: {machine()}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}. Command: "
        f"`uv run --locked python benchmarks/bench_ridge.py`.\n",
        "| measure | value |",
        "|---|---|",
    ]
    md += [f"| {a} | {b} |" for a, b in rows]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        from _report import write_block

        write_block("ridge", text)


def _fmt(ts: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in ts)


def _himalaya_r2():
    from himalaya.scoring import r2_score

    return r2_score


if __name__ == "__main__":
    main()
