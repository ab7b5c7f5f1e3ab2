"""Extraction end to end with tiny random-weight checkpoints of each family (no network):
``save_pretrained`` → ``from_pretrained`` → forward → pooling → feature store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from brainalign.features import FeatureStore, open_table, stimuli

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared fixtures live beside this file
import conftest_extract as cx

from brainalign.features.extract import (
    Adapter,
    States,
    commit_shards,
    embed,
    load_adapter,
    select_layers,
)

pytestmark = [
    # torch's CUDA build warns once that no GPU driver is present on CPU-only machines
    pytest.mark.filterwarnings("ignore:CUDA initialization:UserWarning"),
    # PyAV / transformers video utilities deprecations we cannot fix from here
    pytest.mark.filterwarnings("ignore::DeprecationWarning:av.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:transformers.*"),
]

# session fixtures shared with the other extraction tests
tiny, media, story_manifest = cx.tiny, cx.media, cx.story_manifest

TEXT_POOL = ("stimulus", "tr_words", "instruction", "last", "all")


def expected_rows(n_items, instructions, comps):
    """Rows = items × Σ_instructions Σ_components layers × spans (instruction span only when the
    instruction has text)."""
    total = 0
    for ins in instructions:
        for n_layers, spans in comps:
            total += n_layers * len([s for s in spans if not (s == "instruction" and ins == "none")])
    return n_items * total


def check_tr_grid(store: FeatureStore, n_trs: int, tr: float):
    t = store.to_table(columns=["model", "instruction_id", "component", "layer", "pooling", "tr", "onset_s"])
    g = t.group_by(["model", "instruction_id", "component", "layer", "pooling"]).aggregate([("tr", "list")])
    for trs in g.column("tr_list").to_pylist():
        assert sorted(trs) == list(range(n_trs))
    np.testing.assert_allclose(t.column("onset_s").to_numpy(), t.column("tr").to_numpy() * tr)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_causal_lm_end_to_end(family, tiny, tmp_path):
    m = story_manifest()
    uri = tmp_path / "f.lance"
    res = embed(
        m,
        tiny(family),
        ["text.describe", "none"],
        store=uri,
        pooling=TEXT_POOL,
        progress=False,
        batch_size=2,
        model_name=family,
    )
    st = FeatureStore.open(uri)
    n = expected_rows(len(m), ["text.describe", "none"], [(3, TEXT_POOL)])
    assert res.rows_written == st.count_rows() == n == res.plan.rows
    assert st.dim == 64
    assert st.available()["layer"] == [0, 1, 2] and st.available()["component"] == ["lm"]
    assert st.verify()["ok"]
    check_tr_grid(st, len(m), 2.0)
    _, X = st.read(instruction="text.describe", pooling="stimulus", layer=2)
    assert X.shape == (len(m), 64) and np.isfinite(X).all()
    # instruction-conditioned: the same stimulus tokens read under another instruction differ
    _, Y = st.read(instruction="none", pooling="stimulus", layer=2)
    assert not np.allclose(X, Y)


def test_t5_encoder_and_decoder_layers(tiny, tmp_path):
    m = story_manifest()
    uri = tmp_path / "t5.lance"
    embed(
        m, tiny("t5"), ["text.describe"], store=uri, pooling=("stimulus", "tr_words", "last"), progress=False
    )
    st = FeatureStore.open(uri)
    assert st.available()["component"] == ["decoder", "encoder"]
    assert st.count_rows() == len(m) * 2 * 3 * 3
    _, enc = st.read(component="encoder", pooling="stimulus", layer=2)
    _, dec = st.read(component="decoder", pooling="stimulus", layer=2)
    assert enc.shape == dec.shape == (len(m), 64) and not np.allclose(enc, dec)
    check_tr_grid(st, len(m), 2.0)


def test_t5_response_decoder_fed_generation(tiny, tmp_path):
    m = story_manifest(n_trs=2)
    uri = tmp_path / "t5r.lance"
    res = embed(
        m,
        tiny("t5"),
        ["text.summarize"],
        store=uri,
        pooling=("last", "response"),
        max_new_tokens=3,
        progress=False,
    )
    st = FeatureStore.open(uri)
    avail = st.available()
    assert set(avail["pooling"]) == {"last", "response"}
    # encoder: last only; decoder: last and response
    assert st.count_rows() == len(m) * 3 * (1 + 2)
    gens = open_table(res.generations).to_table()
    assert len(gens) == len(m)


def _image_manifest(media):
    return stimuli.image_items(media["images"], stimulus_set="imgs")


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_image_mllm_end_to_end(family, tiny, media, tmp_path):
    m = _image_manifest(media)
    uri = tmp_path / "img.lance"
    ins = ["image.captioning", "image.counting", "none"]
    pool = ("stimulus", "instruction", "last")
    res = embed(
        m,
        tiny(family),
        ins,
        store=uri,
        pooling=pool,
        components=("lm", "vision", "projector"),
        progress=False,
        batch_size=2,
    )
    lm = FeatureStore.open(uri)
    assert (
        lm.count_rows() == expected_rows(len(m), ins, [(3, pool)]) == lm.count_rows(filter="component = 'lm'")
    )
    vis = FeatureStore.open(tmp_path / "img.vision.lance")
    proj = FeatureStore.open(tmp_path / "img.projector.lance")
    assert vis.count_rows() == len(m) * len(ins) * 3 and vis.dim == 32
    assert proj.count_rows() == len(m) * len(ins) * 1 and proj.dim == 64
    assert res.rows_written == lm.count_rows() + vis.count_rows() + proj.count_rows()
    # the vision tower does not read the instruction: identical across instructions
    _, v1 = vis.read(instruction="image.captioning", layer=2)
    _, v2 = vis.read(instruction="image.counting", layer=2)
    np.testing.assert_allclose(v1, v2, atol=1e-6)
    keys, _ = lm.read(instruction="image.counting", pooling="stimulus", layer=1)
    assert sorted(keys.column("stimulus_id").to_pylist()) == sorted(s.stimulus_id for s in m.items)


def _video_manifest(media, n_trs=3, frames=4):
    return stimuli.video_clips(media["video"], tr=1.0, n_trs=n_trs, frames_per_clip=frames, run="run-1")


def test_video_qwen25_vl_end_to_end(tiny, media, tmp_path):
    m = _video_manifest(media)
    uri = tmp_path / "vid.lance"
    ins = ["video.captioning", "video.emotion"]
    pool = ("stimulus", "instruction", "last", "response")
    res = embed(
        m,
        tiny("qwen2.5-vl"),
        ins,
        store=uri,
        pooling=pool,
        components=("lm", "vision"),
        max_new_tokens=3,
        progress=False,
        batch_size=2,
    )
    st = FeatureStore.open(uri)
    assert st.count_rows() == len(m) * len(ins) * 3 * len(pool)
    check_tr_grid(st, len(m), 1.0)
    vis = FeatureStore.open(tmp_path / "vid.vision.lance")
    assert vis.count_rows() == len(m) * len(ins) * 3
    gens = open_table(res.generations).to_table()
    assert len(gens) == len(m) * len(ins)
    assert json.loads(gens.column("decoding")[0].as_py()) == {
        "strategy": "greedy",
        "do_sample": False,
        "max_new_tokens": 3,
        "seed": 0,
    }
    prov = st.provenance
    assert prov["stimulus_spec"]["frames_per_clip"] == 4 and prov["stimulus_spec"]["decoder"] == "pyav"
    assert "<|video_pad|>" in prov["instructions"]["video.captioning"]["prompt"]


@pytest.mark.parametrize(
    ("family", "kind", "components"),
    [
        ("instructblip", "image", ("lm", "vision", "qformer")),
        ("internvl", "image", ("lm", "vision")),
        ("llava-onevision", "image", ("lm", "vision")),
        ("llava-onevision", "video", ("lm", "vision")),
        ("llava-next-video", "video", ("lm", "vision")),
        ("video-llava", "video", ("lm", "vision")),
        ("instructblip-video", "video", ("lm", "qformer")),
    ],
)
def test_more_mllm_families(family, kind, components, tiny, media, tmp_path):
    m = _image_manifest(media) if kind == "image" else _video_manifest(media, n_trs=2)
    ins = ["image.captioning" if kind == "image" else "video.captioning", "none"]
    pool = ("stimulus", "instruction", "last")
    uri = tmp_path / "f.lance"
    res = embed(
        m,
        tiny(family),
        ins,
        store=uri,
        pooling=pool,
        components=components,
        progress=False,
        batch_size=2,
        max_new_tokens=2,
    )
    st = FeatureStore.open(uri)
    assert st.count_rows() == expected_rows(len(m), ins, [(3, pool)])
    for comp in components[1:]:
        extra = FeatureStore.open(tmp_path / f"f.{comp}.lance")
        assert extra.count_rows() == len(m) * len(ins) * len(extra.available()["layer"])
        assert extra.available()["pooling"] == ["all"]
    assert res.rows_written == res.plan.rows
    if kind == "video":
        check_tr_grid(st, len(m), 1.0)
    # the stimulus span is the expanded media tokens: present and instruction-dependent
    _, a = st.read(instruction=ins[0], pooling="stimulus", layer=2)
    _, b = st.read(instruction="none", pooling="stimulus", layer=2)
    assert np.isfinite(a).all() and not np.allclose(a, b)


@pytest.mark.parametrize("family", ["qwen2-audio", "qwen2.5-omni-thinker"])
def test_audio_llm_end_to_end(family, tiny, media, tmp_path):
    m = stimuli.audio_windows(media["audio"], tr=1.0, sample_rate=16000)
    uri = tmp_path / "aud.lance"
    ins = ["audio.captioning", "none"]
    pool = ("stimulus", "instruction", "all")
    embed(m, tiny(family), ins, store=uri, pooling=pool, progress=False, batch_size=2)
    st = FeatureStore.open(uri)
    assert st.count_rows() == expected_rows(len(m), ins, [(3, pool)])
    check_tr_grid(st, len(m), 1.0)


@pytest.mark.parametrize("family", ["qwen2-vl", "internvl"])  # UI-TARS is a Qwen2-VL; InternVL3 -hf
def test_game_frames_with_actions(family, tiny, media, tmp_path):
    frames = media["images"] * 2
    m = stimuli.game_windows(
        frames,
        np.arange(6) * 0.5,
        tr=1.0,
        frames_per_window=2,
        actions=[(0.2, "LEFT"), (1.4, "FIRE")],
        run="run-1",
    )
    uri = tmp_path / "game.lance"
    ins = ["game.action.next-move", "game.reasoning.goal"]
    embed(m, tiny(family), ins, store=uri, pooling=("stimulus", "instruction"), progress=False)
    st = FeatureStore.open(uri)
    assert st.count_rows() == len(m) * 2 * 3 * 2
    check_tr_grid(st, len(m), 1.0)


@pytest.mark.parametrize(("family", "kind"), [("llama", "text"), ("llava", "image"), ("qwen2.5-vl", "video")])
def test_batch_equals_single_items(family, kind, tiny, media, tmp_path):
    m = {
        "text": story_manifest,
        "image": lambda: _image_manifest(media),
        "video": lambda: _video_manifest(media),
    }[kind]()
    ins = ["none", "video.captioning" if kind == "video" else "image.captioning"]
    out = {}
    for bs in (1, 3):
        uri = tmp_path / f"b{bs}.lance"
        embed(
            m,
            tiny(family),
            ins,
            store=uri,
            pooling=("stimulus", "instruction", "last", "all"),
            progress=False,
            batch_size=bs,
        )
        out[bs] = FeatureStore.open(uri).read()
    (k1, x1), (k3, x3) = out[1], out[3]
    assert k1.equals(k3)
    np.testing.assert_allclose(x1, x3, rtol=1e-4, atol=1e-5)


def test_deterministic_across_runs(tiny, tmp_path):
    m = story_manifest(n_trs=3)
    arrays, texts = [], []
    for run in range(2):
        uri = tmp_path / f"d{run}.lance"
        res = embed(
            m,
            tiny("qwen2"),
            ["text.describe"],
            store=uri,
            pooling=("stimulus", "response"),
            max_new_tokens=4,
            progress=False,
            seed=7,
        )
        arrays.append(FeatureStore.open(uri).read()[1])
        texts.append(
            open_table(res.generations).to_table().sort_by("stimulus_id").column("token_ids").to_pylist()
        )
    np.testing.assert_array_equal(arrays[0], arrays[1])
    assert texts[0] == texts[1]


RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from brainalign.features.stimuli import Manifest
    from brainalign.features.extract import embed, load_adapter
    model, manifest, uri, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    adapter = load_adapter(model)
    forward, calls = adapter.forward, [0]
    def dying_forward(*a, **k):
        calls[0] += 1
        if kill_after and calls[0] > kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill: no cleanup, no final flush
        return forward(*a, **k)
    adapter.forward = dying_forward
    res = embed(Manifest.load(manifest), adapter, ["text.describe", "none"], store=uri, batch_size=2,
                pooling=("stimulus", "last"), flush_rows=1, progress=False, model_name="m")
    print(res.units_skipped, res.units_written)
""")


