"""Model adapters: one small interface between the runner and any model.

An adapter turns a batch of :class:`~brainalign.features.stimuli.Stimulus` items read under
one instruction into hidden states plus token-span masks, per component. The runner does
everything else (layer selection, pooling, batching, resume, sharding, provenance, storage).

Plugging in a model outside transformers (e.g. Kimi-Audio): subclass :class:`Adapter` and
implement

- ``components() -> {component: (n_states, dim)}`` (layer 0 = embedding output);
- ``render(instruction, item) -> Rendered`` (the prompt text, for provenance and ``dry_run``);
- ``forward(items, instruction, components, responses=None) -> {component: States}`` where
  :class:`States` holds ``hidden`` — a sequence of ``n_states`` arrays ``(batch, seq, dim)``
  (torch or numpy) — and boolean span masks ``(batch, seq)`` named like the pooling spans;
- optionally ``generate(items, instruction, max_new_tokens) -> list[list[int]]`` and
  ``decode(ids) -> str`` for response embeddings;
- ``provenance() -> dict`` (model id, revision, library versions, dtype, ...).

:func:`load_adapter` picks the transformers family of a checkpoint from its config:
causal LMs (GPT-2, Llama, Qwen2, ...), encoders (BERT / MiniLM), encoder-decoders (T5 /
Flan-T5), and multimodal chat models through their processor (LLaVA-1.5, Qwen2-VL,
Qwen2.5-VL, LLaVA-OneVision, LLaVA-NeXT-Video, Video-LLaVA, InternVL ``-hf``, InstructBLIP(-Video),
IDEFICS, Qwen2-Audio, Qwen2.5-Omni thinker). IDEFICS v1, which has no chat template and takes
interleaved text and images, has its own :class:`IdeficsAdapter`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..instructions import Instruction
from ..stimuli import Stimulus, clip_fps, load_audio_window, load_image, load_video_clip
from .prompts import (
    INS,
    SEPARATOR,
    STIM,
    Rendered,
    Template,
    align_expanded,
    char_span_to_tokens,
    render_template,
    sha256,
)


@dataclass
class States:
    """Hidden states of one component for a batch.

    ``hidden``: ``n_states`` tensors ``(batch, seq, dim)``; ``spans``: boolean masks
    ``(batch, seq)`` per pooling span; ``fallback``: ``(batch,)`` position used when a span is
    empty (the last prompt token before it); ``lengths``: non-padding length per item.
    """

    hidden: Sequence[Any]
    spans: dict[str, torch.Tensor]
    fallback: torch.Tensor | None = None


class Adapter:
    """Base class of model adapters; see the module docstring for the contract."""

    model_id: str = "custom"
    default_components: tuple[str, ...] = ("lm",)

    def components(self) -> dict[str, tuple[int, int | None]]:
        """Main components: ``{name: (n_states, dim)}``; ``dim`` may be None if unknown."""
        raise NotImplementedError

    def all_components(self) -> dict[str, tuple[int, int | None]]:
        """Main plus optional components (vision tower, projector, Q-Former, ...)."""
        return self.components()

    def spans_for(self, component: str, response: bool = False) -> tuple[str, ...]:
        """The pooling spans a component supports (others are not written for it); ``response``
        says whether responses are generated in this run."""
        if component in ("lm", "encoder"):
            return ("stimulus", "tr_words", "instruction", "all", "last", "response")
        return ("all",)

    def render(self, instruction: Instruction, item: Stimulus) -> Rendered:
        raise NotImplementedError

    def prompt_skeleton(self, instruction: Instruction, item: Stimulus) -> str:
        """The rendered prompt with ``{stimulus}`` where the stimulus text goes (for provenance)."""
        text = "{stimulus}" if item.text is not None else None
        return self.render(
            instruction,
            Stimulus(
                stimulus_id="_", text=text, focus=None, images=item.images, video=item.video, audio=item.audio
            ),
        ).text

    def forward(
        self,
        items: Sequence[Stimulus],
        instruction: Instruction,
        components: Sequence[str],
        responses: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, States]:
        raise NotImplementedError

    def generate(
        self, items: Sequence[Stimulus], instruction: Instruction, max_new_tokens: int
    ) -> list[list[int]]:
        raise NotImplementedError(f"{type(self).__name__} does not generate responses")

    def can_generate(self) -> bool:
        """Whether :meth:`generate` is implemented (``response`` pooling needs it)."""
        return type(self).generate is not Adapter.generate

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        return {"model": self.model_id, "adapter": type(self).__name__}

    def identity(self) -> dict[str, Any]:
        """What tells two runs of the same model apart (``revision``, ``dtype``), without loading
        weights: a resumed run must match the stored rows' identity."""
        prov = self.provenance()
        return {k: prov.get(k) for k in ("revision", "dtype")}


