"""Shared fixtures of the study-recipe tests: tiny random-weight checkpoints of the real
architectures (built once per session by ``tests/features/tiny_models.py``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("LANCE_LOG", "error")

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "studies"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``tiny("qwen2.5-vl")`` -> directory of a tiny checkpoint (see tiny_models.BUILDERS)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import tiny_models

    root = tmp_path_factory.mktemp("tiny_models")
    return lambda name: tiny_models.build(name, root)
