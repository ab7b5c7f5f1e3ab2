"""Sharding of targets (voxels) over devices with :mod:`jax.sharding`.

Ridge fits are independent per target once the Y-independent decompositions are done, so
:func:`~brainalign.encoders.fit_ridge_cv` replicates the design and its decompositions on every
device and splits the target columns of ``Y`` over a one-axis :class:`jax.sharding.Mesh` named
``"targets"``. Each device runs the same compiled program on its own columns
(:func:`jax.shard_map`), with no communication between devices; results are identical to one
device up to float round-off of differently sized matmul blocks.

By default the mesh spans ``jax.devices()``: every local GPU/TPU (or, for tests, every fake
CPU device made with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, which must be set
before jax is imported). Pass ``mesh=target_mesh(devices)`` to use a subset.

Multi-host (a TPU pod slice, several GPU nodes). Start one process per host and initialise
JAX's distributed runtime before any other jax call::

    import jax
    jax.distributed.initialize()   # or coordinator_address=..., num_processes=..., process_id=...
    from brainalign.encoders import fit_ridge_cv
    fit = fit_ridge_cv(X, Y, alphas=alphas, folds=folds)   # same X, Y, folds on every process

``jax.devices()`` then lists the devices of all hosts, so the default mesh spans them all.
Every process passes the same full ``X`` and ``Y`` (each only uploads the target columns of
its own devices, via :func:`jax.make_array_from_callback`), and every process receives the full
result, gathered with :func:`jax.experimental.multihost_utils.process_allgather`. On CPU-only
hosts the cross-process collectives use gloo (jax's default ``jax_cpu_collectives_implementation``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

TARGETS = "targets"


def target_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"targets"`` over ``devices`` (default: ``jax.devices()``).

    The axis type is ``Auto`` explicitly: jax >= 0.7 defaults ``jax.make_mesh`` to explicit
    axes, which would change how un-annotated intermediates are sharded.
    """
    devs = jax.devices() if devices is None else list(devices)
    if len(devs) == 0:
        raise ValueError("devices: expected at least one device, got none")
    return Mesh(np.asarray(devs, dtype=object), (TARGETS,), axis_types=(AxisType.Auto,))


def check_mesh(mesh: Mesh | None) -> Mesh:
    """Return ``mesh`` (or the default one) after checking it has a ``"targets"`` axis only."""
    if mesh is None:
        return target_mesh()
    if not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != (TARGETS,):
        names = getattr(mesh, "axis_names", None)
        raise ValueError(
            f"mesh: expected a jax.sharding.Mesh with the single axis ('{TARGETS}',), got axes {names}"
        )
    return mesh


def replicate(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """Place a host array on every device of ``mesh`` (each process supplies its copy)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, P()), lambda idx: x[idx])


def shard_targets(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """Split the last axis of ``x`` (targets) evenly over the ``"targets"`` axis of ``mesh``.

    ``x.shape[-1]`` must be a multiple of the number of devices.
    """
    x = np.asarray(x)
    spec = P(*([None] * (x.ndim - 1)), TARGETS)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda idx: x[idx])


def to_host(x: jax.Array) -> np.ndarray:
    """Fetch a (possibly sharded) array as one numpy array, gathering across processes."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
