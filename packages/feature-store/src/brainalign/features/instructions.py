"""The instruction registry: versioned task instructions of the seed studies plus controls.

Instructions live in data files (``data/instructions/v<N>.json``) shipped inside the wheel, so
a features table can record exactly which registry version and which text it was computed
under. Each entry has an ``id`` (the ``instruction_id`` key column), ``text``, ``family``
(``video``, ``image``, ``audio``, ``text``, ``gameplay-action``, ``gameplay-reasoning``,
``control``), ``source`` and, for paraphrase controls, ``paraphrase_of``.

The control ``none`` has empty text: the prompt holds the stimulus alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

LATEST_VERSION = "1"

FAMILIES = ("video", "image", "audio", "text", "gameplay-action", "gameplay-reasoning", "control")


@dataclass(frozen=True)
class Instruction:
    """One task instruction: ``id``, ``text`` (may be empty for ``none``), ``family``, ``source``."""

    id: str
    text: str
    family: str
    source: str
    paraphrase_of: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "text": self.text,
            "family": self.family,
            "source": self.source,
            "paraphrase_of": self.paraphrase_of,
        }


@dataclass(frozen=True)
class Registry:
    """A versioned set of instructions, looked up by id."""

    version: str
    instructions: tuple[Instruction, ...]

    def __getitem__(self, instruction_id: str) -> Instruction:
        for ins in self.instructions:
            if ins.id == instruction_id:
                return ins
        raise KeyError(
            f"instruction_id: {instruction_id!r} is not in registry v{self.version}; known ids: {self.ids()}"
        )

    def __contains__(self, instruction_id: object) -> bool:
        return any(ins.id == instruction_id for ins in self.instructions)

    def __len__(self) -> int:
        return len(self.instructions)

    def ids(self, family: str | None = None) -> list[str]:
        return [i.id for i in self.instructions if family is None or i.family == family]

    def family(self, family: str) -> list[Instruction]:
        """All instructions of one family, in registry order."""
        if family not in FAMILIES:
            raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
        return [i for i in self.instructions if i.family == family]

    def paraphrases(self, instruction_id: str) -> list[Instruction]:
        return [i for i in self.instructions if i.paraphrase_of == instruction_id]

    @property
    def sha256(self) -> str:
        """Hash of the registry's content (ids and texts), recorded in provenance."""
        blob = json.dumps([i.to_dict() for i in self.instructions], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def available_versions() -> list[str]:
    root = resources.files("brainalign.features") / "data" / "instructions"
    names = [p.name for p in root.iterdir() if p.name.startswith("v") and p.name.endswith(".json")]
    return sorted((n[1:-5] for n in names), key=int)


@cache
def load_registry(version: str | None = None) -> Registry:
    """Load the registry data file of ``version`` (default: :data:`LATEST_VERSION`)."""
    version = LATEST_VERSION if version is None else str(version).removeprefix("v")
    path = resources.files("brainalign.features") / "data" / "instructions" / f"v{version}.json"
    if not path.is_file():
        raise ValueError(f"version: no instruction registry v{version}; have {available_versions()}")
    raw = json.loads(path.read_text())
    items = []
    seen: set[str] = set()
    for entry in raw["instructions"]:
        ins = Instruction(
            id=entry["id"],
            text=entry["text"],
            family=entry["family"],
            source=entry["source"],
            paraphrase_of=entry.get("paraphrase_of"),
        )
        if ins.id in seen:
            raise ValueError(f"registry v{version}: duplicate id {ins.id!r}")
        if ins.family not in FAMILIES:
            raise ValueError(f"registry v{version}: {ins.id!r} has unknown family {ins.family!r}")
        seen.add(ins.id)
        items.append(ins)
    return Registry(version=str(raw["version"]), instructions=tuple(items))


def get_instruction(instruction_id: str, version: str | None = None) -> Instruction:
    """The instruction with ``instruction_id`` in registry ``version``."""
    return load_registry(version)[instruction_id]


def resolve_instructions(instructions, version: str | None = None) -> list[Instruction]:
    """Turn ids, :class:`Instruction` objects, family names (``"family:video"``) or a mapping
    ``{id: text}`` of ad-hoc instructions into a list of :class:`Instruction`."""
    reg = load_registry(version)
    if isinstance(instructions, (str, Instruction)):
        instructions = [instructions]
    if isinstance(instructions, dict):
        return [
            reg[k] if (v is None and k in reg) else Instruction(k, v, "custom", "user-supplied")
            for k, v in instructions.items()
        ]
    out: list[Instruction] = []
    for item in instructions:
        if isinstance(item, Instruction):
            out.append(item)
        elif isinstance(item, str) and item.startswith("family:"):
            out.extend(reg.family(item.split(":", 1)[1]))
        else:
            out.append(reg[item])
    ids = [i.id for i in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"instructions: duplicate ids in {ids}")
    return out