# ---- helpers ---------------------------------------------------------------------------------
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _local_revision(path: Path) -> str:
    """A content hash of a local checkpoint directory (config + weight file names and sizes)."""
    h = hashlib.sha256()
    for p in sorted(path.iterdir()):
        if p.is_file() and (p.suffix in (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja")):
            h.update(p.name.encode())
            h.update(str(p.stat().st_size).encode())
            if p.suffix in (".json", ".jinja") or p.stat().st_size < 1 << 20:
                h.update(p.read_bytes())
    return "local-sha256:" + h.hexdigest()


def _pad_right(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _pad_rows(rows: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """Rows ``(len_i, ...)`` zero-padded on the right into one ``(batch, n, ...)`` tensor."""
    out = torch.zeros((len(rows), n, *rows[0].shape[1:]), dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _masks_from_offsets(offsets: np.ndarray, spans: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    return {name: char_span_to_tokens(offsets, span) for name, span in spans.items()}


def _fallback(n_prompt: int, masks: dict[str, np.ndarray], name: str) -> int:
    """Last prompt token before span ``name`` would start (the stimulus span's end for an empty
    ``tr_words``), else the last prompt token."""
    if name == "tr_words" and "stimulus" in masks and masks["stimulus"].any():
        return int(np.flatnonzero(masks["stimulus"])[-1])
    return n_prompt - 1


_COMMIT = re.compile(r"[0-9a-f]{40}")


def pinned_revision(model_id: str | Path, config: Any) -> str | None:
    """The commit of a Hub checkpoint whose ``config`` was loaded (transformers records it as
    ``config._commit_hash``); the tokenizer/processor and weights are then loaded at that commit,
    so a push between those loads cannot mix two commits. None for a local directory (its
    content hash, :func:`_local_revision`, is recorded instead) or when no commit is known."""
    if Path(str(model_id)).is_dir():
        return None
    sha = getattr(config, "_commit_hash", None)
    return sha if isinstance(sha, str) and _COMMIT.fullmatch(sha) else None


class TransformersAdapter(Adapter):
    """Shared loading, provenance and tokenisation of transformers checkpoints.

    ``revision`` (a branch, tag or commit; default ``main``) is resolved once, when the config
    is loaded (or ``config`` is passed), and everything else is loaded at the resolved commit.
    """

    def __init__(
        self,
        model_id: str | Path,
        *,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        device_map: Any = None,
        use_chat_template: bool | None = None,
        layout: str = "instruction_first",
        system_prompt: str | None = None,
        allow_pickle: bool = False,
        config: Any = None,
    ):
        import transformers

        if dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(TORCH_DTYPES)}, got {dtype!r}")
        self.model_id = str(model_id)
        self.revision = revision
        self.device = torch.device(device)
        self.dtype = dtype
        self.trust_remote_code = bool(trust_remote_code)
        self.layout = layout
        self.system_prompt = system_prompt
        self.use_chat_template = use_chat_template
        self._load_kwargs = dict(revision=revision or "main", trust_remote_code=self.trust_remote_code)
        if config is None:
            config = transformers.AutoConfig.from_pretrained(self.model_id, **self._load_kwargs)
        self.config = config
        self.resolved_revision = pinned_revision(self.model_id, config)
        if self.resolved_revision is not None:
            self._load_kwargs["revision"] = self.resolved_revision
        self._model_kwargs = dict(
            **self._load_kwargs,
            dtype=TORCH_DTYPES[dtype],
            attn_implementation=attn_implementation,
            use_safetensors=None if allow_pickle else True,
        )
        if device_map is not None:
            self._model_kwargs["device_map"] = device_map
        self._device_map = device_map
        self._model = None
        self._load()
        self._templates: dict[tuple, Template] = {}

    @property
    def model(self):
        """The model, loaded on first use (a ``dry_run`` needs only the tokenizer/processor)."""
        if self._model is None:
            model = self._load_model()
            model.eval()
            if self._device_map is None:
                model.to(self.device)
            self._model = model
        return self._model

    # subclasses: _load sets self.tokenizer (and self.processor); _load_model returns the model
    def _load(self) -> None:
        raise NotImplementedError

    def _load_model(self):
        raise NotImplementedError

    @property
    def _chat(self):
        proc = getattr(self, "processor", None)
        # the processor renders when it has a template; else the tokenizer's own template
        owner = proc if getattr(proc, "chat_template", None) else self.tokenizer
        has = getattr(owner, "chat_template", None)
        use = self.use_chat_template if self.use_chat_template is not None else bool(has)
        if use and not has:
            raise ValueError(f"use_chat_template: {self.model_id} has no chat template")
        return owner.apply_chat_template if use else None

    def _media(self, item: Stimulus) -> tuple[str, ...]:
        return ()

    def template(self, instruction: Instruction, item: Stimulus) -> Template:
        media = self._media(item)
        key = (instruction.id, bool(instruction.text), item.text is not None, media)
        if key not in self._templates:
            self._templates[key] = render_template(
                self._chat,
                has_instruction=bool(instruction.text),
                has_text=item.text is not None,
                media=media,
                layout=self.layout,
                system=self.system_prompt,
            )
        return self._templates[key]

    def render(self, instruction: Instruction, item: Stimulus) -> Rendered:
        return self.template(instruction, item).fill(instruction.text, item.text or "", item.focus)

    def _add_special(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def _tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        enc = self.tokenizer(text, add_special_tokens=self._add_special(text), return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        if not ids:  # nothing to read (no instruction, a silent first TR, no BOS): the start token
            tok = self.tokenizer
            start = next(t for t in (tok.bos_token_id, tok.eos_token_id, self._pad_id) if t is not None)
            return [int(start)], np.zeros((1, 2), dtype=np.int64)
        return ids, np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))

    @property
    def _stop_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        ids |= set(eos) if isinstance(eos, (list, tuple)) else {eos}
        return {int(i) for i in ids if i is not None}

    def _trim(self, ids: Sequence[int]) -> list[int]:
        out = []
        for t in ids:
            if int(t) in self._stop_ids:
                break
            out.append(int(t))
        return out

    def _model_revision(self) -> str:
        path = Path(self.model_id)
        if path.is_dir():
            return _local_revision(path)
        return getattr(self.config, "_commit_hash", None) or self.revision or "unknown"

    def identity(self) -> dict[str, Any]:
        return {"revision": self._model_revision(), "dtype": self.dtype}  # config only: no weights

    @functools.cached_property
    def _logits_kw(self) -> dict[str, int]:
        """Hidden states need no vocabulary logits: ask for the last position's only, where the
        model's forward takes ``logits_to_keep`` (for a 7B model with a 152k vocabulary the full
        logits of a batch of 8 clips are gigabytes)."""
        return (
            {"logits_to_keep": 1}
            if "logits_to_keep" in inspect.signature(self.model.forward).parameters
            else {}
        )

    def provenance(self) -> dict[str, Any]:
        import transformers

        return {
            "model": self.model_id,
            "adapter": type(self).__name__,
            "model_type": self.config.model_type,
            "revision_requested": self.revision,
            "revision": self._model_revision(),
            "dtype": self.dtype,
            **self._device_provenance(),
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "trust_remote_code": self.trust_remote_code,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "layout": self.layout,
            "chat_template": bool(self._chat),
            "system_prompt": self.system_prompt,
            "chat_template_sha256": sha256(
                str(getattr(getattr(self, "processor", None) or self.tokenizer, "chat_template", None) or "")
            ),
        }

    def _device_provenance(self) -> dict[str, Any]:
        """``device``; for a model placed with ``device_map``, every device it spans and its
        ``hf_device_map`` (module name -> device)."""
        placed = getattr(self.model, "hf_device_map", None)
        if not isinstance(placed, dict) or not placed:
            return {"device": str(self.device)}
        dmap = {
            str(k): (v if isinstance(v, int) and not isinstance(v, bool) else str(v))
            for k, v in placed.items()
        }
        devices = sorted({f"cuda:{v}" if isinstance(v, int) else v for v in dmap.values()})
        return {"device": ",".join(devices), "device_map": dmap}

    def _text_inputs(self, items, instruction, responses=None):
        """Right-padded ids of prompt (+ response) per item and numpy span masks."""
        seqs, masks, fallbacks = [], [], []
        for b, item in enumerate(items):
            r = self.render(instruction, item)
            ids, offsets = self._tokenize(r.text)
            m = _masks_from_offsets(offsets, r.spans)
            n_prompt = len(ids)
            resp = list(responses[b]) if responses is not None else []
            full = ids + resp
            pad = np.zeros(len(resp), dtype=bool)
            m = {k: np.concatenate([v, pad]) for k, v in m.items()}
            m["all"] = np.concatenate([np.ones(n_prompt, bool), pad])
            m["last"] = np.zeros(len(full), bool)
            m["last"][n_prompt - 1] = True
            if responses is not None:
                m["response"] = np.concatenate([np.zeros(n_prompt, bool), np.ones(len(resp), bool)])
            seqs.append(full)
            masks.append(m)
            fallbacks.append({k: _fallback(n_prompt, m, k) for k in m})
        return seqs, masks, fallbacks


def _stack_masks(masks: list[dict[str, np.ndarray]], fallbacks: list[dict[str, int]], seq: int):
    names = set().union(*[m.keys() for m in masks])
    spans, fb = {}, {}
    for name in names:
        arr = np.zeros((len(masks), seq), dtype=bool)
        for i, m in enumerate(masks):
            if name in m:
                arr[i, : len(m[name])] = m[name]
        spans[name] = torch.from_numpy(arr)
        fb[name] = torch.as_tensor([f.get(name, 0) for f in fallbacks], dtype=torch.long)
    return spans, fb


# ---- text: causal LMs and encoders -----------------------------------------------------------
class CausalLMAdapter(TransformersAdapter):
    """Decoder-only LMs (GPT-2, Llama, Qwen2, Mistral, ...): component ``lm``."""

    def _load(self):
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_id, **self._load_kwargs)

    def _load_model(self):
        import transformers

        return transformers.AutoModelForCausalLM.from_pretrained(self.model_id, **self._model_kwargs)

    def components(self):
        c = self.config.get_text_config()
        return {"lm": (c.num_hidden_layers + 1, c.hidden_size)}

    def _forward_ids(self, ids, mask):
        kw = self._logits_kw
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            output_hidden_states=True,
            return_dict=True,
            use_cache=False,
            **kw,
        )
        return out.hidden_states

    def forward(self, items, instruction, components, responses=None):
        seqs, masks, fbs = self._text_inputs(items, instruction, responses)
        ids, mask = _pad_right(seqs, self._pad_id)
        spans, fb = _stack_masks(masks, fbs, ids.shape[1])
        with torch.inference_mode():
            hidden = self._forward_ids(ids, mask)
        return {"lm": States(hidden, spans, fb)}

    def generate(self, items, instruction, max_new_tokens):
        seqs = [self._tokenize(self.render(instruction, it).text)[0] for it in items]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self._pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):  # left padding for batched decoding
            ids[i, n - len(s) :] = torch.as_tensor(s)
            mask[i, n - len(s) :] = 1
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=self._pad_id,
            )
        return [self._trim(row[n:].tolist()) for row in out]


class EncoderAdapter(CausalLMAdapter):
    """Bidirectional encoders (BERT, MiniLM, RoBERTa): component ``lm``; no generation."""

    def _load(self):
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_id, **self._load_kwargs)

    def _load_model(self):
        import transformers

        return transformers.AutoModel.from_pretrained(self.model_id, **self._model_kwargs)

    def _forward_ids(self, ids, mask):
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            output_hidden_states=True,
            return_dict=True,
        )
        return out.hidden_states

    def can_generate(self) -> bool:
        return False

    def spans_for(self, component, response=False):
        spans = super().spans_for(component, response)
        return tuple(p for p in spans if p != "response")

    def generate(self, items, instruction, max_new_tokens):
        raise NotImplementedError(f"{self.model_id} is an encoder; it cannot generate responses")


