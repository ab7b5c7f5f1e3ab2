"""brainalign.encoders: jit-compiled, batched ridge encoding models in JAX."""

from .banded import (
    BandedRidgeCV,
    BandedRidgeFit,
    dirichlet_candidates,
    fit_banded_ridge_cv,
    predict_banded,
    r2_score_split,
)
from .ceilings import (
    SubjectPoolCeiling,
    explainable_variance,
    fit_saturation,
    normalize,
    spearman_brown,
    split_half_ceiling,
    subject_pool_ceiling,
)
from .delays import delay
from .estimators import RidgeCV
from .folds import block_folds, group_folds
from .hrf import convolve_hrf, spm_hrf
from .partition import Partition, partition_regions, variance_partition
from .ridge import RidgeFit, default_memory_budget, fit_ridge_cv, predict, target_batch_size
from .scoring import pearson_r, r2_score
from .sharding import target_mesh
from .significance import (
    BootstrapCI,
    PermutationResult,
    block_permutations,
    bootstrap_ci,
    fdr_bh,
    permutation_test,
)
from .simulate import Simulation, expected_test_r2, region_labels, simulate_encoding

__all__ = [
    "BandedRidgeCV",
    "BandedRidgeFit",
    "BootstrapCI",
    "Partition",
    "PermutationResult",
    "RidgeCV",
    "RidgeFit",
    "Simulation",
    "SubjectPoolCeiling",
    "block_folds",
    "block_permutations",
    "bootstrap_ci",
    "convolve_hrf",
    "default_memory_budget",
    "delay",
    "dirichlet_candidates",
    "expected_test_r2",
    "explainable_variance",
    "fdr_bh",
    "fit_banded_ridge_cv",
    "fit_ridge_cv",
    "fit_saturation",
    "group_folds",
    "normalize",
    "partition_regions",
    "pearson_r",
    "permutation_test",
    "predict",
    "predict_banded",
    "r2_score",
    "r2_score_split",
    "region_labels",
    "simulate_encoding",
    "spearman_brown",
    "split_half_ceiling",
    "spm_hrf",
    "subject_pool_ceiling",
    "target_batch_size",
    "target_mesh",
    "variance_partition",
]
