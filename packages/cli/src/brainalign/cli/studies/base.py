"""The interface every study dataset loader implements.

A loader knows one dataset's real on-disk layout. It checks a user's copy before any heavy
work starts, builds the stimulus manifests whose (stimulus_set, run, tr) keys match the
responses it ingests, names the held-out runs, and may provide a noise ceiling and
study-specific report tables. Loaders are registered by name in :data:`DATASETS` and imported
lazily, so ``brainalign run`` only imports what a recipe uses.

Writing a loader for a new dataset: subclass :class:`StudyDataset`, implement the abstract
methods, and add ``"name": "package.module:Class"`` to :data:`DATASETS` (or pass the
``"module:Class"`` path as ``[data] dataset`` in a recipe).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from brainalign.features.stimuli import Manifest

Progress = Callable[[str], None]


class RecipeError(ValueError):
    """A recipe or the data it points at cannot be run; the message lists every problem."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(
            self.problems[0]
            if len(self.problems) == 1
            else f"{len(self.problems)} problems:\n  - " + "\n  - ".join(self.problems)
        )


@dataclass
class ReportPart:
    """Extra tables (name -> rows) and figures (name -> PNG file name in the report folder)
    a loader adds to the study's report page."""

    tables: dict[str, list[dict]] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class StudyDataset:
    """Base class of dataset loaders.

    Parameters
    ----------
    root : the user's copy of the dataset (``[data] root`` in the recipe, or ``--data``).
    options : the other keys of the recipe's ``[data]`` table (loader specific; unknown keys
        must be reported by :meth:`check`).
    """

    #: registry name, e.g. ``"movie10"``
    name: ClassVar[str] = ""
    #: stimulus modalities :meth:`manifest` can build, e.g. ``("video", "audio")``
    modalities: ClassVar[tuple[str, ...]] = ()
    #: the ``[data]`` option keys this loader understands (besides ``dataset``, ``root``, ``subjects``)
    option_keys: ClassVar[tuple[str, ...]] = ()
    #: repetition time in seconds (None for trial-level data)
    tr: ClassVar[float | None] = None
    #: ``"fmri"`` (ingest, fit, partition) or ``"behaviour"`` (no brain data: only
    #: :meth:`report` runs, e.g. reading times vs model surprisal)
    kind: ClassVar[str] = "fmri"

    def __init__(self, root: str | Path, options: Mapping[str, Any] | None = None):
        self.root = Path(root).expanduser()
        self.options = dict(options or {})

    # ---- checks and plan -----------------------------------------------------------------
    def check(self) -> list[str]:
        """Every problem with the data at :attr:`root` (missing files, inconsistent TR grids,
        unknown options), each as one message naming the file or option. Cheap: reads headers,
        not data."""
        raise NotImplementedError

    def subjects(self) -> list[str]:
        """Subjects found (``sub-01`` style), after the ``[data] subjects`` selection."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """Sizes for ``--dry-run``: at least ``n_samples`` (per subject, TRs or trials),
        ``n_voxels`` (per subject, an estimate is fine) and ``runs``."""
        raise NotImplementedError

    # ---- stimuli -------------------------------------------------------------------------
    def manifest(self, modality: str, **options: Any) -> Manifest:
        """The stimuli of one modality with keys (stimulus_set, run, tr) matching the responses.
        ``options`` come from the recipe's ``[embed.<modality>]`` table."""
        raise NotImplementedError

    def plan_items(self, modality: str, **options: Any) -> tuple[int, str]:
        """``(number of stimuli, stimulus_set)`` that :meth:`manifest` would give, for
        ``--dry-run``. The default builds the manifest; a loader whose manifest decodes media
        (an audio track, say) overrides it with a count from headers."""
        man = self.manifest(modality, **options)
        return len(man.items), man.stimulus_set

    # ---- responses -----------------------------------------------------------------------
    def ingest(self, responses: Path, voxels: Path, *, progress: Progress | None = None) -> list[Any]:
        """Write the responses and voxels tables for every selected subject; return the
        :class:`brainalign.cli.ingest.IngestSummary` of each."""
        raise NotImplementedError

    def test_runs(self) -> list[str]:
        """Runs held out for scoring (the others train, with CV by run)."""
        raise NotImplementedError

    def subject_runs(self, subject: str) -> list[str] | None:
        """The run keys of ``subject`` when every subject has their own runs in one stimulus
        set (subjects saw different stimuli, e.g. their own gameplay): the subject's fits then
        join only these runs and hold out only the test runs among them. None (the default):
        all subjects share the runs."""
        return None

    def ceiling(self, responses: Path, subject: str) -> np.ndarray | None:
        """Per-voxel noise ceiling in r units for ``subject`` (or None)."""
        return None

    # ---- report --------------------------------------------------------------------------
    def report(self, ctx: Any, out: Path) -> ReportPart:
        """Study-specific tables and figures; ``ctx`` is the
        :class:`brainalign.cli.studies.runner.RunContext` of the finished run."""
        return ReportPart()


DATASETS: dict[str, str] = {
    "movie10": "brainalign.cli.studies.datasets.movie10:Movie10",
    "nsd": "brainalign.cli.studies.datasets.nsd:NSD",
    "pereira2018": "brainalign.cli.studies.datasets.language:Pereira2018",
    "blank2014": "brainalign.cli.studies.datasets.language:Blank2014",
    "wehbe2014": "brainalign.cli.studies.datasets.language:Wehbe2014",
    "futrell2018": "brainalign.cli.studies.datasets.language:Futrell2018",
    "gameplay": "brainalign.cli.studies.datasets.gameplay:Gameplay",
}


def has_ceiling_sql(alias: str = "") -> str:
    """SQL: the scores row's ceiling is usable (finite and positive)."""
    return f"isfinite({alias}ceiling) AND {alias}ceiling > 0"


def over_ceiling_sql(agg: str, alias: str = "") -> str:
    """SQL for Brain-Score's order of normalisation over one group of scores rows: ``agg``
    (``avg`` or ``median``) of r over voxels, divided by the median of the usable ceilings."""
    return f"{agg}({alias}r) / median({alias}ceiling) FILTER (WHERE {has_ceiling_sql(alias)})"


def dataset_class(name: str) -> type[StudyDataset]:
    """The loader class registered as ``name`` (or a ``module:Class`` path)."""
    target = DATASETS.get(name, name)
    if ":" not in target:
        raise RecipeError(f"data.dataset: expected one of {sorted(DATASETS)} or 'module:Class', got {name!r}")
    mod, _, cls = target.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), cls)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"data.dataset: cannot load loader {target!r} ({exc})") from exc
    if not (isinstance(obj, type) and issubclass(obj, StudyDataset)):
        raise RecipeError(f"data.dataset: {target!r} is not a StudyDataset subclass")
    return obj
