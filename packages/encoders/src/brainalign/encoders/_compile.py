"""XLA compiler options of the encoders' compiled programs.

On CPU, XLA (jax 0.10) hands matmuls to YNNPACK inside *library fusions* that also absorb
the reductions reading a matmul's output. For the shapes of a ridge fit (validation
predictions of every alpha reduced to per-target scores) such a fused matmul runs at a
fraction of the machine's matmul rate: a 5-fold, 10-alpha fit of 2000 x 1024 features and
20k targets took 11.6 s with the fusions and 8.8 s without (16 batched spaces: 7.2 s and
4.3 s; see ``benchmarks/bench_ridge.py``). The programs are therefore compiled on CPU with
those fusions off (``xla_cpu_experimental_ynn_fusion_type`` empty); matmuls then run as
individual library calls. Other platforms get XLA's defaults. Should a jax version not know
the option, it is dropped (checked once per process) rather than failing the fit.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _checked(platform: str, options: tuple) -> tuple:
    if platform != "cpu" or not options:
        return ()
    x = jax.device_put(np.float32(0), jax.devices("cpu")[0])
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(x).compile()
    except (jax.errors.JaxRuntimeError, ValueError):  # an option this XLA does not know: its defaults
        return ()
    return options


def compiler_options(platform: str) -> tuple[tuple[str, str], ...]:
    """Options (hashable ``(name, value)`` pairs, empty for XLA's defaults) for programs
    compiled for ``platform`` (``"cpu"``, ``"gpu"``, ``"tpu"``); ``dict()`` them for ``jax.jit``."""
    return _checked(platform, tuple(sorted(CPU_OPTIONS.items())))


def backend_jit(fun=None, **jit_kwargs):
    """``jax.jit`` with :func:`compiler_options` of the default backend, chosen at each call
    (a decorator for module-level functions, compiled before any device is known)."""
    if fun is None:
        return functools.partial(backend_jit, **jit_kwargs)
    jitted: dict[tuple, object] = {}

    @functools.wraps(fun)
    def call(*args, **kwargs):
        options = compiler_options(jax.default_backend())
        f = jitted.get(options)
        if f is None:
            f = jitted[options] = jax.jit(fun, compiler_options=dict(options) or None, **jit_kwargs)
        return f(*args, **kwargs)

    return call
