"""brainalign.features: instruction-conditioned layer embeddings as versioned Lance tables."""

from . import instructions, schemas, stimuli
from .store import FeatureStore, Float32View, Table, create_table, open_table

__all__ = [
    "FeatureStore",
    "Float32View",
    "HubError",
    "Table",
    "create_table",
    "instructions",
    "open_table",
    "pull",
    "push",
    "schemas",
    "stimuli",
]


def __getattr__(name: str):
    # the Hub verbs import huggingface_hub (seconds); load them on first use only
    if name in ("HubError", "pull", "push"):
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