def test_resume_after_killed_run(tiny, tmp_path):
    model = tiny("llama")
    m = story_manifest(n_trs=7)
    mpath = m.save(tmp_path / "manifest.json")
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    uri = tmp_path / "resume.lance"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    killed = subprocess.run(
        [sys.executable, str(script), str(model), str(mpath), str(uri), "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = FeatureStore.open(uri).count_rows()
    total = len(m) * 2 * 3 * 2
    assert 0 < partial < total
    # rerun in this process (same code path as the CLI): resume skips the committed units
    resumed = embed(
        stimuli.Manifest.load(mpath),
        model,
        ["text.describe", "none"],
        store=uri,
        batch_size=2,
        pooling=("stimulus", "last"),
        flush_rows=1,
        progress=False,
        model_name="m",
    )
    skipped, written = resumed.units_skipped, resumed.units_written
    assert skipped > 0 and skipped + written == len(m) * 2
    st = FeatureStore.open(uri)
    keys = st.to_table(columns=["key"]).column("key")
    assert len(keys) == total == len(pc.unique(keys))
    assert st.verify()["ok"]
    # the resumed table equals an uninterrupted run
    clean = tmp_path / "clean.lance"
    embed(
        m,
        model,
        ["text.describe", "none"],
        store=clean,
        pooling=("stimulus", "last"),
        progress=False,
        model_name="m",
    )
    np.testing.assert_allclose(st.read()[1], FeatureStore.open(clean).read()[1], atol=1e-5)
    # a third run finds everything done
    again = embed(
        m,
        model,
        ["text.describe", "none"],
        store=uri,
        pooling=("stimulus", "last"),
        progress=False,
        model_name="m",
    )
    assert again.units_written == 0 and again.rows_written == 0


def test_sharded_equals_unsharded(tiny, tmp_path):
    model = tiny("gpt2")
    m = story_manifest(n_trs=5)
    uri = tmp_path / "sharded.lance"
    frag_files = []
    for i in range(3):
        path = tmp_path / f"shard{i}.json"
        embed(
            m,
            model,
            ["text.describe"],
            store=uri,
            shard=f"{i}/3",
            defer_commit=True,
            fragments_path=path,
            pooling=("stimulus", "tr_words"),
            progress=False,
            model_name="gpt2",
        )
        frag_files.append(path)
    # nothing visible before the one commit
    assert FeatureStore.open(uri).count_rows() == 0
    commit_shards(frag_files)
    whole = tmp_path / "whole.lance"
    embed(
        m,
        model,
        ["text.describe"],
        store=whole,
        pooling=("stimulus", "tr_words"),
        progress=False,
        model_name="gpt2",
    )
    (ks, xs), (kw, xw) = FeatureStore.open(uri).read(), FeatureStore.open(whole).read()
    assert ks.equals(kw)
    np.testing.assert_allclose(xs, xw, atol=1e-5)


def test_dry_run_shows_prompts_and_rows(tiny, tmp_path):
    m = story_manifest()
    plan = embed(
        m,
        tiny("qwen2"),
        ["text.describe", "none"],
        store=tmp_path / "x.lance",
        layers=[0, -1],
        pooling=("stimulus", "instruction"),
        dry_run=True,
    )
    assert plan.rows == plan.rows_to_write == len(m) * 2 * (2 + 1)
    assert plan.prompts["text.describe"]["prompt"].startswith("<|im_start|>user\nDescribe what happens")
    assert "{stimulus}" in plan.prompts["none"]["prompt"]
    assert not (tmp_path / "x.lance").exists()


def test_provenance_records_model_prompt_and_versions(tiny, tmp_path):
    import torch
    import transformers

    uri = tmp_path / "p.lance"
    embed(story_manifest(n_trs=2), tiny("llama"), ["text.describe"], store=uri, progress=False)
    prov = FeatureStore.open(uri).provenance
    assert prov["revision"].startswith("local-sha256:")
    assert prov["transformers"] == transformers.__version__ and prov["torch"] == torch.__version__
    assert prov["trust_remote_code"] is False and prov["dtype"] == "float32"
    assert prov["attn_implementation"] in ("sdpa", "eager")
    ins = prov["instructions"]["text.describe"]
    assert len(ins["prompt_sha256"]) == 64 and "[user]" in ins["prompt"]
    assert prov["instruction_registry"]["version"] == "1"
    assert prov["stimulus_spec"]["tr_s"] == 2.0 and prov["code_version"]


def test_layer_selection():
    assert select_layers("all", 5) == [0, 1, 2, 3, 4]
    assert select_layers([0, -1], 5) == [0, 4]
    assert select_layers([0.0, 0.5, 1.0], 29) == [0, 14, 28]
    with pytest.raises(ValueError, match="outside"):
        select_layers([7], 5)


def test_trust_remote_code_is_off_by_default(tiny):
    adapter = load_adapter(tiny("gpt2"))
    assert adapter.trust_remote_code is False and adapter._model_kwargs["use_safetensors"] is True


class ConstantAdapter(Adapter):
    """A model outside transformers: two 'layers' of fixed per-character vectors."""

    model_id = "toy/constant"

    def components(self):
        return {"lm": (2, 4)}

    def render(self, instruction, item):
        from brainalign.features.extract import Rendered

        text = f"{instruction.text}\n{item.text}"
        a = len(instruction.text) + 1
        return Rendered(text, {"instruction": (0, len(instruction.text)), "stimulus": (a, len(text))})

    def forward(self, items, instruction, components, responses=None):
        import torch

        texts = [self.render(instruction, it).text for it in items]
        T = max(len(t) for t in texts)
        h0 = torch.zeros(len(items), T, 4)
        spans = {
            k: torch.zeros(len(items), T, dtype=torch.bool)
            for k in ("stimulus", "instruction", "all", "last")
        }
        for b, t in enumerate(texts):
            h0[b, : len(t), 0] = torch.tensor([float(ord(c)) for c in t])
            r = self.render(instruction, items[b]).spans
            spans["stimulus"][b, r["stimulus"][0] : r["stimulus"][1]] = True
            spans["instruction"][b, : r["instruction"][1]] = True
            spans["all"][b, : len(t)] = True
            spans["last"][b, len(t) - 1] = True
        fb = {k: torch.zeros(len(items), dtype=torch.long) for k in spans}
        return {"lm": States([h0, 2 * h0], spans, fb)}


def test_custom_adapter_interface(tmp_path):
    m = stimuli.text_items(["ab", "xyz"])
    uri = tmp_path / "c.lance"
    embed(m, ConstantAdapter(), ["text.describe"], store=uri, pooling=("stimulus",), progress=False)
    keys, X = FeatureStore.open(uri).read(layer=1)
    want = {"s00000": np.mean([ord(c) for c in "ab"]), "s00001": np.mean([ord(c) for c in "xyz"])}
    for sid, row in zip(keys.column("stimulus_id").to_pylist(), X, strict=True):
        assert row[0] == pytest.approx(2 * want[sid])


def test_feature_store_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import brainalign.features as f; from brainalign.features import instructions, stimuli\n"
        "assert len(instructions.load_registry().family('video')) == 13\n"
        "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None]"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_manifest_roundtrip_video(media, tmp_path):
    m = _video_manifest(media)
    back = stimuli.Manifest.load(m.save(tmp_path / "m.json"))
    assert back.items[1].frame_times == m.items[1].frame_times and back.spec == m.spec
    assert Path(back.items[0].video).exists()
