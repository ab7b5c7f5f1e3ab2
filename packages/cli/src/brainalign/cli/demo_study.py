"""The bundled demo study: a short story read aloud, and **simulated** fMRI responses.

Stimuli. ``data/demo_story.txt`` holds 35 sentences. Each of ``n_runs`` runs is a seeded
shuffle of those sentences, read at a word rate of about 2.3 words/s (each word lasts
0.25 s + 0.03 s per letter, with a 0.5 s pause after each sentence), until the run's
``n_trs`` TRs of ``tr`` seconds are filled.

Features. Stored per TR (the mean over the words whose onset falls inside the TR; zeros for a
silent TR) by whatever feature extractor the caller uses. The first slice ships
:func:`hashed_context_features`, a deterministic stand-in for a language model, documented below.

Responses (simulated, not recorded). For voxel ``v`` in a signal ROI driven by layer
``l(v)`` of the features under the instruction ``signal_instruction``::

    s_v(t) = (h * F_l(v) w_v)(t)          h: SPM canonical HRF, w_v ~ N(0, I), F z-scored per run
    y_v(t) = sqrt(rho) s_v(t) / sd(s_v) + sqrt(1 - rho) e_v(t),     e_v ~ N(0, 1) i.i.d.

so ``rho`` is the fraction of variance the true features explain. Voxels of the null ROI are
pure noise (``rho = 0``). Which layer drives which ROI is returned as the ground truth.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import numpy as np

from brainalign.encoders import convolve_hrf

DEMO_TR = 2.0
STIMULUS_SET = "demo-story"


@dataclass(frozen=True)
class Words:
    """Word-level stimulus: one entry per word, runs concatenated."""

    run: np.ndarray  # (n_words,) str
    word: np.ndarray  # (n_words,) str
    onset_s: np.ndarray  # (n_words,) float, seconds from run start
    offset_s: np.ndarray


def story_sentences() -> list[str]:
    text = resources.files("brainalign.cli").joinpath("data/demo_story.txt").read_text()
    return [s.strip() for s in text.splitlines() if s.strip()]


def demo_words(n_runs: int = 4, n_trs: int = 150, tr: float = DEMO_TR, seed: int = 0) -> Words:
    """Word timings for ``n_runs`` runs of ``n_trs`` TRs (see the module docstring)."""
    sentences = [s.rstrip(".").split() for s in story_sentences()]
    rng = np.random.default_rng(seed)
    runs, words, onsets, offsets = [], [], [], []
    end = n_trs * tr - 4.0  # leave the last seconds silent so the response can decay
    for r in range(1, n_runs + 1):
        t = 2.0
        while t < end:
            for k in rng.permutation(len(sentences)):
                for w in sentences[k]:
                    dur = 0.25 + 0.03 * len(w)
                    if t + dur > end:
                        break
                    runs.append(str(r))
                    words.append(w.strip(",.").lower())
                    onsets.append(t)
                    offsets.append(t + dur)
                    t += dur
                t += 0.5
                if t >= end:
                    break
    return Words(np.array(runs), np.array(words), np.array(onsets), np.array(offsets))


def _seeded_normal(name: str, shape: tuple[int, ...]) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).standard_normal(shape)


def hashed_context_features(
    words: Words, instruction: str, *, n_layers: int = 6, dim: int = 32, gain: float = 2.5, bias: float = 1.0
) -> np.ndarray:
    """A deterministic stand-in for a language model, used when no model is available.

    Layer 0 is a per-word random vector ``e_i`` seeded by a hash of the word. Layer 1 reads the
    word and its context ``c_i`` (an exponential moving average of the preceding word vectors
    within the run, time constant 3 words); each deeper layer is a random ``tanh`` layer of
    the one below. The instruction enters every layer as a hashed bias vector ``u_l``::

        h_1 = tanh(gain * W_1 [e_i; c_i] / sqrt(2 dim) + bias * u_1)
        h_l = tanh(gain * W_l h_(l-1) / sqrt(dim) + bias * u_l)

    With ``gain > 1`` the layers are strongly nonlinear functions of each other, so a linear
    encoder can tell them apart, and neighbouring layers stay more alike than distant ones.

    Returns
    -------
    (n_words, n_layers, dim) float32
    """
    E = np.stack([_seeded_normal("word:" + w, (dim,)) for w in words.word])
    decay = np.exp(-1.0 / 3.0)
    C = np.zeros_like(E)
    for i in range(1, len(E)):
        if words.run[i] == words.run[i - 1]:
            C[i] = decay * C[i - 1] + (1 - decay) * E[i - 1]
    out = np.empty((len(E), n_layers, dim), dtype=np.float32)
    out[:, 0] = E
    h = np.hstack([E, C])
    for layer in range(1, n_layers):
        W = _seeded_normal(f"layer:{layer}", (h.shape[1], dim))
        u = _seeded_normal(f"instruction:{instruction}:layer:{layer}", (dim,))
        h = np.tanh(gain * (h @ W) / np.sqrt(h.shape[1]) + bias * u)
        out[:, layer] = h
    return out


def words_to_trs(
    word_features: np.ndarray, words: Words, n_trs: int, tr: float = DEMO_TR
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average word features within each TR window ``[k*tr, (k+1)*tr)`` of each run.

    Returns ``(features (n_runs * n_trs, ...), runs (n,), trs (n,))``; silent TRs are zero.
    """
    run_ids = list(dict.fromkeys(words.run.tolist()))
    feats = np.zeros((len(run_ids) * n_trs, *word_features.shape[1:]), dtype=np.float32)
    counts = np.zeros(len(run_ids) * n_trs)
    for ri, r in enumerate(run_ids):
        m = words.run == r
        k = np.minimum((words.onset_s[m] // tr).astype(int), n_trs - 1) + ri * n_trs
        np.add.at(feats, k, word_features[m])
        np.add.at(counts, k, 1)
    nz = counts > 0
    feats[nz] /= counts[nz].reshape(-1, *([1] * (feats.ndim - 1)))
    runs = np.repeat(run_ids, n_trs)
    trs = np.tile(np.arange(n_trs, dtype=np.int32), len(run_ids))
    return feats, runs, trs


@dataclass(frozen=True)
class SimulatedBrain:
    Y: np.ndarray  # (n_samples, n_voxels) float32
    roi: np.ndarray  # (n_voxels,) ROI label per voxel
    truth: dict[str, int | None]  # ROI -> layer that drives it (None: no signal)
    rho: float


def simulate_responses(
    tr_features: np.ndarray,
    runs: np.ndarray,
    *,
    roi_layers: dict[str, int | None],
    voxels_per_roi: int = 75,
    rho: float = 0.4,
    tr: float = DEMO_TR,
    seed: int = 1,
) -> SimulatedBrain:
    """Simulate BOLD from TR-level features ``(n_samples, n_layers, dim)`` of the signal
    instruction, following the generative model in the module docstring."""
    rng = np.random.default_rng(seed)
    n = len(tr_features)
    cols, labels = [], []
    for roi, layer in roi_layers.items():
        noise = rng.standard_normal((n, voxels_per_roi))
        if layer is None:
            y = noise
        else:
            F = tr_features[:, layer, :].astype(np.float64)
            for r in np.unique(runs):
                m = runs == r
                sd = F[m].std(0)
                F[m] = (F[m] - F[m].mean(0)) / np.where(sd > 0, sd, 1.0)
            s = convolve_hrf(F @ rng.standard_normal((F.shape[1], voxels_per_roi)), tr, groups=runs)
            s = (s - s.mean(0)) / s.std(0)
            y = np.sqrt(rho) * s + np.sqrt(1 - rho) * noise
        cols.append(y)
        labels += [roi] * voxels_per_roi
    return SimulatedBrain(np.hstack(cols).astype(np.float32), np.array(labels), dict(roi_layers), rho)
