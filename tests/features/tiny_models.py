"""Builders of tiny random-weight checkpoints of real architectures, for offline tests.

Each builder makes a config from the transformers config class with a hidden size of 32-64 and
two layers, a model from it (seeded), a tokenizer trained locally on a small corpus (byte-level
BPE, so any text encodes), a processor from the real processor class, and ``save_pretrained``s
them into a directory, which the extraction code then loads through ``from_pretrained`` exactly
like a downloaded checkpoint. The chat templates are short versions of the checkpoints' own.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from brainalign.features.instructions import load_registry

SPECIAL = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<image>",
    "<video>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|endoftext|>",
    "<IMG_CONTEXT>",
    "<img>",
    "</img>",
]

CORPUS = [
    "The quick brown fox jumps over the lazy dog while the children watch from the window.",
    "She opened the door and saw the ocean, bright and loud under a grey sky.",
    "A man rides a bicycle down the street; two people talk near the red car.",
    "USER: ASSISTANT: system user assistant You are a helpful assistant.",
    "Player actions: LEFT, RIGHT, FIRE, UP, DOWN, none. Audio 1: Picture 1: Video 1:",
    "0123456789 ,.;:!?'\"()[]{}-_/\\ \n",
]


def corpus() -> list[str]:
    return CORPUS + [i.text for i in load_registry().instructions if i.text]


def train_tokenizer(
    vocab_size: int = 600,
    *,
    bos="<s>",
    eos="</s>",
    pad="<pad>",
    add_bos=False,
    chat_template=None,
    named: dict[str, str] | None = None,
):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on :func:`corpus` with all the
    special tokens the tiny multimodal models need."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    extra = [s for s in SPECIAL if s not in (bos, eos, pad, "<unk>")]
    if named:  # named extra special tokens become attributes (``tok.start_image_token_id``)
        extra = dict(named)
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token="<unk>",
        extra_special_tokens=extra,
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'audio' %}Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'video' %}<video>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

LLAMA_CHAT = (
    "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)

SMALL_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)


def _save(model, tokenizer, path: Path, processor=None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    return path


def _ids(tok, **names):
    return {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}


# ---- text ------------------------------------------------------------------------------------
def build_gpt2(path: Path) -> Path:
    torch.manual_seed(0)
    tok = train_tokenizer(bos="<|endoftext|>", eos="<|endoftext|>", pad="<|endoftext|>")
    cfg = tf.GPT2Config(
        vocab_size=len(tok),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return _save(tf.GPT2LMHeadModel(cfg).eval(), tok, path)


def build_llama(path: Path, chat: bool = True) -> Path:
    torch.manual_seed(1)
    tok = train_tokenizer(add_bos=True, chat_template=LLAMA_CHAT if chat else None)
    cfg = tf.LlamaConfig(
        vocab_size=len(tok),
        **SMALL_TEXT,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return _save(tf.LlamaForCausalLM(cfg).eval(), tok, path)


def build_qwen2(path: Path) -> Path:
    torch.manual_seed(2)
    tok = train_tokenizer(eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML)
    cfg = tf.Qwen2Config(
        vocab_size=len(tok), **SMALL_TEXT, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    return _save(tf.Qwen2ForCausalLM(cfg).eval(), tok, path)


def build_t5(path: Path) -> Path:
    torch.manual_seed(3)
    tok = train_tokenizer(eos="</s>", pad="<pad>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.eos_token_id)]
    )
    cfg = tf.T5Config(
        vocab_size=len(tok),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    return _save(tf.T5ForConditionalGeneration(cfg).eval(), tok, path)


# ---- vision ----------------------------------------------------------------------------------
def _clip_vision(image_size=28, patch=14, hidden=32):
    return tf.CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=hidden,
    )


def _clip_image_processor(size=28):
    return tf.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_llava(path: Path) -> Path:
    torch.manual_seed(4)
    tok = train_tokenizer(add_bos=True, chat_template=LLAVA)
    ids = _ids(tok, image="<image>")
    text = tf.LlamaConfig(
        vocab_size=len(tok),
        **SMALL_TEXT,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    cfg = tf.LlavaConfig(
        vision_config=_clip_vision(),
        text_config=text,
        image_token_id=ids["image"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = tf.LlavaForConditionalGeneration(cfg).eval()
    proc = tf.LlavaProcessor(
        image_processor=_clip_image_processor(),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=LLAVA,
        num_additional_image_tokens=1,
    )
    return _save(model, tok, path, proc)


def _qwen_vision(cls, out_hidden):
    if cls is tf.Qwen2VLConfig:
        return dict(
            depth=2,
            embed_dim=32,
            hidden_size=out_hidden,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
    return dict(
        depth=2,
        hidden_size=32,
        out_hidden_size=out_hidden,
        intermediate_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        fullatt_block_indexes=[1],
        window_size=56,
    )


def build_qwen_vl(path: Path, version: str = "2.5") -> Path:
    """Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``) with image and video processors."""
    torch.manual_seed(5)
    tok = train_tokenizer(eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML)
    ids = _ids(tok, image="<|image_pad|>", video="<|video_pad|>", vs="<|vision_start|>", ve="<|vision_end|>")
    cfg_cls, model_cls, proc_cls = (
        (tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor)
        if version == "2"
        else (tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor)
    )
    text = dict(
        vocab_size=len(tok),
        **SMALL_TEXT,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    cfg = cfg_cls(
        text_config=text,
        vision_config=_qwen_vision(cfg_cls, 64),
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vs"],
        vision_end_token_id=ids["ve"],
    )
    model = model_cls(cfg).eval()
    pix = dict(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2)
    image_proc = tf.Qwen2VLImageProcessor(**pix)
    video_proc = tf.Qwen2VLVideoProcessor(**pix, do_sample_frames=False, cap_pixels_per_frame=True)
    proc = proc_cls(
        image_processor=image_proc, video_processor=video_proc, tokenizer=tok, chat_template=CHATML
    )
    return _save(model, tok, path, proc)


# ---- audio -----------------------------------------------------------------------------------
def build_qwen2_audio(path: Path) -> Path:
    torch.manual_seed(6)
    tok = train_tokenizer(eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML)
    ids = _ids(tok, audio="<|AUDIO|>")
    audio = dict(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=1500,
    )
    text = dict(
        vocab_size=len(tok),
        **SMALL_TEXT,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    cfg = tf.Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_id=ids["audio"])
    model = tf.Qwen2AudioForConditionalGeneration(cfg).eval()
    fe = tf.WhisperFeatureExtractor(feature_size=80, sampling_rate=16000)
    proc = tf.Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok, chat_template=CHATML)
    return _save(model, tok, path, proc)


BUILDERS = {
    "gpt2": build_gpt2,
    "llama": build_llama,
    "qwen2": build_qwen2,
    "t5": build_t5,
    "llava": build_llava,
    "qwen2-vl": lambda p: build_qwen_vl(p, "2"),
    "qwen2.5-vl": lambda p: build_qwen_vl(p, "2.5"),
    "qwen2-audio": build_qwen2_audio,
}


def build(name: str, root: Path) -> Path:
    path = Path(root) / name
    if (path / "config.json").exists():
        return path
    out = BUILDERS[name](path)
    (path / "brainalign_tiny.json").write_text(json.dumps({"builder": name}))
    return out


# ---- more video / image families ------------------------------------------------------------
def _llava_text(tok):
    return tf.LlamaConfig(
        vocab_size=len(tok),
        **SMALL_TEXT,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def build_video_llava(path: Path) -> Path:
    torch.manual_seed(7)
    tok = train_tokenizer(add_bos=True, chat_template=LLAVA)
    ids = _ids(tok, image="<image>", video="<video>")
    cfg = tf.VideoLlavaConfig(
        vision_config=_clip_vision(28),
        text_config=_llava_text(tok),
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = tf.VideoLlavaForConditionalGeneration(cfg).eval()
    proc = tf.VideoLlavaProcessor(
        image_processor=tf.VideoLlavaImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        video_processor=tf.VideoLlavaVideoProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=LLAVA,
        num_additional_image_tokens=1,
    )
    return _save(model, tok, path, proc)


def build_llava_next_video(path: Path) -> Path:
    torch.manual_seed(8)
    tok = train_tokenizer(add_bos=True, chat_template=LLAVA)
    ids = _ids(tok, image="<image>", video="<video>")
    cfg = tf.LlavaNextVideoConfig(
        vision_config=_clip_vision(28),
        text_config=_llava_text(tok),
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=[[28, 28]],
        spatial_pool_stride=2,
    )
    model = tf.LlavaNextVideoForConditionalGeneration(cfg).eval()
    proc = tf.LlavaNextVideoProcessor(
        video_processor=tf.LlavaNextVideoVideoProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        image_processor=tf.LlavaNextImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=[[28, 28]]
        ),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=LLAVA,
        num_additional_image_tokens=1,
    )
    return _save(model, tok, path, proc)


def build_llava_onevision(path: Path) -> Path:
    torch.manual_seed(9)
    tok = train_tokenizer(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=CHATML.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n").replace(
            "<|vision_start|><|video_pad|><|vision_end|>", "<video>\n"
        ),
    )
    ids = _ids(tok, image="<image>", video="<video>")
    vision = tf.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    text = tf.Qwen2Config(
        vocab_size=len(tok),
        **SMALL_TEXT,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    cfg = tf.LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=[[28, 28]],
        vision_aspect_ratio="anyres_max_1",
    )
    model = tf.LlavaOnevisionForConditionalGeneration(cfg).eval()
    size = {"height": 28, "width": 28}
    proc = tf.LlavaOnevisionProcessor(
        image_processor=tf.LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[28, 28]]),
        video_processor=tf.LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tok,
        num_image_tokens=4,
        vision_feature_select_strategy="full",
        chat_template=tok.chat_template,
        vision_aspect_ratio="anyres_max_1",
    )
    return _save(model, tok, path, proc)


def build_instructblip(path: Path, video: bool = False) -> Path:
    torch.manual_seed(10)
    tok = train_tokenizer(add_bos=True)
    qtok = train_tokenizer()
    ids = _ids(tok, image="<image>", video="<video>")
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    qformer = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(qtok),
        encoder_hidden_size=32,
        max_position_embeddings=64,
    )
    text = _llava_text(tok)
    cls_cfg, cls_model, cls_proc = (
        (
            tf.InstructBlipVideoConfig,
            tf.InstructBlipVideoForConditionalGeneration,
            tf.InstructBlipVideoProcessor,
        )
        if video
        else (tf.InstructBlipConfig, tf.InstructBlipForConditionalGeneration, tf.InstructBlipProcessor)
    )
    token_key = "video" if video else "image"
    cfg = cls_cfg(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text.to_dict(),
        num_query_tokens=4,
        **{f"{token_key}_token_index": ids[token_key]},
    )
    model = cls_model(cfg).eval()
    if video:
        iproc = tf.InstructBlipVideoVideoProcessor(size={"height": 28, "width": 28})
        proc = cls_proc(video_processor=iproc, tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=4)
    else:
        iproc = tf.BlipImageProcessor(size={"height": 28, "width": 28})
        proc = cls_proc(image_processor=iproc, tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=4)
    return _save(model, tok, path, proc)


INTERNVL_CHAT = CHATML.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n").replace(
    "<|vision_start|><|video_pad|><|vision_end|>", "<video>\n"
)


def build_internvl(path: Path) -> Path:
    torch.manual_seed(11)
    tok = train_tokenizer(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=INTERNVL_CHAT,
        named={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    ids = _ids(tok, ctx="<IMG_CONTEXT>")
    vision = tf.InternVLVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[28, 28],
        patch_size=[14, 14],
    )
    text = tf.Qwen2Config(
        vocab_size=len(tok),
        **SMALL_TEXT,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    cfg = tf.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["ctx"],
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = tf.InternVLForConditionalGeneration(cfg).eval()
    iproc = tf.GotOcr2ImageProcessor(size={"height": 28, "width": 28}, crop_to_patches=False)
    proc = tf.InternVLProcessor(
        image_processor=iproc,
        tokenizer=tok,
        image_seq_length=1,
        chat_template=INTERNVL_CHAT,
        video_processor=tf.InternVLVideoProcessor(size={"height": 28, "width": 28}),
    )
    return _save(model, tok, path, proc)


BUILDERS.update(
    {
        "video-llava": build_video_llava,
        "llava-next-video": build_llava_next_video,
        "llava-onevision": build_llava_onevision,
        "instructblip": build_instructblip,
        "instructblip-video": lambda p: build_instructblip(p, video=True),
        "internvl": build_internvl,
    }
)


OMNI_CHAT = (
    CHATML.replace("<|vision_start|><|image_pad|><|vision_end|>", "<|vision_bos|><|IMAGE|><|vision_eos|>")
    .replace("<|vision_start|><|video_pad|><|vision_end|>", "<|vision_bos|><|VIDEO|><|vision_eos|>")
    .replace("Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n", "<|audio_bos|><|AUDIO|><|audio_eos|>")
)


def build_qwen25_omni_thinker(path: Path) -> Path:
    """The Qwen2.5-Omni thinker alone (the part that reads audio/video and produces hidden states)."""
    torch.manual_seed(12)
    names = {
        "image_token": "<|IMAGE|>",
        "audio_token": "<|AUDIO|>",
        "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>",
        "vision_eos_token": "<|vision_eos|>",
        "audio_bos_token": "<|audio_bos|>",
        "audio_eos_token": "<|audio_eos|>",
    }
    global SPECIAL
    old = SPECIAL
    SPECIAL = [*old, "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>"]
    try:
        tok = train_tokenizer(eos="<|im_end|>", pad="<|endoftext|>", chat_template=OMNI_CHAT, named=names)
    finally:
        SPECIAL = old
    ids = _ids(
        tok,
        audio="<|AUDIO|>",
        image="<|IMAGE|>",
        video="<|VIDEO|>",
        abos="<|audio_bos|>",
        aeos="<|audio_eos|>",
        user="user",
        vbos="<|vision_bos|>",
        veos="<|vision_eos|>",
    )
    audio = dict(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        num_mel_bins=128,
        max_source_positions=1500,
        n_window=100,
        output_dim=64,
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        out_hidden_size=64,
        intermediate_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        fullatt_block_indexes=[1],
        window_size=56,
    )
    text = dict(
        vocab_size=len(tok),
        **SMALL_TEXT,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    cfg = tf.Qwen2_5OmniThinkerConfig(
        audio_config=audio,
        vision_config=vision,
        text_config=text,
        audio_token_index=ids["audio"],
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        audio_start_token_id=ids["abos"],
        audio_end_token_id=ids["aeos"],
        user_token_id=ids["user"],
        vision_start_token_id=ids["vbos"],
        vision_end_token_id=ids["veos"],
    )
    model = tf.Qwen2_5OmniThinkerForConditionalGeneration(cfg).eval()
    pix = dict(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2)
    proc = tf.Qwen2_5OmniProcessor(
        image_processor=tf.Qwen2VLImageProcessor(**pix),
        video_processor=tf.Qwen2VLVideoProcessor(**pix, do_sample_frames=False, cap_pixels_per_frame=True),
        feature_extractor=tf.WhisperFeatureExtractor(feature_size=128, sampling_rate=16000),
        tokenizer=tok,
        chat_template=OMNI_CHAT,
    )
    return _save(model, tok, path, proc)


BUILDERS["qwen2.5-omni-thinker"] = build_qwen25_omni_thinker


# ---- IDEFICS (v1), IDEFICS2 ------------------------------------------------------------------
IDEFICS_SPECIAL = ["<fake_token_around_image>", "<end_of_utterance>"]


def _tokenizer_with(special: list[str], **kw):
    """:func:`train_tokenizer` with ``special`` added to :data:`SPECIAL` for this one tokenizer."""
    global SPECIAL
    old = SPECIAL
    SPECIAL = [*old, *(s for s in special if s not in old)]
    try:
        return train_tokenizer(**kw)
    finally:
        SPECIAL = old


def build_idefics(path: Path) -> Path:
    """IDEFICS v1 (``IdeficsForVisionText2Text``): a Llama-style LM with gated cross-attention to a
    CLIP-style vision tower; one ``<image>`` token per image, no chat template (the processor takes
    interleaved ``[text, image, text]`` prompts). The gates start at 1 so the image reaches the LM."""
    torch.manual_seed(13)
    tok = _tokenizer_with(IDEFICS_SPECIAL, add_bos=True)
    vision = dict(
        embed_dim=32,
        image_size=28,
        intermediate_size=64,
        patch_size=14,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    cfg = tf.IdeficsConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=1024,
        cross_layer_interval=1,
        alpha_initializer="ones",
        vision_config=vision,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = tf.IdeficsForVisionText2Text(cfg).eval()
    proc = tf.IdeficsProcessor(image_processor=tf.IdeficsImageProcessor(image_size=28), tokenizer=tok)
    return _save(model, tok, path, proc)


BUILDERS["idefics"] = build_idefics


# IDEFICS2's own chat template (``User:<image>...<end_of_utterance>\nAssistant:``)
IDEFICS2_CHAT = (
    "{% for message in messages %}{{ message['role'].capitalize() }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_idefics2(path: Path) -> Path:
    """IDEFICS2 (``Idefics2ForConditionalGeneration``): SigLIP-style tower, perceiver connector
    (4 latents, so 4 ``<image>`` tokens per image), Mistral LM, chat template."""
    torch.manual_seed(14)
    tok = _tokenizer_with(IDEFICS_SPECIAL, add_bos=True, chat_template=IDEFICS2_CHAT)
    ids = _ids(tok, image="<image>")
    text = tf.MistralConfig(
        vocab_size=len(tok),
        **SMALL_TEXT,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    cfg = tf.Idefics2Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        perceiver_config=dict(
            hidden_size=64,
            resampler_n_latents=4,
            resampler_depth=1,
            resampler_n_heads=2,
            resampler_head_dim=16,
            num_key_value_heads=1,
        ),
        text_config=text.to_dict(),
        image_token_id=ids["image"],
        pad_token_id=tok.pad_token_id,
    )
    model = tf.Idefics2ForConditionalGeneration(cfg).eval()
    iproc = tf.Idefics2ImageProcessor(
        size={"shortest_edge": 28, "longest_edge": 28}, do_image_splitting=False, do_pad=True
    )
    proc = tf.Idefics2Processor(
        image_processor=iproc, tokenizer=tok, image_seq_len=4, chat_template=IDEFICS2_CHAT
    )
    return _save(model, tok, path, proc)


BUILDERS["idefics2"] = build_idefics2


# ---- BLIP-2 ----------------------------------------------------------------------------------
def build_blip2(path: Path) -> Path:
    """BLIP-2 with an OPT language model (like Salesforce/blip2-opt-6.7b): CLIP-style vision
    tower, Q-Former with 4 query tokens, no chat template."""
    torch.manual_seed(12)
    tok = train_tokenizer(add_bos=True)
    text = tf.OPTConfig(
        vocab_size=len(tok),
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    cfg = tf.Blip2Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        qformer_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            encoder_hidden_size=32,
            max_position_embeddings=64,
        ),
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=_ids(tok, image="<image>")["image"],
    )
    model = tf.Blip2ForConditionalGeneration(cfg).eval()
    proc = tf.Blip2Processor(
        image_processor=tf.BlipImageProcessor(size={"height": 28, "width": 28}),
        tokenizer=tok,
        num_query_tokens=4,
    )
    return _save(model, tok, path, proc)


BUILDERS["blip-2"] = build_blip2


def build_bert(path: Path) -> Path:
    """A bidirectional encoder (``BertModel``): no generation."""
    torch.manual_seed(12)
    tok = train_tokenizer(pad="<pad>")
    cfg = tf.BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
    )
    return _save(tf.BertModel(cfg).eval(), tok, path)


BUILDERS["bert"] = build_bert
