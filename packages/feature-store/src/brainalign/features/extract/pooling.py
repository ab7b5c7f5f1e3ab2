"""Mask-aware pooling of hidden states over token spans.

Every span is a boolean mask ``(batch, seq)`` over the padded sequence, so padding never
enters a mean: a batch gives the same pooled vectors as its items one at a time (up to the
floating-point differences of batched matrix products).

Spans (the ``pooling`` key column):

- ``stimulus``: the stimulus tokens (text of the stimulus, image/video/audio placeholder
  tokens after the processor expanded them, game frames plus the action text);
- ``tr_words``: the tokens of the words whose onset falls in this TR (text manifests; the
  rest of the window is preceding context);
- ``instruction``: the instruction tokens;
- ``all``: every non-padding token of the prompt (chat-template tokens included);
- ``last``: the last non-padding token of the prompt;
- ``response``: the generated response tokens (greedy decoding), prompt excluded.

An empty span (a TR without word onsets, a response that ended at once) falls back to the
last token of the prompt before it, i.e. the model's state when the span would have started.

A sliding long-context window (:func:`~brainalign.features.stimuli.text_sliding_windows`) has a
``tr_words`` span per TR it scores; :func:`pool_rows` pools them all from its one forward pass.
"""

from __future__ import annotations

import torch

POOLINGS = ("stimulus", "tr_words", "instruction", "all", "last", "response")


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index ``(batch,)`` of the last True of each row of ``mask (batch, seq)`` (0 if none)."""
    seq = mask.shape[1]
    pos = torch.arange(seq, device=mask.device).expand_as(mask)
    return torch.where(mask, pos, torch.zeros_like(pos)).amax(dim=1)


def span_weights(mask: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Averaging weights ``(batch, seq)`` float32: ``mask / mask.sum()`` per row, or a one-hot
    at ``fallback (batch,)`` for rows whose mask is empty."""
    mask = mask.to(torch.float32)
    n = mask.sum(dim=1, keepdim=True)
    one_hot = torch.nn.functional.one_hot(fallback, mask.shape[1]).to(torch.float32)
    return torch.where(n > 0, mask / n.clamp_min(1.0), one_hot)


def pool_layers(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sums over positions: ``hidden (layers, batch, seq, dim)`` and ``weights
    (batch, seq)`` give ``(layers, batch, dim)`` float32."""
    return torch.einsum("lbtd,bt->lbd", hidden.to(torch.float32), weights)


def pool_rows(hidden: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Weighted sums for several rows per item: ``hidden (layers, batch, seq, dim)``, ``weights
    (n_rows, seq)`` and ``rows (n_rows,)`` (the batch item of each row) give ``(layers, n_rows,
    dim)`` float32. Row ``r`` is ``sum_t weights[r, t] * hidden[:, rows[r], t]``."""
    out = torch.empty(
        (hidden.shape[0], len(rows), hidden.shape[3]), dtype=torch.float32, device=hidden.device
    )
    for b in torch.unique(rows).tolist():
        sel = torch.nonzero(rows == b).squeeze(1)
        out[:, sel] = torch.einsum("ltd,rt->lrd", hidden[:, b].to(torch.float32), weights[sel])
    return out
