"""The project file ``brainalign.toml``: where a study's tables live and its default settings.

Every path the command uses comes from a flag or from this file, never from a constant::

    # brainalign.toml
    [project]
    root = "tables"            # directory of the *.lance tables (relative to this file)

    [tables]                   # optional: override single table locations
    features = "/data/features/qwen25vl.lance"

    [fit]                      # optional defaults for `brainalign fit` / `partition`
    preset = "fir4"
    test_runs = ["4"]

The file is found from ``--project PATH``, else ``$BRAINALIGN_PROJECT``, else the nearest
``brainalign.toml`` in the working directory or one of its parents. Without one, tables live
under ``--root`` (default: the working directory).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

TABLES = ("features", "generations", "responses", "voxels", "scores", "partitions")
FILENAME = "brainalign.toml"


@dataclass
class Project:
    """Resolved table locations and per-command defaults."""

    root: Path
    tables: dict[str, Path] = field(default_factory=dict)
    defaults: dict[str, dict] = field(default_factory=dict)
    path: Path | None = None

    def table(self, name: str, flag: str | Path | None = None) -> Path:
        """The location of table ``name``: the flag if given, else the project file, else
        ``<root>/<name>.lance``."""
        if flag is not None:
            return Path(flag)
        return self.tables.get(name, self.root / f"{name}.lance")

    def default(self, section: str, key: str, flag=None, fallback=None):
        """A flag value if given, else ``[section] key`` from the project file, else ``fallback``."""
        if flag is not None and flag != [] and flag != ():
            return flag
        return self.defaults.get(section, {}).get(key, fallback)


def find_project_file(start: Path | None = None) -> Path | None:
    env = os.environ.get("BRAINALIGN_PROJECT")
    if env:
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / FILENAME).is_file():
            return d / FILENAME
    return None


def load_project(path: str | Path | None = None, *, root: str | Path | None = None) -> Project:
    """Read the project file (see the module docstring); ``root`` overrides its root."""
    file = Path(path) if path is not None else find_project_file()
    data: dict = {}
    if file is not None:
        if not file.is_file():
            raise ValueError(f"project: no such project file {file}")
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"project: {file} is not valid TOML: {exc}") from None
    base = file.parent if file is not None else Path.cwd()
    proj = data.get("project", {})
    unknown = set(data.get("tables", {})) - set(TABLES)
    if unknown:
        raise ValueError(
            f"project: unknown table(s) {sorted(unknown)} in [tables] of {file}; expected {list(TABLES)}"
        )
    rootp = Path(root) if root is not None else base / proj.get("root", ".")
    tables = {
        k: (base / v if not Path(v).is_absolute() else Path(v)) for k, v in data.get("tables", {}).items()
    }
    defaults = {k: v for k, v in data.items() if k not in ("project", "tables") and isinstance(v, dict)}
    return Project(root=rootp, tables=tables, defaults=defaults, path=file)
