"""brainalign.encoders: jit-compiled, batched ridge encoding models in JAX."""

from .delays import delay
from .estimators import RidgeCV
from .folds import block_folds, group_folds
from .hrf import convolve_hrf, spm_hrf
from .ridge import RidgeFit, default_memory_budget, fit_ridge_cv, predict, target_batch_size
from .scoring import pearson_r, r2_score

__all__ = [
    "RidgeCV",
    "RidgeFit",
    "block_folds",
    "convolve_hrf",
    "default_memory_budget",
    "delay",
    "fit_ridge_cv",
    "group_folds",
    "pearson_r",
    "predict",
    "r2_score",
    "spm_hrf",
    "target_batch_size",
]
