"""A Hub-compatible HTTP server for tests (``server.serve``) and :func:`point_client`, which
points ``huggingface_hub`` at it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest


def point_client(server, root: Path, token: str) -> pytest.MonkeyPatch:
    """Point ``huggingface_hub`` (environment and the constants it read at import) at ``server``
    with ``token``, caches under ``root``; call ``.undo()`` on the returned MonkeyPatch to restore."""
    from huggingface_hub import constants

    hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")
    env = {
        "HF_ENDPOINT": server.endpoint,
        "HF_HOME": str(root / "hf_home"),
        "HF_HUB_CACHE": str(root / "hf_cache"),
        "HF_TOKEN": token,
        "HF_HUB_DISABLE_XET": "1",  # the plain LFS upload path: the server does not speak Xet
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    mp.delenv("HF_HUB_OFFLINE", raising=False)
    for k, v in {
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "ENDPOINT": server.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_CACHE": env["HF_HUB_CACHE"],
        "HF_HOME": env["HF_HOME"],
        "HF_TOKEN_PATH": str(root / "hf_home" / "token"),
        "HF_STORED_TOKENS_PATH": str(root / "hf_home" / "stored_tokens"),
    }.items():
        mp.setattr(constants, k, v, raising=False)
    mp.setattr(hf_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    return mp
