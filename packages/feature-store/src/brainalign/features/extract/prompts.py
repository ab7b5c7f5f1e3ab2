"""Prompt rendering with the checkpoint's own chat template, and token spans of its parts.

The prompt is rendered once per instruction with sentinel strings in place of the instruction
and the stimulus text; the sentinels are then replaced by the real texts, which gives the
character span of each part in the rendered prompt. Offsets from the (fast) tokenizer turn
character spans into token spans. A multimodal processor expands each media placeholder token
into many tokens; :func:`align_expanded` maps positions of the unexpanded tokenisation onto the
processor's ``input_ids`` and checks that every other token agrees.

Layouts (recorded in provenance):

- ``instruction_first`` (default): instruction, then the media, then the stimulus text. In a
  causal model the stimulus tokens then *read* the instruction, so stimulus-span embeddings are
  instruction-conditioned.
- ``stimulus_first``: media and stimulus text, then the instruction (the order most chat
  examples use); stimulus tokens are then identical across instructions in causal models and
  only ``instruction``/``last``/``response`` pooling differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

INS = "\u27e6INSTRUCTION\u27e7"
STIM = "\u27e6STIMULUS\u27e7"
LAYOUTS = ("instruction_first", "stimulus_first")
SEPARATOR = "\n"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Template:
    """A rendered prompt with sentinels: ``text`` contains :data:`INS` (unless the instruction
    is empty) and :data:`STIM` (unless there is no stimulus text) once each."""

    text: str
    chat: bool

    def fill(self, instruction: str, stimulus: str, focus: tuple[int, int] | None = None) -> Rendered:
        spans: dict[str, tuple[int, int]] = {}
        out = ""
        rest = self.text
        for _ in range(2):
            i, s = rest.find(INS), rest.find(STIM)
            hits = [(k, name) for k, name in ((i, "instruction"), (s, "stimulus")) if k >= 0]
            if not hits:
                break
            k, name = min(hits)
            value = instruction if name == "instruction" else stimulus
            sentinel = INS if name == "instruction" else STIM
            out += rest[:k]
            spans[name] = (len(out), len(out) + len(value))
            out += value
            rest = rest[k + len(sentinel) :]
        out += rest
        if "stimulus" in spans and focus is not None:
            a = spans["stimulus"][0]
            spans["tr_words"] = (a + focus[0], a + focus[1])
            for k, (s, e) in enumerate(getattr(focus, "parts", ())):
                name, before = part_spans(k)
                spans[name] = (a + s, a + e)
                if s == e:  # an empty part pools the last stimulus token before it
                    spans[before] = (a, a + s)
        return Rendered(out, spans)


class FocusParts(tuple):
    """A focus ``(start, end)`` that also carries ``parts``: the character spans (in the
    stimulus text) of the TRs one sliding long-context window scores.

    Code that knows one focus sees the union of the parts; :meth:`Template.fill` adds a span
    per part (and, for an empty part, the stimulus before it), named by :func:`part_spans`, so
    an adapter's forward returns their token masks — found on each item's own tokens, hence
    unaffected by padding — without knowing about windows.
    """

    parts: tuple[tuple[int, int], ...]

    def __new__(cls, parts: Sequence[tuple[int, int]]):
        parts = tuple((int(a), int(b)) for a, b in parts)
        if not parts:
            raise ValueError("parts: expected at least one (start, end) span")
        self = super().__new__(cls, (min(a for a, _ in parts), max(b for _, b in parts)))
        self.parts = parts
        return self


def part_spans(k: int) -> tuple[str, str]:
    """Span names of part ``k`` of a :class:`FocusParts`: its tokens, and the stimulus tokens
    before it (given for an empty part only, whose pooling falls back to the last of them)."""
    return f"tr_words.{k}", f"tr_words.{k}.before"


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt and the character spans of its ``instruction``, ``stimulus`` and
    ``tr_words`` parts (absent parts have no entry)."""

    text: str
    spans: dict[str, tuple[int, int]]


