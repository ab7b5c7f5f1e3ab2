"""brainalign.features: instruction-conditioned layer embeddings as versioned Lance tables."""

from . import schemas
from .store import FeatureStore, Table, create_table, open_table

__all__ = ["FeatureStore", "Table", "create_table", "open_table", "schemas"]
