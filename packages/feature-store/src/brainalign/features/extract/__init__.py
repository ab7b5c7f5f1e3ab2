"""Extraction of instruction-conditioned layer embeddings (needs the ``compute`` extra).

>>> from brainalign.features.extract import embed
>>> embed(manifest, "Qwen/Qwen2.5-VL-7B-Instruct", ["video.captioning", "none"],
...       store="movie10-qwen25vl.lance", layers="all", pooling=("stimulus", "response"))
"""

from .adapters import (
    Adapter,
    CausalLMAdapter,
    EncoderAdapter,
    Idefics2Adapter,
    IdeficsAdapter,
    MultimodalAdapter,
    Seq2SeqAdapter,
    States,
    TransformersAdapter,
    load_adapter,
)
from .pooling import POOLINGS
from .prompts import LAYOUTS, Rendered
from .runner import EmbedPlan, EmbedResult, commit_shards, embed, existing_units, select_layers

__all__ = [
    "LAYOUTS",
    "POOLINGS",
    "Adapter",
    "CausalLMAdapter",
    "EmbedPlan",
    "EmbedResult",
    "EncoderAdapter",
    "Idefics2Adapter",
    "IdeficsAdapter",
    "MultimodalAdapter",
    "Rendered",
    "Seq2SeqAdapter",
    "States",
    "TransformersAdapter",
    "commit_shards",
    "embed",
    "existing_units",
    "load_adapter",
    "select_layers",
]