def render_template(
    apply_chat_template: Callable | None,
    *,
    has_instruction: bool,
    has_text: bool,
    media: Sequence[str] = (),
    layout: str = "instruction_first",
    system: str | None = None,
) -> Template:
    """Render the prompt skeleton for one instruction.

    ``apply_chat_template`` is the tokenizer's or processor's method (``None`` or a checkpoint
    without a template gives the plain format ``instruction + "\\n" + stimulus``); ``media``
    lists the content types (``"image"``, ``"video"``, ``"audio"``) placed in the user turn.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    ins = [INS] if has_instruction else []
    stim = [STIM] if has_text else []
    if apply_chat_template is None:  # media, if any, are inserted by the processor itself
        texts = ins + stim if layout == "instruction_first" else stim + ins
        return Template(SEPARATOR.join(texts), chat=False)
    content: list[dict] = []
    if layout == "instruction_first":
        if ins:
            content.append({"type": "text", "text": INS + (SEPARATOR if media or stim else "")})
        content += [{"type": m} for m in media]
        if stim:
            content.append({"type": "text", "text": STIM})
    else:
        content += [{"type": m} for m in media]
        tail = SEPARATOR.join(stim + ins)
        if tail:
            content.append({"type": "text", "text": tail})
    messages = []
    if not media:  # text-only chat templates expect string contents
        content = "".join(c["text"] for c in content)
    if system is not None:
        messages.append(
            {"role": "system", "content": system if not media else [{"type": "text", "text": system}]}
        )
    messages.append({"role": "user", "content": content})
    text = apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(text, list):
        text = text[0]
    for sentinel, needed in ((INS, has_instruction), (STIM, has_text)):
        if needed and text.count(sentinel) != 1:
            raise ValueError(
                f"chat template: expected the {sentinel} part once in the rendered prompt, got {text!r}"
            )
    return Template(text, chat=True)


def char_span_to_tokens(offsets: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """Boolean ``(n_tokens,)``: tokens whose character range ``offsets (n_tokens, 2)`` overlaps
    ``span``. Special tokens with empty offsets never match."""
    a, b = span
    starts, ends = offsets[:, 0], offsets[:, 1]
    return (ends > starts) & (starts < b) & (ends > a)


def align_expanded(
    short: Sequence[int], expanded: Sequence[int], media_ids: set[int], inserted_ids: set[int] = frozenset()
) -> np.ndarray:
    """Positions in ``expanded`` of each token of ``short`` (``(len(short),)`` int).

    ``expanded`` is ``short`` with each media placeholder token repeated (or media tokens
    inserted, as InstructBLIP's processor does, and markup tokens ``inserted_ids`` around them,
    as InternVL's ``<img>``/``</img>``); every other token must match in order. The last media
    placeholder may also have been replaced by text around media tokens (InternVL's video:
    ``Frame1: <img>...</img>``...); it then maps to the replacement's first token.
    """
    out = np.full(len(short), -1, dtype=np.int64)
    i = j = 0
    n, m = len(short), len(expanded)
    while i < n and j < m:
        if short[i] == expanded[j]:
            out[i] = j
            if short[i] in media_ids:
                while (
                    j + 1 < m and expanded[j + 1] == short[i] and not (i + 1 < n and short[i + 1] == short[i])
                ):
                    j += 1
            i += 1
            j += 1
        elif expanded[j] in media_ids or expanded[j] in inserted_ids:
            j += 1
        elif short[i] in media_ids and not any(t in media_ids for t in short[i + 1 :]):
            # the processor replaced the last placeholder by text around media tokens (InternVL's
            # video: "Frame1: <img>...</img>\nFrame2: ..."); the replacement ends at the last
            # media or markup token, since the rest of the prompt holds none
            marks = [k for k in range(j, m) if expanded[k] in media_ids or expanded[k] in inserted_ids]
            if not marks:
                raise ValueError(
                    f"prompt: the processor removed the media placeholder {short[i]} and inserted no "
                    "media tokens for it; cannot locate the stimulus tokens"
                )
            out[i] = j
            i += 1
            j = marks[-1] + 1
        else:
            raise ValueError(
                f"prompt: the processor's tokens disagree with the tokenizer's at {i}/{j} "
                f"({short[i]} vs {expanded[j]}); cannot locate the instruction tokens"
            )
    if i < n:
        raise ValueError("prompt: the processor's input_ids are shorter than the rendered prompt's tokens")
    return out
