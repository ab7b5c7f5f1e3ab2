"""Extraction for the families with their own prompt or input shapes: IDEFICS v1 (interleaved
prompts, one ``<image>`` token per image, cross-attention), InternVL ``-hf`` on video clips, and
the audio encoders of Qwen2-Audio and the Qwen2.5-Omni thinker as an optional component."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brainalign.features import FeatureStore, open_table, stimuli

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared fixtures live beside this file
import conftest_extract as cx

from brainalign.features.extract import embed, load_adapter
from brainalign.features.instructions import get_instruction

pytestmark = [
    # torch's CUDA build warns once that no GPU driver is present on CPU-only machines
    pytest.mark.filterwarnings("ignore:CUDA initialization:UserWarning"),
    # PyAV / transformers video utilities deprecations we cannot fix from here
    pytest.mark.filterwarnings("ignore::DeprecationWarning:av.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:transformers.*"),
]

# session fixtures shared with the other extraction tests
tiny, media = cx.tiny, cx.media

CAPTION = get_instruction("image.captioning")
NONE = get_instruction("none")


def image_manifest(media):
    return stimuli.image_items(media["images"], stimulus_set="imgs")


def video_manifest(media, n_trs=2, frames=4):
    return stimuli.video_clips(media["video"], tr=1.0, n_trs=n_trs, frames_per_clip=frames, run="run-1")


def audio_manifest(media):
    return stimuli.audio_windows(media["audio"], tr=1.0, sample_rate=16000)


def check_tr_grid(store: FeatureStore, n_trs: int, tr: float):
    t = store.to_table(columns=["instruction_id", "component", "layer", "pooling", "tr", "onset_s"])
    g = t.group_by(["instruction_id", "component", "layer", "pooling"]).aggregate([("tr", "list")])
    for trs in g.column("tr_list").to_pylist():
        assert sorted(trs) == list(range(n_trs))
    np.testing.assert_allclose(t.column("onset_s").to_numpy(), t.column("tr").to_numpy() * tr)


# ---- IDEFICS v1 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def idefics(tiny):
    """One loaded tiny IDEFICS adapter for the module (``embed`` accepts adapters)."""
    return load_adapter(tiny("idefics"))


def test_idefics_renders_the_model_card_turns(tiny):
    first = load_adapter(tiny("idefics"))
    item = stimuli.Stimulus(stimulus_id="x", images=[np.zeros((8, 8, 3), np.uint8)])
    fake = "<fake_token_around_image><image><fake_token_around_image>"
    assert type(first).__name__ == "IdeficsAdapter"
    assert first.render(CAPTION, item).text == f"User: {CAPTION.text}\n{fake}<end_of_utterance>\nAssistant:"
    last = load_adapter(tiny("idefics"), layout="stimulus_first")
    r = last.render(CAPTION, item)
    assert r.text == f"User:{fake}{CAPTION.text}<end_of_utterance>\nAssistant:"
    assert r.text[slice(*r.spans["instruction"])] == CAPTION.text
    assert first.render(NONE, item).text == f"User:{fake}<end_of_utterance>\nAssistant:"
    # the processor strips spaces around the texts it joins; the spans follow
    both = stimuli.Stimulus(stimulus_id="y", text="  a red car", images=item.images)
    r = first.render(CAPTION, both)
    assert f"{fake}a red car<end_of_utterance>" in r.text
    assert r.text[slice(*r.spans["stimulus"])] == "a red car"
    with pytest.raises(ValueError, match="no chat template"):
        load_adapter(tiny("idefics"), use_chat_template=True)


def test_idefics_span_masks(idefics, media):
    items = [
        *image_manifest(media).items[:2],
        stimuli.Stimulus(stimulus_id="t", text="a red car", images=[media["images"][2]]),
    ]
    out = idefics.forward(items, CAPTION, ["lm", "vision"])
    texts = [idefics.render(CAPTION, it).text for it in items]
    ids = idefics._processor_inputs(items, texts, "right")["input_ids"]
    lm = out["lm"]
    assert len(lm.hidden) == 3 and lm.hidden[0].shape[:2] == ids.shape
    image_id = idefics.tokenizer.convert_tokens_to_ids("<image>")
    for b in range(len(items)):
        spans = {k: v[b].numpy() for k, v in lm.spans.items()}
        assert all(spans[k].any() for k in ("stimulus", "instruction", "all", "last"))
        assert idefics.decode(ids[b, spans["instruction"]]).strip() == CAPTION.text
        stim = ids[b, spans["stimulus"]].tolist()
        assert stim.count(image_id) == 1  # the one <image> token of the item
        if items[b].text:
            assert idefics.decode([t for t in stim if t != image_id]) == "a red car"
        else:
            assert stim == [image_id]
        assert idefics.tokenizer.convert_ids_to_tokens(int(ids[b, spans["last"]][0])) == ":"
    vision = out["vision"]
    assert len(vision.hidden) == 3 and vision.hidden[0].shape == (3, 1, 32)


def test_idefics_end_to_end(idefics, media, tmp_path):
    m = image_manifest(media)
    uri = tmp_path / "idefics.lance"
    ins = ["image.captioning", "none"]
    pool = ("stimulus", "instruction", "last", "all", "response")
    res = embed(
        m,
        idefics,
        ins,
        store=uri,
        pooling=pool,
        components=("lm", "vision"),
        max_new_tokens=3,
        progress=False,
        batch_size=2,
        model_name="idefics",
    )
    st = FeatureStore.open(uri)
    # every hidden state: layers 0..2 of the LM; "instruction" only under an instruction with text
    assert st.count_rows() == len(m) * 3 * (len(pool) + len(pool) - 1)
    assert st.available()["layer"] == [0, 1, 2] and st.dim == 64
    vis = FeatureStore.open(tmp_path / "idefics.vision.lance")
    assert vis.count_rows() == len(m) * len(ins) * 3 and vis.dim == 32
    assert res.rows_written == st.count_rows() + vis.count_rows()
    assert len(open_table(res.generations).to_table()) == len(m) * len(ins)
    prompt = st.provenance["instructions"]["image.captioning"]["prompt"]
    assert prompt.startswith("User: Write a short caption") and prompt.endswith("Assistant:")
    # the <image> token reads the instruction before it: its states depend on the instruction
    _, a = st.read(instruction="image.captioning", pooling="stimulus", layer=2)
    _, b = st.read(instruction="none", pooling="stimulus", layer=2)
    assert np.isfinite(a).all() and not np.allclose(a, b)
    # and on the image (the gated cross-attention is open in the tiny model)
    assert not np.allclose(a[0], a[1])


def test_idefics_batch_equals_single_and_response_is_deterministic(idefics, media, tmp_path):
    m = image_manifest(media)
    pool = ("stimulus", "instruction", "last", "all", "response")
    out = []
    for run, bs in enumerate((1, 3, 3)):
        uri = tmp_path / f"b{run}.lance"
        res = embed(
            m,
            idefics,
            ["image.captioning"],
            store=uri,
            pooling=pool,
            max_new_tokens=4,
            seed=3,
            progress=False,
            batch_size=bs,
            model_name="idefics",
        )
        gens = open_table(res.generations).to_table().sort_by("stimulus_id")
        out.append((*FeatureStore.open(uri).read(), gens.column("token_ids").to_pylist()))
    (k1, x1, t1), (k3, x3, t3), (_, x3b, t3b) = out
    assert k1.equals(k3) and t1 == t3 == t3b
    assert all(len(t) > 0 for t in t1)
    np.testing.assert_allclose(x1, x3, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(x3, x3b)


@pytest.mark.parametrize("layout", ["instruction_first", "stimulus_first"])
def test_idefics2_chat_template(layout, tiny, media, tmp_path):
    adapter = load_adapter(tiny("idefics2"), layout=layout)
    assert type(adapter).__name__ == "Idefics2Adapter"
    m = image_manifest(media)
    # the processor puts a space between an image and a word after it; the prompt has it already
    want = (
        f"User: {CAPTION.text}\n<image><end_of_utterance>\nAssistant:"
        if layout == "instruction_first"
        else f"User:<image> {CAPTION.text}<end_of_utterance>\nAssistant:"
    )
    r = adapter.render(CAPTION, m.items[0])
    assert r.text == want and r.text[slice(*r.spans["instruction"])] == CAPTION.text
    out = adapter.forward(m.items, CAPTION, ["lm"])
    texts = [adapter.render(CAPTION, it).text for it in m.items]
    ids = adapter._processor_inputs(m.items, texts, "right")["input_ids"]
    image_id = adapter.tokenizer.convert_tokens_to_ids("<image>")
    for row, stim, instr in zip(
        ids, out["lm"].spans["stimulus"], out["lm"].spans["instruction"], strict=True
    ):
        assert row[stim].tolist() == [image_id] * 4  # the perceiver's 4 latents
        assert adapter.decode(row[instr]).strip() == CAPTION.text
    uri = tmp_path / "i2.lance"
    pool = ("stimulus", "instruction", "last")
    embed(m, adapter, ["image.captioning", "none"], store=uri, pooling=pool, progress=False, batch_size=2)
    st = FeatureStore.open(uri)
    assert st.count_rows() == len(m) * 3 * (3 + 2) and st.available()["layer"] == [0, 1, 2]
    _, a = st.read(instruction="image.captioning", pooling="stimulus", layer=2)
    assert np.isfinite(a).all() and not np.allclose(a[0], a[1])


# ---- InternVL (-hf) on video -----------------------------------------------------------------
@pytest.fixture(scope="module")
def internvl(tiny):
    return load_adapter(tiny("internvl"))


def test_internvl_video_clips(internvl, media, tmp_path):
    m = video_manifest(media)
    ins = ["video.captioning", "none"]
    pool = ("stimulus", "instruction", "last")
    uri = tmp_path / "ivl.lance"
    embed(
        m,
        internvl,
        ins,
        store=uri,
        pooling=pool,
        components=("lm", "vision"),
        progress=False,
        batch_size=2,
        model_name="internvl",
    )
    st = FeatureStore.open(uri)
    assert st.count_rows() == len(m) * 3 * (3 + 2)
    check_tr_grid(st, len(m), 1.0)
    vis = FeatureStore.open(tmp_path / "ivl.vision.lance")
    assert vis.count_rows() == len(m) * len(ins) * 3
    assert "<video>" in st.provenance["instructions"]["video.captioning"]["prompt"]
    _, a = st.read(instruction="video.captioning", pooling="stimulus", layer=2)
    _, b = st.read(instruction="none", pooling="stimulus", layer=2)
    assert np.isfinite(a).all() and not np.allclose(a, b)
    # the processor writes "Frame1: <img><IMG_CONTEXT></img>\nFrame2: ..." for the <video>
    # placeholder: the stimulus span is the frames' context tokens (image_seq_length=1 each)
    ins_video = get_instruction("video.captioning")
    out = internvl.forward(m.items, ins_video, ["lm"])
    texts = [internvl.render(ins_video, it).text for it in m.items]
    ids = internvl._processor_inputs(m.items, texts, "right")["input_ids"]
    ctx = internvl.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    for row, stim, instr in zip(
        ids, out["lm"].spans["stimulus"], out["lm"].spans["instruction"], strict=True
    ):
        assert row[stim].tolist() == [ctx] * 4
        assert internvl.decode(row[instr]).strip() == ins_video.text


def test_internvl_batch_equals_single_on_unequal_lengths(internvl, media, tmp_path):
    # game windows carry action texts of different lengths, so a batch is padded; InternVL's
    # processor pads on the left unless told otherwise
    m = stimuli.game_windows(
        media["images"] * 2,
        np.arange(6) * 0.5,
        tr=1.0,
        frames_per_window=2,
        actions=[(0.2, "LEFT"), (1.4, "FIRE"), (1.6, "UP"), (1.8, "DOWN")],
        run="run-1",
    )
    assert len({len(it.text or "") for it in m.items}) > 1
    out = {}
    for bs in (1, 3):
        uri = tmp_path / f"g{bs}.lance"
        embed(
            m,
            internvl,
            ["game.action.next-move"],
            store=uri,
            pooling=("stimulus", "instruction", "last"),
            progress=False,
            batch_size=bs,
            model_name="internvl",
        )
        out[bs] = FeatureStore.open(uri).read()
    (k1, x1), (k3, x3) = out[1], out[3]
    assert k1.equals(k3)
    np.testing.assert_allclose(x1, x3, rtol=1e-4, atol=1e-5)


# ---- audio encoders --------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2-audio", "qwen2.5-omni-thinker"])
def test_audio_encoder_component(family, tiny, media, tmp_path):
    m = audio_manifest(media)
    adapter = load_adapter(tiny(family))
    assert adapter.all_components()["audio"] == (3, None)  # embeddings output + 2 blocks
    ins = ["audio.captioning", "none"]
    uri = tmp_path / "aud.lance"
    res = embed(
        m,
        adapter,
        ins,
        store=uri,
        components=["lm", "audio"],
        pooling=("stimulus", "instruction", "all"),
        progress=False,
        batch_size=2,
        model_name=family,
    )
    lm = FeatureStore.open(uri)
    audio = FeatureStore.open(tmp_path / "aud.audio.lance")
    assert lm.count_rows() == len(m) * 3 * (3 + 2) and lm.available()["component"] == ["lm"]
    assert audio.count_rows() == len(m) * len(ins) * 3
    assert audio.available()["layer"] == [0, 1, 2] and audio.available()["pooling"] == ["all"]
    assert audio.dim == 32 and audio.available()["component"] == ["audio"]
    assert res.rows_written == lm.count_rows() + audio.count_rows()
    check_tr_grid(audio, len(m), 1.0)
    # the audio encoder does not read the instruction; different windows differ
    _, a = audio.read(instruction="audio.captioning", layer=2)
    _, b = audio.read(instruction="none", layer=2)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.isfinite(a).all() and not np.allclose(a[0], a[1])

    # oracle: transformers' own record of the encoder's hidden states, one item at a time,
    # averaged over the frames its own length function gives
    import torch

    keys, got = audio.read(instruction="none")
    sids, layers = keys.column("stimulus_id").to_pylist(), keys.column("layer").to_pylist()
    order = {key: i for i, key in enumerate(zip(sids, layers, strict=True))}
    for item in m.items:
        text = adapter.render(NONE, item).text
        inputs = adapter._processor_inputs([item], [text], "right")
        feats, mask = inputs["input_features"], inputs["feature_attention_mask"]
        with torch.inference_mode():
            if family == "qwen2-audio":
                tower = adapter.model.model.audio_tower
                # the convolutional front end (layer 0) sees no attention mask
                states = tower(feats, output_hidden_states=True).hidden_states[:1]
                n_frames = int(tower._get_feat_extract_output_lengths(mask.sum(-1))[0][0])
                want = [s[0, :n_frames].mean(0) for s in states]
            else:
                states = adapter.model.get_audio_features(
                    feats, feature_attention_mask=mask, output_hidden_states=True
                ).hidden_states
                want = [s.mean(0) for s in states]
        for layer, w in enumerate(want):
            np.testing.assert_allclose(got[order[(item.stimulus_id, layer)]], w.numpy(), rtol=1e-4, atol=1e-5)


# ---- video frame rates -----------------------------------------------------------------------
def test_qwen25_vl_clips_carry_their_frame_rate(tiny, media):
    """Qwen2.5-VL places a clip's frames in time with ``second_per_grid_ts = temporal_patch_size /
    fps``: 8 frames over a 1 s window are 8 fps, so the 4 temporal patches get 4 distinct
    temporal rope positions (the processor's default 24 fps gave them all one position)."""
    a = load_adapter(tiny("qwen2.5-vl"))
    ins = get_instruction("video.captioning")
    for window, frames in ((1.0, 8), (2.0, 8)):
        m = stimuli.video_clips(
            media["video"], tr=1.0, window_s=window, n_trs=3, frames_per_clip=frames, run="run-1"
        )
        assert m.spec["clip_fps"] == frames / window
        items = m.items[1:]
        inputs = a._processor_inputs(items, [a.render(ins, it).text for it in items], "right")
        fps = frames / window
        np.testing.assert_allclose(inputs["second_per_grid_ts"].numpy(), [2 / fps] * len(items))
        pos, _ = a.model.model.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs["second_per_grid_ts"],
            attention_mask=inputs["attention_mask"],
        )
        video = inputs["input_ids"] == a.model.config.video_token_id
        t_grid = int(inputs["video_grid_thw"][0, 0])
        tps = a.model.config.vision_config.tokens_per_second
        for b in range(len(items)):
            temporal = pos[0, b][video[b]]
            steps = torch.unique(temporal - temporal.min())
            assert len(steps) == t_grid
            np.testing.assert_array_equal(steps.numpy(), (np.arange(t_grid) * 2 / fps * tps).astype(int))
    assert a.provenance()["video_fps"].startswith("frames per clip")
    # processors without a frame-rate input are called as before
    assert load_adapter(tiny("internvl"))._video_rate_kwargs(items, [8, 8]) == {}


