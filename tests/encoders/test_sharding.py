"""Targets sharded over 8 (fake CPU) devices give the same fit as one device.

The device count of the CPU platform is fixed when jax starts, so the 8-device run happens in
a fresh interpreter with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from brainalign.encoders import block_folds, fit_ridge_cv
from brainalign.encoders.sharding import check_mesh, shard_targets, target_mesh

CHILD = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    from brainalign.encoders import block_folds, fit_ridge_cv
    from brainalign.encoders.sharding import shard_targets, target_mesh

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    Xs = rng.standard_normal((2, 90, 12)).astype(np.float32)
    Y = (Xs[0] @ rng.standard_normal((12, 61)) + 2 * rng.standard_normal((90, 61))).astype(np.float32)
    kw = dict(alphas=np.logspace(-1, 4, 11), folds=block_folds(90, 3))
    one = fit_ridge_cv(Xs, Y, mesh=target_mesh(jax.devices()[:1]), **kw)
    eight = fit_ridge_cv(Xs, Y, **kw)                    # default mesh: all 8 devices
    batched = fit_ridge_cv(Xs, Y, batch_size=20, **kw)   # 4 batches of 24 columns, 3 per device
    from brainalign.encoders import ridge
    ridge._compact = lambda *a: True                      # scored through the QR factors
    compact = fit_ridge_cv(Xs, Y, **kw)
    ridge._atoms_pay = lambda *a: True                    # training products from the atoms
    atoms = fit_ridge_cv(Xs, Y, **kw)
    shards = shard_targets(np.zeros((4, 24), np.float32), target_mesh()).addressable_shards
    out = {"n_shards": len(shards), "shard_shape": list(shards[0].data.shape),
           "mesh_size": int(target_mesh().devices.size)}
    for name, fit in (("eight", eight), ("batched", batched), ("compact", compact), ("atoms", atoms)):
        for field, a, b in zip(one._fields, one, fit):
            out[f"{name}.{field}.maxdiff"] = float(np.abs(a - b).max())
        out[f"{name}.same_alpha"] = float((one.best_alpha == fit.best_alpha).mean())
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_eight_fake_devices_shard_the_targets(eight_devices):
    assert eight_devices["mesh_size"] == 8
    assert eight_devices["n_shards"] == 8 and eight_devices["shard_shape"] == [4, 3]


@pytest.mark.parametrize("name", ["eight", "batched", "compact", "atoms"])
def test_sharded_fit_equals_one_device(eight_devices, name):
    assert eight_devices[f"{name}.same_alpha"] == 1.0
    for field in ("coef", "intercept", "cv_scores", "best_alpha"):
        assert eight_devices[f"{name}.{field}.maxdiff"] < 1e-5, field


def test_mesh_checks_and_single_device_mesh():
    mesh = target_mesh()
    assert mesh.axis_names == ("targets",) and mesh.devices.size == jax.device_count()
    assert check_mesh(None).axis_names == ("targets",)
    other = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("voxels",))
    with pytest.raises(ValueError, match=r"^mesh"):
        check_mesh(other)
    with pytest.raises(ValueError, match=r"^devices"):
        target_mesh([])
    arr = shard_targets(np.arange(6.0).reshape(2, 3), target_mesh(jax.devices()[:1]))
    np.testing.assert_array_equal(np.asarray(arr), np.arange(6.0).reshape(2, 3))
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((40, 3)), rng.standard_normal((40, 2))
    a = fit_ridge_cv(X, Y, alphas=[1.0, 10.0], folds=block_folds(40, 2), mesh=target_mesh(jax.devices()[:1]))
    b = fit_ridge_cv(X, Y, alphas=[1.0, 10.0], folds=block_folds(40, 2))
    np.testing.assert_array_equal(a.coef, b.coef)


MULTIHOST_CHILD = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    import numpy as np
    from brainalign.encoders import block_folds, fit_ridge_cv
    from brainalign.encoders.sharding import target_mesh

    assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 8)).astype(np.float32)
    Y = (X @ rng.standard_normal((8, 13)) + rng.standard_normal((60, 13))).astype(np.float32)
    kw = dict(alphas=np.logspace(-1, 3, 5), folds=block_folds(60, 3))
    both = fit_ridge_cv(X, Y, **kw)                                     # targets split over 2 hosts
    local = fit_ridge_cv(X, Y, mesh=target_mesh(jax.local_devices()), **kw)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(local, both))
    print(json.dumps({"maxdiff": diff, "shape": list(both.coef.shape)}))
    """
)


def test_two_processes_with_jax_distributed():
    """Two local processes, one CPU device each, joined by jax.distributed (gloo collectives)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-c", MULTIHOST_CHILD, f"127.0.0.1:{port}"]
    procs = [
        subprocess.Popen([*cmd, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for o in outs:  # every process gets the full, gathered result, equal to a local fit
        assert o["shape"] == [8, 13]
        assert o["maxdiff"] < 1e-5
