"""Ridge on a GPU: brainalign ``fit_ridge_cv`` vs himalaya ``RidgeCV`` (``torch_cuda``), and the
fraction of the GPU's float32 matmul peak reached on a scale-up problem.

Measured in one process, on the GPU jax sees (medians of ``--repeats`` warm runs; the first,
compiling call is reported separately; every time is end to end, host arrays in and out):

1. the float32 matmul rate, ``jnp.matmul`` at ``precision="highest"`` (true float32, no TF32,
   as brainalign computes) on 8192^3, next to the GPU's nominal float32 peak (a table by device
   name);
2. the issue's problem (``n_train=2000, n_test=500, n_features=1024, n_targets=20000``, 10
   alphas, 5 contiguous folds, float32, R²): brainalign vs himalaya ``RidgeCV`` with the
   ``torch_cuda`` backend (float32; PyTorch's default keeps TF32 off for matmuls), timed
   alternately, with their agreement (same best alpha, held-out Pearson r);
3. the scale-up problem (10k samples x 4096 features x 90k targets, 10 alphas, 5 folds):
   brainalign's time, flops (counted as in ``bench_ridge.ridge_flops``), achieved FLOP/s and its
   fraction of the measured matmul rate and of the nominal peak; the host-to-device copy of
   the 3.6 GB of targets and the copy back of the weights are inside the time;
4. leave-one-run-out on PCA-reduced features (4 runs x 750 TRs, p=256, 10k targets, 13 alphas),
   scored through the validation design's QR factors vs from the predictions, both forced: on
   CPU the former is 1.5x faster and ``ridge._compact`` picks it; off CPU it picks the latter
   until this row says whether a GPU's QR pays for itself (``ridge._QR_SLOWDOWN``);
5. 16 feature spaces in one batched call vs 16 sequential calls (the CPU benchmark's matmul-
   and overhead-bound shapes).

Run on a GPU machine (repeats stop once ``--budget-s``, 300 s by default, is spent; the first
calls compile)::

    uv run --locked python benchmarks/bench_ridge_gpu.py [--save DIR] [--no-write]

On the lent GPU machines (python3 with jax[cuda], torch and scikit-learn; no uv, no network)
carry a wheel of himalaya (pure Python; it is an sdist on PyPI: ``pip wheel --no-deps
himalaya==0.4.11 -w .whl`` here) in an ignored ``.whl`` folder, then::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/himalaya-*.whl
    PYTHONPATH=/tmp/site:packages/encoders/src python3 benchmarks/bench_ridge_gpu.py --save $OUT

and render the saved run here: ``--render DIR/ridge_gpu.json`` prints its block and writes it
into BENCHMARKS.md (block ``ridge_gpu``). CPU smoke run of every step at small shapes:
``--quick`` (himalaya's numpy backend; no write).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ridge import make_problem, ridge_flops

# nominal dense float32 (non-tensor-core) peaks, TFLOP/s, by a substring of the device name;
# the first match wins, so the more specific names come first
FP32_PEAK_TFLOPS = (
    ("H100 PCIe", 51.2),
    ("H100", 66.9),
    ("H200", 66.9),
    ("GH200", 66.9),
    ("A100", 19.5),
    ("L40S", 91.6),
    ("L4", 30.3),
    ("A10", 31.2),
    ("V100", 15.7),
)


def fp32_peak(name: str) -> float | None:
    for key, tflops in FP32_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops * 1e12
    return None


class Clock:
    """Wall time since the start, and whether another repeat fits in the budget."""

    def __init__(self, budget_s: float):
        self.t0, self.budget = time.perf_counter(), budget_s

    def another(self, times: list[float], repeats: int, reserve: float = 0.0) -> bool:
        if len(times) >= repeats:
            return False
        if len(times) < 1:
            return True
        left = self.budget - (time.perf_counter() - self.t0) - reserve
        return left > max(times)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def matmul_rate(n: int, iters: int) -> float:
    """Float32 FLOP/s of ``jnp.matmul`` at ``precision="highest"`` on ``n x n x n``."""
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (n, n), jnp.float32)
    b = jax.random.normal(k2, (n, n), jnp.float32)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, precision="highest"))
    f(a, b).block_until_ready()
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(iters):
            c = f(a, b)
        c.block_until_ready()
        rates.append(2 * n**3 * iters / (time.perf_counter() - t0))
    return statistics.median(rates)


def himalaya_estimator(alphas, folds):
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import r2_score

    return RidgeCV(
        alphas=alphas.astype(np.float32),
        cv=folds,
        fit_intercept=True,
        solver_params=dict(score_func=r2_score),
    )


def run(args) -> dict:
    import jax
    from himalaya.backend import set_backend

    from brainalign.encoders import block_folds, fit_ridge_cv, group_folds, pearson_r, predict
    from brainalign.encoders import ridge as ridge_module
    from brainalign.encoders.ridge import default_memory_budget

    dev = jax.devices()[0]
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        torch, cuda = None, False
    backend = "torch_cuda" if cuda else "numpy"
    hb = set_backend(backend)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    import himalaya

    clock = Clock(args.budget_s)
    r: dict = {
        "device": getattr(dev, "device_kind", str(dev)),
        "platform": dev.platform,
        "n_devices": jax.device_count(),
        "jax": jax.__version__,
        "himalaya": getattr(himalaya, "__version__", "?"),
        "himalaya_backend": backend,
        "torch": getattr(torch, "__version__", None),
        "memory_budget": default_memory_budget(),
        "repeats": args.repeats,
        "n_spaces": args.n_spaces,
        "matmul_n": args.matmul_n,
    }
    log = lambda msg: print(f"[{time.perf_counter() - clock.t0:6.1f}s] {msg}", flush=True)  # noqa: E731
    r["matmul_flops"] = matmul_rate(args.matmul_n, args.matmul_iters)
    r["peak_flops"] = fp32_peak(r["device"])
    log(f"{r['device']}: float32 matmul {r['matmul_flops'] / 1e12:.2f} TFLOP/s")

    # 2. the problem, alternating brainalign and himalaya
    n, nt, p, t = args.main
    alphas = np.logspace(-1, 5, 10)
    X, Y = make_problem(n + nt, p, t)
    Xtr, Ytr, Xte, Yte = X[:n], Y[:n], X[n:], Y[n:]
    folds = block_folds(n, 5)
    ours = lambda: fit_ridge_cv(Xtr, Ytr, alphas=alphas, folds=folds)  # noqa: E731
    hm = himalaya_estimator(alphas, folds)

    def theirs():
        hm.fit(Xtr, Ytr)
        sync()

    first, fit = timed(ours)
    first_h, _ = timed(theirs)
    t_ours, t_him = [], []
    while clock.another(t_ours, args.repeats):
        t_ours.append(timed(ours)[0])
        t_him.append(timed(theirs)[0])
    fit = ours()
    same = np.isclose(fit.best_alpha, hb.to_numpy(hm.best_alphas_), rtol=1e-4)
    pred_h = np.asarray(hb.to_numpy(hm.predict(Xte)), dtype=np.float32)
    dr = np.abs(np.asarray(pearson_r(Yte, predict(fit, Xte))) - np.asarray(pearson_r(Yte, pred_h)))
    r["main"] = {
        "shape": [n, nt, p, t],
        "first_s": first,
        "himalaya_first_s": first_h,
        "ours_s": t_ours,
        "himalaya_s": t_him,
        "flops": ridge_flops(n, p, t, 10, folds, dev.platform),
        "same_alpha": float(same.mean()),
        "max_dr_same": float(dr[same].max()) if same.any() else None,
        "max_dr_all": float(dr.max()),
    }
    hm = None  # its GPU arrays go before the scale-up problem
    if cuda:
        torch.cuda.empty_cache()
    log(f"main: brainalign {t_ours} himalaya {t_him}")

    # 3. scale-up: brainalign alone
    sn, sp, st = args.scale
    Xs, Ys = make_problem(sn, sp, st, seed=1)
    sfolds = block_folds(sn, 5)
    big = lambda: fit_ridge_cv(Xs, Ys, alphas=alphas, folds=sfolds)  # noqa: E731
    first, _ = timed(big)
    ts: list[float] = []
    while clock.another(ts, args.repeats, reserve=args.reserve_s):
        ts.append(timed(big)[0])
    r["scale"] = {
        "shape": [sn, sp, st],
        "first_s": first,
        "ours_s": ts,
        "flops": ridge_flops(sn, sp, st, 10, sfolds, dev.platform),
    }
    Xs = Ys = None
    log(f"scale-up: {ts}")

    # 4. PCA-reduced features, leave-one-run-out: both scoring forms
    n_runs, run_len, rp, rt, rk = args.runs
    Xr, Yr = make_problem(n_runs * run_len, rp, rt, seed=3)
    rfolds = group_folds(np.repeat(np.arange(n_runs), run_len))
    ralphas = np.logspace(-1, 5, rk)
    rule = ridge_module._compact

    def fit_runs(compact: bool):
        ridge_module._compact = lambda *a: compact
        try:
            return fit_ridge_cv(Xr, Yr, alphas=ralphas, folds=rfolds)
        finally:
            ridge_module._compact = rule

    fc, fd = fit_runs(True), fit_runs(False)
    tc, td = [], []
    while clock.another(tc, args.repeats, reserve=args.reserve_s):
        tc.append(timed(lambda: fit_runs(True))[0])
        td.append(timed(lambda: fit_runs(False))[0])
    r["runs"] = {
        "shape": [n_runs, run_len, rp, rt, rk],
        "chosen": bool(rule(min(rp, (n_runs - 1) * run_len), run_len, rk, rt, dev.platform)),
        "compact_s": tc,
        "direct_s": td,
        "max_dcv": float(np.abs(fc.cv_scores - fd.cv_scores).max()),
    }
    log(f"runs: compact {tc} direct {td}")

    # 5. batched spaces vs sequential calls
    r["spaces"] = []
    for label, (bn, bp, bt) in (("matmul-bound", args.spaces_big), ("overhead-bound", args.spaces_small)):
        Xb, Yb = make_problem(bn, bp, bt, seed=2, n_spaces=args.n_spaces)
        bf = block_folds(bn, 5)
        batched = lambda Xb=Xb, Yb=Yb, bf=bf: fit_ridge_cv(Xb, Yb, alphas=alphas, folds=bf)  # noqa: E731
        seq = lambda Xb=Xb, Yb=Yb, bf=bf: [fit_ridge_cv(x, Yb, alphas=alphas, folds=bf) for x in Xb]  # noqa: E731
        batched(), seq()
        tb, tq = [], []
        while clock.another(tb, args.repeats, reserve=args.reserve_s / 2):
            tb.append(timed(batched)[0])
            tq.append(timed(seq)[0])
        r["spaces"].append({"label": label, "shape": [bn, bp, bt], "batched_s": tb, "sequential_s": tq})
        log(f"{label}: batched {tb} sequential {tq}")
    r["total_s"] = time.perf_counter() - clock.t0
    return r


def _med(v) -> float:
    return statistics.median(v)


def _runs(v) -> str:
    return ", ".join(f"{x:.3f}" for x in v)


def render(r: dict) -> str:
    tf = lambda f: f"{f / 1e12:.1f} TFLOP/s"  # noqa: E731
    peak = r["peak_flops"]
    m, s, ru = r["main"], r["scale"], r["runs"]
    mo, mh = _med(m["ours_s"]), _med(m["himalaya_s"])
    so = _med(s["ours_s"])
    achieved = s["flops"] / so
    rows = [
        (
            f"float32 matmul rate (jnp.matmul, precision highest, {r['matmul_n']}³)",
            tf(r["matmul_flops"])
            + (f"; nominal float32 peak {tf(peak)}" if peak else "; nominal peak unknown"),
        ),
        (
            "problem",
            "n_train={}, n_test={}, n_features={}, n_targets={}, 10 alphas, 5 contiguous folds, float32, "
            "score R²".format(*m["shape"]),
        ),
        (
            "brainalign fit_ridge_cv (median, warm)",
            f"{mo:.3f} s (runs: {_runs(m['ours_s'])}; first call incl. compile {m['first_s']:.2f} s); "
            f"{tf(m['flops'] / mo)}",
        ),
        (
            f"himalaya RidgeCV, {r['himalaya_backend']} backend (median)",
            f"{mh:.3f} s (runs: {_runs(m['himalaya_s'])}; first call {m['himalaya_first_s']:.2f} s)",
        ),
        ("**speed-up vs himalaya**", f"**{mh / mo:.2f}x** (target >= 2x)"),
        (
            "agreement with himalaya",
            f"same best alpha on {100 * m['same_alpha']:.2f}% of targets; max |Δ held-out r| on those "
            + (f"{m['max_dr_same']:.2e}" if m["max_dr_same"] is not None else "n/a")
            + f", on all {m['max_dr_all']:.2e}",
        ),
        (
            "scale-up: n={}, p={}, t={}, 10 alphas, 5 folds".format(*s["shape"]),
            f"{so:.2f} s (runs: {_runs(s['ours_s'])}; first call incl. compile {s['first_s']:.2f} s); "
            f"{s['flops'] / 1e12:.1f} TFLOP → {tf(achieved)} = **{100 * achieved / r['matmul_flops']:.0f}%** of "
            f"the measured matmul rate"
            + (f", **{100 * achieved / peak:.0f}%** of the nominal float32 peak" if peak else ""),
        ),
        (
            "leave-one-run-out, PCA-reduced ({} runs x {} TRs, p={}, t={}, {} alphas)".format(*ru["shape"]),
            f"through the validation design's QR factors ({'chosen' if ru['chosen'] else 'not chosen'} by "
            f"the fit) {_med(ru['compact_s']):.3f} s; from the predictions {_med(ru['direct_s']):.3f} s → "
            f"**{_med(ru['direct_s']) / _med(ru['compact_s']):.2f}x**; cv scores within {ru['max_dcv']:.1e}",
        ),
    ]
    for sp in r["spaces"]:
        b, q = _med(sp["batched_s"]), _med(sp["sequential_s"])
        rows.append(
            (
                "{} spaces batched vs sequential, {} (n={}, p={}, t={} per space)".format(
                    r["n_spaces"], sp["label"], *sp["shape"]
                ),
                f"batched {b:.3f} s, sequential {q:.3f} s → **{q / b:.2f}x** (target >= 1.5x)",
            )
        )
    head = (
        f"### Ridge on a GPU\n\nDevice: {r['device']} ({r['platform']}, {r['n_devices']} device(s)), jax "
        f"{r['jax']}, himalaya {r['himalaya']}" + (f", torch {r['torch']}" if r["torch"] else "") + ". "
        f"Memory budget per device (default) {r['memory_budget'] / 2**30:.1f} GiB. Medians of up to "
        f"{r['repeats']} warm runs (as the time budget allowed); times are end to end, host arrays in "
        f"and out. Command: `python3 benchmarks/bench_ridge_gpu.py --save DIR`, then `--render`.\n"
    )
    return "\n".join([head, "| measure | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]])


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--main", type=_ints, default=[2000, 500, 1024, 20000], help="n_train,n_test,p,t")
    ap.add_argument("--scale", type=_ints, default=[10000, 4096, 90000], help="n,p,t of the scale-up problem")
    ap.add_argument("--runs", type=_ints, default=[4, 750, 256, 10000, 13], help="runs,TRs,p,t,alphas")
    ap.add_argument("--spaces-big", type=_ints, default=[2000, 256, 2000])
    ap.add_argument("--spaces-small", type=_ints, default=[300, 32, 500])
    ap.add_argument("--n-spaces", type=int, default=16)
    ap.add_argument("--matmul-n", type=int, default=8192)
    ap.add_argument("--matmul-iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop further repeats past this")
    ap.add_argument("--reserve-s", type=float, default=60.0, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run at small shapes; no write")
    ap.add_argument("--save", type=Path, help="directory for ridge_gpu.json and ridge_gpu.md")
    ap.add_argument("--render", type=Path, help="print (and write) the block of a saved ridge_gpu.json")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.render:
        md = render(json.loads(args.render.read_text()))
    else:
        if args.quick:
            args.main, args.scale, args.runs = [400, 100, 128, 1000], [800, 256, 2000], [4, 100, 32, 500, 13]
            args.spaces_big, args.spaces_small = [400, 64, 300], [120, 8, 50]
            args.n_spaces, args.matmul_n, args.matmul_iters, args.repeats = 4, 512, 2, 2
            args.no_write = True
        r = run(args)
        md = render(r)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / "ridge_gpu.json").write_text(json.dumps(r, indent=1))
            (args.save / "ridge_gpu.md").write_text(md)
    print(md)
    if not args.no_write and not args.quick:
        from _report import write_block

        write_block("ridge_gpu", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
