"""The workspace's packaging promises: namespace package, slim cores, one console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_brainalign_is_a_namespace_package():
    for member in ("encoders", "feature-store", "cli"):
        src = ROOT / "packages" / member / "src" / "brainalign"
        assert src.is_dir()
        assert not (src / "__init__.py").exists(), f"{src} must stay a PEP 420 namespace"


def test_cores_import_without_torch_or_each_other():
    """encoders must not pull in torch/lance/duckdb/typer; features must not pull torch/jax/typer."""
    code = (
        "import sys\n"
        "import brainalign.encoders\n"
        "bad = sorted(m for m in ('torch', 'lance', 'duckdb', 'typer') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "import brainalign.features\n"
        "bad = sorted(m for m in ('torch', 'transformers', 'typer') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_lists_only_working_commands():
    exe = Path(sys.executable).with_name("brainalign")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "query" in out
    assert "not implemented" not in out.lower()
