"""Compiler options of the encoders' programs (brainalign.encoders._compile)."""

import jax
import jax.numpy as jnp
import numpy as np

from brainalign.encoders import _compile, block_folds, fit_ridge_cv


def _fit(X, Y):
    return fit_ridge_cv(X, Y, alphas=np.logspace(-1, 3, 5), folds=block_folds(len(X), 4))


def test_cpu_programs_compile_without_library_fusions():
    opts = _compile.compiler_options("cpu")
    assert dict(opts) == _compile.CPU_OPTIONS
    assert _compile.compiler_options("gpu") == ()

    def score(a, b, y):  # a matmul whose output only feeds a reduction
        return ((a @ b - y) ** 2).sum(0)

    args = (jnp.ones((64, 32)), jnp.ones((32, 48)), jnp.ones((64, 48)))
    hlo = jax.jit(score, compiler_options=dict(opts)).lower(*args).compile().as_text()
    assert "__ynn" not in hlo


def test_unknown_option_falls_back_to_xla_defaults(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 8)).astype(np.float32)
    Y = (X @ rng.standard_normal((8, 6)) + rng.standard_normal((120, 6))).astype(np.float32)
    ours = _fit(X, Y)
    monkeypatch.setattr(_compile, "CPU_OPTIONS", {"xla_cpu_option_that_does_not_exist": "1"})
    assert _compile.compiler_options("cpu") == ()
    plain = _fit(X, Y)  # compiled with XLA's defaults: same fit up to float32 round-off
    np.testing.assert_array_equal(ours.best_alpha, plain.best_alpha)
    np.testing.assert_allclose(ours.coef, plain.coef, rtol=1e-4, atol=1e-5)
