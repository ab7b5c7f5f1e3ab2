"""Write a benchmark's markdown block into BENCHMARKS.md between its markers."""

from __future__ import annotations

import os
import platform
import re
import tempfile
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine() -> str:
    """One line naming the machine the figures were taken on."""
    return f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.python_implementation()} {platform.python_version()}"


def write_block(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` atomically."""
    text = path.read_text()
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".BENCHMARKS.", suffix=".md")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
