"""Arrow schemas of every brainalign table, in one place.

Keys are plain columns so DuckDB, Polars or Spark can join them:
features × responses on (``stimulus_set``, ``run``, ``tr``) for time-locked stimuli and on
``stimulus_id`` for trials. Every table also carries ``key``, a canonical string of its key
columns, which makes idempotent writes (``merge_insert`` on one non-null column) exact even
where key columns are null.
"""

from __future__ import annotations

import pyarrow as pa

PROVENANCE_KEY = b"brainalign.provenance"
KIND_KEY = b"brainalign.kind"
SCHEMA_VERSION = "1"

EMBEDDING_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}

# columns that identify one features row (besides the derived ``key``)
FEATURE_KEYS = (
    "stimulus_set",
    "stimulus_id",
    "run",
    "tr",
    "model",
    "instruction_id",
    "component",
    "layer",
    "pooling",
)


def features_schema(dim: int, dtype: str = "float32") -> pa.Schema:
    """Schema of a features table with ``embedding`` of ``dim`` values stored as ``dtype``."""
    if dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(EMBEDDING_DTYPES)}, got {dtype!r}")
    if int(dim) < 1:
        raise ValueError(f"dim: expected a positive embedding size, got {dim}")
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("stimulus_set", pa.string(), nullable=False),
            pa.field("stimulus_id", pa.string(), nullable=False),
            pa.field("run", pa.string()),
            pa.field("tr", pa.int32()),
            pa.field("onset_s", pa.float64()),
            pa.field("window_start_s", pa.float64()),
            pa.field("window_end_s", pa.float64()),
            pa.field("model", pa.string(), nullable=False),
            pa.field("instruction_id", pa.string(), nullable=False),
            pa.field("component", pa.string(), nullable=False),
            pa.field("layer", pa.int16(), nullable=False),
            pa.field("pooling", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(EMBEDDING_DTYPES[dtype], int(dim)), nullable=False),
        ],
        metadata={KIND_KEY: b"features"},
    )


GENERATION_KEYS = ("stimulus_set", "stimulus_id", "run", "tr", "model", "instruction_id")


def generations_schema() -> pa.Schema:
    """Generated response text and token ids per (stimulus keys, model, instruction)."""
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("stimulus_set", pa.string(), nullable=False),
            pa.field("stimulus_id", pa.string(), nullable=False),
            pa.field("run", pa.string()),
            pa.field("tr", pa.int32()),
            pa.field("model", pa.string(), nullable=False),
            pa.field("instruction_id", pa.string(), nullable=False),
            pa.field("text", pa.string()),
            pa.field("token_ids", pa.list_(pa.int32())),
            pa.field("decoding", pa.string()),  # JSON: greedy, max_new_tokens, seed
        ],
        metadata={KIND_KEY: b"generations"},
    )


RESPONSE_KEYS = ("dataset", "subject", "run", "tr", "trial")


def responses_schema(n_voxels: int) -> pa.Schema:
    """BOLD time series (``tr``) or event-related betas (``trial`` + ``stimulus_id``).

    ``stimulus_set`` names the stimuli the run was recorded with, so that features join on
    (``stimulus_set``, ``run``, ``tr``).
    """
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("subject", pa.string(), nullable=False),
            pa.field("stimulus_set", pa.string()),
            pa.field("run", pa.string()),
            pa.field("tr", pa.int32()),
            pa.field("trial", pa.int32()),
            pa.field("stimulus_id", pa.string()),
            pa.field("onset_s", pa.float64()),
            pa.field("bold", pa.list_(pa.float32(), int(n_voxels)), nullable=False),
        ],
        metadata={KIND_KEY: b"responses"},
    )


VOXEL_KEYS = ("dataset", "subject", "voxel")


def voxels_schema() -> pa.Schema:
    """One row per voxel or vertex: its space, coordinates or vertex id, and ROI label."""
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("subject", pa.string(), nullable=False),
            pa.field("voxel", pa.int32(), nullable=False),
            pa.field("space", pa.string()),
            pa.field("i", pa.int32()),
            pa.field("j", pa.int32()),
            pa.field("k", pa.int32()),
            pa.field("x", pa.float32()),
            pa.field("y", pa.float32()),
            pa.field("z", pa.float32()),
            pa.field("vertex", pa.int32()),
            pa.field("hemi", pa.string()),
            pa.field("roi", pa.string()),
        ],
        metadata={KIND_KEY: b"voxels"},
    )


SCORE_KEYS = ("fit", "subject", "model", "instruction_id", "component", "layer", "pooling", "voxel", "split")


def scores_schema() -> pa.Schema:
    """One row per (fit, subject, model, instruction, layer, voxel, split)."""
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("fit", pa.string(), nullable=False),
            pa.field("dataset", pa.string()),
            pa.field("subject", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("instruction_id", pa.string(), nullable=False),
            pa.field("component", pa.string(), nullable=False),
            pa.field("layer", pa.int16(), nullable=False),
            pa.field("pooling", pa.string(), nullable=False),
            pa.field("voxel", pa.int32(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("r", pa.float32()),
            pa.field("r2", pa.float32()),
            pa.field("alpha", pa.float32()),
            pa.field("ceiling", pa.float32()),
            pa.field("r_norm", pa.float32()),
            # mean validation score over the CV folds of the training runs at the chosen alpha
            # (the fit's selection score, R² by default): choose layers by this, not by test r
            pa.field("cv_score", pa.float32()),
        ],
        metadata={KIND_KEY: b"scores"},
    )


PARTITION_KEYS = ("fit", "subject", "region", "voxel")


def partitions_schema() -> pa.Schema:
    """One row per (fit, subject, region, voxel) of a variance partition."""
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("fit", pa.string(), nullable=False),
            pa.field("subject", pa.string(), nullable=False),
            pa.field("spaces", pa.string(), nullable=False),
            pa.field("region", pa.string(), nullable=False),
            pa.field("voxel", pa.int32(), nullable=False),
            pa.field("r2", pa.float32()),
        ],
        metadata={KIND_KEY: b"partitions"},
    )


KEYS_BY_KIND = {
    "features": FEATURE_KEYS,
    "generations": GENERATION_KEYS,
    "responses": RESPONSE_KEYS,
    "voxels": VOXEL_KEYS,
    "scores": SCORE_KEYS,
    "partitions": PARTITION_KEYS,
}


def row_keys(table: pa.Table, kind: str) -> pa.Array:
    """The canonical ``key`` string of every row: key columns joined by ``|`` (null → ``∅``)."""
    cols = KEYS_BY_KIND[kind]
    parts = []
    for c in cols:
        if c not in table.column_names:
            raise ValueError(f"table: a {kind} table needs the key column {c!r}; got {table.column_names}")
        arr = table.column(c).cast(pa.string())
        parts.append(pa.compute.fill_null(arr, "∅"))
    return pa.compute.binary_join_element_wise(*parts, "|")