class Seq2SeqAdapter(TransformersAdapter):
    """Encoder-decoder LMs (T5, Flan-T5): components ``encoder`` and ``decoder``.

    Decoder feeding: the encoder reads the whole prompt. The decoder is fed the decoder start
    token followed by, in order of precedence, the generated response (when response pooling
    is requested, so the response is embedded in the same pass), or — with
    ``decoder_input="stimulus"`` (default) — the stimulus text re-tokenised (teacher forcing, so
    decoder states exist for the stimulus and ``tr_words`` spans), or with
    ``decoder_input="start"`` the start token alone. Decoder span masks refer to decoder
    positions; ``instruction`` is empty on the decoder side and falls back to its last token.
    """

    default_components = ("encoder", "decoder")

    def __init__(self, *args, decoder_input: str = "stimulus", **kw):
        if decoder_input not in ("stimulus", "start"):
            raise ValueError(f"decoder_input: expected 'stimulus' or 'start', got {decoder_input!r}")
        self.decoder_input = decoder_input
        super().__init__(*args, **kw)

    def _load(self):
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_id, **self._load_kwargs)

    def _load_model(self):
        import transformers

        return transformers.AutoModelForSeq2SeqLM.from_pretrained(self.model_id, **self._model_kwargs)

    def components(self):
        c = self.config
        return {"encoder": (c.num_layers + 1, c.d_model), "decoder": (c.num_decoder_layers + 1, c.d_model)}

    def provenance(self):
        return {**super().provenance(), "decoder_input": self.decoder_input}

    def identity(self):
        return {**super().identity(), "decoder_input": self.decoder_input}

    def spans_for(self, component, response=False):
        if component == "encoder":
            return ("stimulus", "tr_words", "instruction", "all", "last")
        if component == "decoder":
            if response:
                return ("all", "last", "response")
            return (
                ("stimulus", "tr_words", "all", "last")
                if self.decoder_input == "stimulus"
                else ("all", "last")
            )
        return ("all",)

    def forward(self, items, instruction, components, responses=None):
        seqs, masks, fbs = self._text_inputs(items, instruction, None)
        ids, mask = _pad_right(seqs, self._pad_id)
        spans, fb = _stack_masks(masks, fbs, ids.shape[1])
        start = int(self.model.config.decoder_start_token_id)
        dseqs, dmasks, dfbs = [], [], []
        for b, item in enumerate(items):
            m: dict[str, np.ndarray] = {}
            if responses is not None:
                body = list(responses[b])
                m["response"] = np.array([False] + [True] * len(body))
            elif self.decoder_input == "stimulus" and item.text:
                enc = self.tokenizer(item.text, add_special_tokens=False, return_offsets_mapping=True)
                body = list(enc["input_ids"])
                off = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
                m["stimulus"] = np.concatenate([[False], char_span_to_tokens(off, (0, len(item.text)))])
                if item.focus is not None:
                    m["tr_words"] = np.concatenate([[False], char_span_to_tokens(off, item.focus)])
            else:
                body = []
            seq = [start, *body]
            m["all"] = np.ones(len(seq), bool)
            m["last"] = np.zeros(len(seq), bool)
            m["last"][-1] = True
            dseqs.append(seq)
            dmasks.append(m)
            dfbs.append(
                {
                    k: (
                        int(np.flatnonzero(m["stimulus"])[-1])
                        if k == "tr_words" and m.get("stimulus", np.zeros(1)).any()
                        else (0 if k == "response" else len(seq) - 1)
                    )
                    for k in [*m, "instruction", "stimulus", "tr_words"]
                }
            )
        dids, dmask = _pad_right(dseqs, self._pad_id)
        dspans, dfb = _stack_masks(dmasks, dfbs, dids.shape[1])
        for name in ("instruction", "stimulus", "tr_words"):
            dspans.setdefault(name, torch.zeros_like(dmask, dtype=torch.bool))
            dfb.setdefault(name, dmask.sum(1) - 1)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                decoder_input_ids=dids.to(self.device),
                decoder_attention_mask=dmask.to(self.device),
                output_hidden_states=True,
                return_dict=True,
            )
        return {
            "encoder": States(out.encoder_hidden_states, spans, fb),
            "decoder": States(out.decoder_hidden_states, dspans, dfb),
        }

    def generate(self, items, instruction, max_new_tokens):
        seqs, _, _ = self._text_inputs(items, instruction, None)
        ids, mask = _pad_right(seqs, self._pad_id)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
            )
        return [self._trim(row[1:].tolist()) for row in out]


