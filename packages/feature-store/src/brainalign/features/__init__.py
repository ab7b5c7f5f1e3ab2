"""brainalign.features: instruction-conditioned layer embeddings as versioned Lance tables."""

from . import schemas
from .hub import HubError, pull, push
from .store import FeatureStore, Float32View, Table, create_table, open_table

__all__ = [
    "FeatureStore", "Float32View", "HubError", "Table", "create_table", "open_table", "pull", "push", "schemas",
]