def test_clip_fps_from_window_or_frame_times():
    item = stimuli.Stimulus("c", window_start_s=1.0, window_end_s=2.49, frame_times=[0.0] * 8)
    assert stimuli.clip_fps(item) == pytest.approx(8 / 1.49)
    item = stimuli.Stimulus("c", frame_times=[0.1, 0.35, 0.6, 0.85])
    assert stimuli.clip_fps(item) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="frame rate"):
        stimuli.clip_fps(stimuli.Stimulus("c", frame_times=[0.2]))


# ---- InstructBLIP Q-Former -------------------------------------------------------------------
@pytest.mark.parametrize("family", ["instructblip", "instructblip-video"])
def test_qformer_rows_pool_the_query_tokens_only(family, tiny, media):
    """The Q-Former also reads the prompt, padded to the batch's longest: its rows pool the query
    tokens only, so a batch of prompts of different lengths equals its items one at a time."""
    import dataclasses

    a = load_adapter(tiny(family))
    texts = ["a car", "the old sailor walked along the grey harbour and thought about the storm"]
    if family == "instructblip":
        base = image_manifest(media).items[:2]
    else:
        base = video_manifest(media).items[:2]
    items = [dataclasses.replace(it, text=t, focus=(0, len(t))) for it, t in zip(base, texts, strict=True)]
    batch = a.forward(items, CAPTION, ["lm", "qformer"])["qformer"]
    n_layers = len(batch.hidden)
    assert n_layers == 3
    for b, it in enumerate(items):
        one = a.forward([it], CAPTION, ["lm", "qformer"])["qformer"]
        for layer in range(n_layers):
            np.testing.assert_allclose(
                np.asarray(batch.hidden[layer][b]), np.asarray(one.hidden[layer][0]), rtol=1e-4, atol=1e-5
            )