# ---- multimodal chat models through their processor -----------------------------------------
MULTIMODAL_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
    "video_llava": "VideoLlavaForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "instructblip": "InstructBlipForConditionalGeneration",
    "instructblipvideo": "InstructBlipVideoForConditionalGeneration",
    "idefics": "IdeficsForVisionText2Text",
    "idefics2": "Idefics2ForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "qwen2_audio": "Qwen2AudioForConditionalGeneration",
    "qwen2_5_omni": "Qwen2_5OmniThinkerForConditionalGeneration",
    "qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
}

_VISION_PATHS = (
    "model.visual",
    "visual",
    "model.vision_tower",
    "vision_tower",
    "model.vision_model",
    "vision_model",
    "model.image_tower",
    "image_tower",
)
_VIDEO_TOWER_PATHS = ("model.video_tower", "video_tower")  # Video-LLaVA has a separate video tower
_PROJECTOR_PATHS = (
    "model.visual.merger",
    "visual.merger",
    "model.multi_modal_projector",
    "multi_modal_projector",
    "model.language_projection",
    "language_projection",
)
_QFORMER_PATHS = ("model.qformer", "qformer")
_AUDIO_PATHS = ("model.audio_tower", "audio_tower", "model.audio_model", "audio_model")


def _get(module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _block_list(module) -> tuple[Any, Any] | None:
    """(embedding module, layer ModuleList) of a vision tower / Q-Former."""
    layers = None
    for name, sub in module.named_modules():
        if (
            isinstance(sub, torch.nn.ModuleList)
            and name.split(".")[-1] in ("layers", "blocks", "layer")
            and len(sub)
        ):
            layers = sub
            break
    emb = None
    for name in ("embeddings", "patch_embed", "vision_model.embeddings"):
        emb = _get(module, name)
        if emb is not None:
            break
    return (emb, layers) if layers is not None else None


class MultimodalAdapter(TransformersAdapter):
    """Chat MLLMs loaded with their processor: component ``lm`` (the language model's hidden
    states over the full multimodal sequence) and optional ``vision`` (vision tower blocks,
    layer 0 = patch embeddings), ``projector`` (one state), ``qformer`` and ``audio`` (the audio
    encoder's blocks, layer 0 = the input of its first block; Qwen2-Audio, Qwen2.5-Omni) — each
    mean-pooled over all patches/queries/audio frames of an item (pooling ``all``; padding frames
    excluded), captured by forward hooks during the same forward pass."""

    def _load(self):
        import transformers

        self.processor = transformers.AutoProcessor.from_pretrained(self.model_id, **self._load_kwargs)
        self.tokenizer = getattr(self.processor, "tokenizer", None) or self.processor
        self.media_ids = self._find_media_ids()
        # markup tokens a processor inserts around media (InternVL's <img> ... </img>)
        self.inserted_ids = {
            int(i)
            for i in (
                getattr(self.tokenizer, "start_image_token_id", None),
                getattr(self.tokenizer, "end_image_token_id", None),
            )
            if isinstance(i, int)
        }
        # and IDEFICS2/3's <fake_token_around_image> around each image's tokens
        fake = getattr(self.processor, "fake_image_token", None)
        if isinstance(fake, str) and (fid := self._token_id(fake)) is not None:
            self.inserted_ids.add(fid)

    def _load_model(self):
        import transformers

        cls_name = MULTIMODAL_CLASSES.get(self.config.model_type)
        cls = getattr(transformers, cls_name) if cls_name else transformers.AutoModelForImageTextToText
        return cls.from_pretrained(self.model_id, **self._model_kwargs)

    def _token_id(self, token: str) -> int | None:
        """The id of a single token of the vocabulary, or None if it is not one."""
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            return None
        return int(tid)

    def _find_media_ids(self) -> set[int]:
        ids = set()
        for attr in ("image_token", "video_token", "audio_token"):
            tok = getattr(self.processor, attr, None)
            if isinstance(tok, str) and (tid := self._token_id(tok)) is not None:
                ids.add(tid)
        for attr in (
            "image_token_id",
            "image_token_index",
            "video_token_id",
            "video_token_index",
            "audio_token_id",
            "audio_token_index",
        ):
            v = getattr(self.config, attr, None)
            if isinstance(v, int):
                ids.add(v)
        return ids

    def _media(self, item):
        if item.video is not None:
            return ("video",)
        if item.audio is not None:
            return ("audio",)
        if item.images:
            return ("image",) * len(item.images)
        return ()

    def components(self):
        c = self.config.get_text_config()
        return {"lm": (c.num_hidden_layers + 1, c.hidden_size)}

    def all_components(self) -> dict[str, tuple[int, int | None]]:
        """``components()`` plus the optional vision tower / projector / Q-Former / audio encoder
        (loads the model)."""
        out = dict(self.components())
        for comp, (emb, layers) in self._vision_modules().items():
            out[comp] = (len(layers) + (emb is not None) if layers is not None else 1, None)
        for comp, (_, layers) in self._audio_modules().items():
            out[comp] = (len(layers) + 1, None)
        return out

    def _audio_modules(self) -> dict[str, tuple[Any, Any]]:
        """``{"audio": (tower, blocks)}`` for models with an audio encoder (Qwen2-Audio, the
        Qwen2.5-Omni thinker). Its layer 0 is the input of the first block (the convolutional
        front end plus positions), captured by a pre-hook, since these towers have no embedding
        module of their own."""
        for p in _AUDIO_PATHS:
            m = _get(self.model, p)
            if m is not None and (bl := _block_list(m)) is not None:
                return {"audio": (m, bl[1])}
        return {}

    def _vision_modules(self, kind: str = "image") -> dict[str, tuple[Any, Any]]:
        found: dict[str, tuple[Any, Any]] = {}
        for p in (_VIDEO_TOWER_PATHS if kind == "video" else ()) + _VISION_PATHS:
            m = _get(self.model, p)
            if m is not None and (bl := _block_list(m)) is not None:
                found["vision"] = bl
                break
        for p in _PROJECTOR_PATHS:
            m = _get(self.model, p)
            if m is not None:
                found["projector"] = (m, None)
                break
        for p in _QFORMER_PATHS:
            m = _get(self.model, p)
            if m is not None and (bl := _block_list(m)) is not None:
                found["qformer"] = bl
                break
        return found

    def _video_rate_kwargs(self, items, n_frames: Sequence[int]) -> dict[str, Any]:
        """The clips' frame rates, for processors that place video frames in time (Qwen2.5-VL's
        ``second_per_grid_ts``, the Qwen2.5-Omni thinker's ``video_second_per_grid``, both
        ``temporal_patch_size / fps``): without them the processor assumes a default rate (24 fps
        for Qwen2.5-VL) and the frames of a short clip share one temporal position. The frames
        are sampled already, so the processor samples none. Other processors take no rate."""
        names = set(getattr(self.processor, "model_input_names", None) or ())
        if not names & {"second_per_grid_ts", "video_second_per_grid"}:
            return {}
        fps = [clip_fps(it, n) for it, n in zip(items, n_frames, strict=True)]
        if "second_per_grid_ts" in names:
            meta = [
                {"total_num_frames": n, "fps": f, "duration": n / f, "frames_indices": list(range(n))}
                for n, f in zip(n_frames, fps, strict=True)
            ]
            return {"video_metadata": meta, "do_sample_frames": False}
        if max(fps) - min(fps) > 1e-9 * max(fps):
            raise ValueError(
                f"items: {self.model_id} takes one frame rate per batch; got clips of {sorted(set(fps))} fps"
            )
        return {"fps": fps[0], "do_sample_frames": False}

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        names = set(getattr(self.processor, "model_input_names", None) or ())
        if names & {"second_per_grid_ts", "video_second_per_grid"}:
            prov["video_fps"] = "frames per clip / (window_end_s - window_start_s) of each clip"
        return prov

    def _processor_inputs(self, items, texts, padding_side: str):
        # padding_side is passed too: some processors (InternVL) default to left padding whatever
        # the tokenizer says
        kw: dict[str, Any] = {
            "text": list(texts),
            "return_tensors": "pt",
            "padding": True,
            "padding_side": padding_side,
        }
        modality = {self._media(it)[:1] for it in items}
        if len(modality) != 1:
            raise ValueError("items: a batch must hold one kind of media")
        (kind,) = modality
        if kind == ("image",):
            kw["images"] = [load_image(im) for it in items for im in it.images]
        elif kind == ("video",):
            # InstructBLIP-Video's processor takes clips as ``images``
            key = "images" if self.config.model_type == "instructblipvideo" else "videos"
            clips = [load_video_clip(it) for it in items]
            kw[key] = clips
            kw.update(self._video_rate_kwargs(items, [len(c) for c in clips]))
        elif kind == ("audio",):
            kw["audio"] = [load_audio_window(it) for it in items]
            kw["sampling_rate"] = items[0].sample_rate
        tok = self.tokenizer
        old = tok.padding_side
        tok.padding_side = padding_side
        try:
            out = self.processor(**kw)
        finally:
            tok.padding_side = old
        for k, v in out.items():  # an empty prompt (instruction "none", no text) gives empty float ids
            if torch.is_tensor(v) and (k.endswith("input_ids") or k.endswith("attention_mask")):
                out[k] = v.long()
        return out

    def _item_masks(self, text: str, spans, row_ids: list[int]):
        short, offsets = self._tokenize(text)
        pos = align_expanded(short, row_ids, self.media_ids, self.inserted_ids)
        n = len(row_ids)
        m = {}
        for name, mask in _masks_from_offsets(offsets, spans).items():
            arr = np.zeros(n, bool)
            arr[pos[mask]] = True
            m[name] = arr
        media = np.isin(np.asarray(row_ids), list(self.media_ids)) if self.media_ids else np.zeros(n, bool)
        m["stimulus"] = m.get("stimulus", np.zeros(n, bool)) | media
        return m

    def forward(self, items, instruction, components, responses=None):
        rendered = [self.render(instruction, it) for it in items]
        inputs = self._processor_inputs(items, [r.text for r in rendered], "right")
        ids, attn = inputs["input_ids"], inputs["attention_mask"]
        seqs, masks, fbs = [], [], []
        # per-token inputs besides the ids: (batch, seq) ones (token types) and (batch, seq, ...)
        # ones (IDEFICS' image_attention_mask, which image each token cross-attends to)
        per_token = [
            k
            for k, v in inputs.items()
            if torch.is_tensor(v)
            and v.dim() >= 2
            and tuple(v.shape[:2]) == tuple(ids.shape)
            and k not in ("input_ids", "attention_mask")
        ]
        extra_rows: dict[str, list] = {k: [] for k in per_token}
        for b, r in enumerate(rendered):
            keep = attn[b].bool()  # the prompt's positions, wherever the processor padded
            row = ids[b, keep].tolist()
            n = len(row)
            m = self._item_masks(r.text, r.spans, row)
            resp = list(responses[b]) if responses is not None else []
            pad = np.zeros(len(resp), bool)
            m = {k: np.concatenate([v, pad]) for k, v in m.items()}
            m["all"] = np.concatenate([np.ones(n, bool), pad])
            m["last"] = np.zeros(n + len(resp), bool)
            m["last"][n - 1] = True
            if responses is not None:
                m["response"] = np.concatenate([np.zeros(n, bool), np.ones(len(resp), bool)])
            seqs.append(row + resp)
            masks.append(m)
            fbs.append({k: _fallback(n, m, k) for k in m})
            for k in per_token:
                v = inputs[k][b, keep]
                # response tokens see the media the last prompt token saw, as in generate();
                # per-token ids (token types) of response tokens are text
                if resp and v.dim() > 1:
                    v = torch.cat([v, v[-1:].expand(len(resp), *v.shape[1:])])
                elif resp:
                    v = torch.cat([v, torch.zeros(len(resp), dtype=v.dtype)])
                extra_rows[k].append(v)
        new_ids, new_mask = _pad_right(seqs, self._pad_id)
        model_inputs = {
            k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", *per_token)
        }
        for k in per_token:
            model_inputs[k] = _pad_rows(extra_rows[k], new_ids.shape[1])
        model_inputs["input_ids"], model_inputs["attention_mask"] = new_ids, new_mask
        spans, fb = _stack_masks(masks, fbs, new_ids.shape[1])

        kind = (self._media(items[0]) or ("text",))[0]
        wanted = {c: m for c, m in self._vision_modules(kind).items() if c in components}
        audio = {c: m for c, m in self._audio_modules().items() if c in components}
        captured: dict[str, list] = {c: [] for c in (*wanted, *audio)}
        hooks = []

        def grab(comp):
            def hook(_mod, _inp, out):
                t = out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out)
                if hasattr(t, "pooler_output") and not torch.is_tensor(t):
                    t = t.last_hidden_state
                captured[comp].append(t.detach())

            return hook

        def grab_input(comp):
            def pre_hook(_mod, args, kwargs):
                t = args[0] if args else kwargs["hidden_states"]
                captured[comp].append(t.detach())

            return pre_hook

        for comp, (emb, layers) in wanted.items():
            mods = ([emb] if emb is not None else []) + (list(layers) if layers is not None else [])
            hooks += [mod.register_forward_hook(grab(comp)) for mod in mods]
        for comp, (_, layers) in audio.items():
            hooks.append(layers[0].register_forward_pre_hook(grab_input(comp), with_kwargs=True))
            hooks += [mod.register_forward_hook(grab(comp)) for mod in layers]
        try:
            with torch.inference_mode():
                out = self.model(
                    **{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in model_inputs.items()},
                    output_hidden_states=True,
                    return_dict=True,
                    use_cache=False,
                    **self._logits_kw,
                )
        finally:
            for h in hooks:
                h.remove()
        hidden = (
            out.hidden_states
            if getattr(out, "hidden_states", None) is not None
            else getattr(getattr(out, "language_model_outputs", None), "hidden_states", None)
        )  # InstructBLIP
        if hidden is None or (isinstance(hidden, tuple) and torch.is_tensor(hidden[0]) is False):
            raise ValueError(f"{self.model_id}: the model returned no language-model hidden states")
        result = {"lm": States(hidden, spans, fb)}
        for comp, states in captured.items():
            if not states:
                raise ValueError(f"components: {comp!r} did not run on these {kind} items of {self.model_id}")
            pooled = [self._pool_component(t, items, inputs, comp) for t in states]
            ones = torch.ones((len(items), 1), dtype=torch.bool)
            result[comp] = States(
                [p[:, None, :] for p in pooled], {"all": ones}, torch.zeros(len(items), dtype=torch.long)
            )
        return result

    def _audio_frames(self, inputs) -> list[int]:
        """Frames per item that the audio encoder's blocks see (after its stride-2 convolution),
        from the mel frames of ``feature_attention_mask (batch, mel)``."""
        mask = inputs.get("feature_attention_mask")
        if mask is None:
            raise ValueError(f"{self.model_id}: the processor returned no feature_attention_mask")
        lengths = [int(n) for n in mask.sum(-1).tolist()]
        tower = self._audio_modules()["audio"][0]
        n_window = getattr(tower, "n_window", None)
        if not n_window:  # Qwen2-Audio: one sequence per item, padded to 30 s
            return [(n - 1) // 2 + 1 for n in lengths]
        # Qwen2.5-Omni: each item is cut into chunks of 2 * n_window mel frames, convolved apart
        out = []
        for n in lengths:
            full, rest = divmod(n, 2 * n_window)
            chunks = [2 * n_window] * full + ([rest] if rest else [])
            out.append(sum((c - 1) // 2 + 1 for c in chunks))
        return out

    def _pool_component(self, t: torch.Tensor, items, inputs, comp: str) -> torch.Tensor:
        """Mean over every patch / query / audio frame of each item: ``(batch, dim)`` float32.
        The Q-Former's states also cover the instruction's Q-Former tokens, padded to the batch's
        longest, after its query tokens: only the queries are pooled."""
        B = len(items)
        t = t.to(torch.float32)
        n_query = getattr(self.config, "num_query_tokens", None)
        if comp == "qformer" and isinstance(n_query, int) and t.dim() == 3:
            t = t[:, :n_query]
        if comp == "audio":
            frames = self._audio_frames(inputs)
            if t.dim() == 2:  # packed frames of all items (Qwen2.5-Omni)
                if t.shape[0] != sum(frames):
                    raise ValueError(f"audio: {t.shape[0]} encoder frames, expected {sum(frames)}")
                return torch.stack([c.mean(0) for c in torch.split(t, frames)])
            return torch.stack([t[b, : frames[b]].mean(0) for b in range(B)])  # padding frames excluded
        if t.dim() == 2:  # packed patches (Qwen-VL): split by the items' grid sizes
            grid = inputs.get("image_grid_thw")
            if grid is None:
                grid = inputs.get("video_grid_thw")
            counts = grid.prod(dim=1)
            total = int(counts.sum())
            if t.shape[0] != total:  # after the patch merger
                counts = counts * t.shape[0] // total
            per_item = counts.reshape(B, -1).sum(1).tolist()
            return torch.stack([c.mean(0) for c in torch.split(t, per_item)])
        if t.shape[0] % B:
            raise ValueError(f"{comp}: cannot split {t.shape[0]} images/patch groups over {B} items")
        return t.reshape(B, -1, t.shape[-1]).mean(1)

    def generate(self, items, instruction, max_new_tokens):
        rendered = [self.render(instruction, it) for it in items]
        inputs = self._processor_inputs(items, [r.text for r in rendered], "left")
        n = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = self.model.generate(
                **{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in inputs.items()},
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=self._pad_id,
            )
        return [self._trim(row[n:].tolist()) for row in out]


IDEFICS_IMAGE = "<image>"
IDEFICS_FAKE = "<fake_token_around_image>"
IDEFICS_EOU = "<end_of_utterance>"


def _strip_segments(r: Rendered, markup: re.Pattern) -> Rendered:
    """``r`` with the spaces around each text segment between ``markup`` matches removed and its
    spans moved to match, as :class:`transformers.IdeficsProcessor` strips each text it joins."""
    text = r.text
    drop = np.zeros(len(text) + 1, bool)
    bounds = [0, *(k for mt in markup.finditer(text) for k in mt.span()), len(text)]
    for a, b in zip(bounds[::2], bounds[1::2], strict=True):
        seg = text[a:b]
        lead = len(seg) - len(seg.lstrip(" "))
        trail = len(seg) - len(seg.rstrip(" ")) if seg.strip(" ") else 0
        drop[a : a + lead] = True
        drop[b - trail : b] = True
    if not drop.any():
        return r
    kept = np.concatenate([[0], np.cumsum(~drop[:-1])])  # new index of each old index
    out = "".join(c for c, d in zip(text, drop[:-1], strict=True) if not d)
    return Rendered(out, {k: (int(kept[a]), int(kept[b])) for k, (a, b) in r.spans.items()})


class IdeficsAdapter(MultimodalAdapter):
    r"""IDEFICS v1 (``IdeficsForVisionText2Text``): a language model that cross-attends to the
    images from gated layers, with one ``<image>`` token per image in the text.

    IDEFICS has no chat template; :class:`~transformers.IdeficsProcessor` takes interleaved
    ``[text, image, text, ...]`` prompts. The prompt follows the instruct model card's turns,
    ``User: <instruction>\n<image><stimulus text><end_of_utterance>\nAssistant:`` with the
    ``instruction_first`` layout and ``User:<image><stimulus text>\n<instruction><end_of_utterance>
    \nAssistant:`` with ``stimulus_first`` (``<end_of_utterance>`` only if the tokenizer has it,
    as the instruct checkpoints' do). Each image is written as the processor writes it,
    ``<fake_token_around_image><image><fake_token_around_image>``; the ``stimulus`` span is the
    ``<image>`` tokens (the positions that read the image first) plus any stimulus text. Response
    tokens cross-attend to the image the last prompt token attends to, as in ``generate``.
    Components: ``lm`` and the optional ``vision`` (the CLIP-style tower's blocks).
    """

    def _load(self):
        if self.use_chat_template:
            raise ValueError(f"use_chat_template: {self.model_id} (IDEFICS) has no chat template")
        super()._load()
        image = getattr(self.processor, "image_token_id", None)
        if not isinstance(image, int):
            image = self._token_id(IDEFICS_IMAGE)
        if image is None:
            raise ValueError(f"{self.model_id}: the tokenizer has no {IDEFICS_IMAGE} token")
        self.media_ids = {int(image)}
        fake = self._token_id(IDEFICS_FAKE)
        self.inserted_ids = {fake} if fake is not None else set()
        self.end_of_utterance = IDEFICS_EOU if self._token_id(IDEFICS_EOU) is not None else ""
        self._markup = re.compile(
            re.escape(IDEFICS_FAKE) + "(?:" + re.escape(IDEFICS_IMAGE) + re.escape(IDEFICS_FAKE) + ")+"
        )

    @property
    def _chat(self):
        return None

    def template(self, instruction: Instruction, item: Stimulus) -> Template:
        if item.video is not None or item.audio is not None:
            raise ValueError(f"items: {self.model_id} (IDEFICS) reads images and text, not video or audio")
        n = len(item.images or ())
        key = ("idefics", instruction.id, bool(instruction.text), item.text is not None, n)
        if key not in self._templates:
            ins = INS if instruction.text else ""
            stim = STIM if item.text is not None else ""
            images = IDEFICS_FAKE + (IDEFICS_IMAGE + IDEFICS_FAKE) * n if n else ""
            if self.layout == "instruction_first":
                body = ins + (SEPARATOR if ins and (images or stim) else "") + images + stim
            else:
                body = images + stim + (SEPARATOR if stim and ins else "") + ins
            head = "User:" + (" " if body and not body.startswith(IDEFICS_FAKE) else "")
            self._templates[key] = Template(head + body + self.end_of_utterance + "\nAssistant:", chat=False)
        return self._templates[key]

    def render(self, instruction: Instruction, item: Stimulus) -> Rendered:
        return _strip_segments(super().render(instruction, item), self._markup)

    def _processor_inputs(self, items, texts, padding_side: str):
        prompts = []
        for item, text in zip(items, texts, strict=True):
            if item.video is not None or item.audio is not None:
                raise ValueError(
                    f"items: {self.model_id} (IDEFICS) reads images and text, not video or audio"
                )
            images = iter([load_image(im) for im in item.images or ()])
            sample: list[Any] = []
            pos = 0
            for mt in self._markup.finditer(text):
                if mt.start() > pos:
                    sample.append(text[pos : mt.start()])
                sample += [next(images) for _ in range(mt.group().count(IDEFICS_IMAGE))]
                pos = mt.end()
            if pos < len(text):
                sample.append(text[pos:])
            prompts.append(sample)
        tok = self.tokenizer
        old = tok.padding_side
        tok.padding_side = padding_side
        try:
            # texts never follow each other, so the processor adds no <end_of_utterance> itself
            return self.processor(
                text=prompts,
                return_tensors="pt",
                padding=True,
                padding_side=padding_side,
                add_end_of_utterance_token=False,
            )
        finally:
            tok.padding_side = old


def _insert_after(r: Rendered, pattern: re.Pattern, insert: str) -> Rendered:
    """``r`` with ``insert`` written at the end of each match of ``pattern``; spans move along
    (text inserted where a span starts goes before it, where one ends after it)."""
    at = [mt.end() for mt in pattern.finditer(r.text)]
    if not at:
        return r
    text = insert.join(r.text[a:b] for a, b in zip([0, *at], [*at, len(r.text)], strict=True))
    k = len(insert)
    spans = {
        name: (a + k * sum(p <= a for p in at), b + k * sum(p < b for p in at))
        for name, (a, b) in r.spans.items()
    }
    return Rendered(text, spans)


class Idefics2Adapter(MultimodalAdapter):
    """IDEFICS2 (``Idefics2ForConditionalGeneration``): :class:`MultimodalAdapter` with the chat
    template, plus the one rewrite its processor makes besides expanding ``<image>``: a space
    after an image that a word follows directly (``User:<image>Describe`` becomes
    ``User:<image> Describe``). The rendered prompt carries that space already, so the recorded
    prompt is what the model reads and the instruction tokens align."""

    _word_after_image = re.compile(r"<image>(?=[^\s<])")

    def render(self, instruction: Instruction, item: Stimulus) -> Rendered:
        return _insert_after(super().render(instruction, item), self._word_after_image, " ")


# ---- loading ---------------------------------------------------------------------------------
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta", "deberta-v2"}


def adapter_class(config) -> type[TransformersAdapter]:
    mt = config.model_type
    if mt == "idefics":
        return IdeficsAdapter
    if mt == "idefics2":
        return Idefics2Adapter
    if mt in MULTIMODAL_CLASSES or hasattr(config, "vision_config") or hasattr(config, "audio_config"):
        return MultimodalAdapter
    if getattr(config, "is_encoder_decoder", False):
        return Seq2SeqAdapter
    if mt in ENCODER_TYPES:
        return EncoderAdapter
    return CausalLMAdapter


def load_adapter(model: str | Path | Adapter, **kwargs) -> Adapter:
    """An :class:`Adapter` for ``model``: an adapter instance is returned as is; a checkpoint
    (Hub id or local directory) gets the transformers family its config names.

    ``kwargs``: ``revision``, ``device``, ``dtype`` (float32, bfloat16, float16),
    ``trust_remote_code`` (False unless you pass True), ``attn_implementation``, ``device_map``,
    ``use_chat_template``, ``layout``, ``system_prompt``, ``allow_pickle`` (False: safetensors
    only), and ``decoder_input`` for encoder-decoders. The config is loaded once, and the rest at
    the commit it came from (:func:`pinned_revision`).
    """
    if isinstance(model, Adapter):
        return model
    import transformers

    config = transformers.AutoConfig.from_pretrained(
        str(model),
        revision=kwargs.get("revision") or "main",
        trust_remote_code=bool(kwargs.get("trust_remote_code")),
    )
    cls = adapter_class(config)
    if cls is not Seq2SeqAdapter:
        kwargs.pop("decoder_input", None)
    return cls(model, config=config, **kwargs)


def describe(adapter: Adapter) -> str:
    return json.dumps(adapter.provenance(), sort_keys=True)
