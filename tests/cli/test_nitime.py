"""Real fMRI: nitime's event_related_fmri.csv (MT BOLD, six event types, TR 2 s).

The BOLD series is ingested as a responses table (split into six contiguous runs of 560 TRs by
a TR table), the event indicators become a features table, and an FIR fit must recover a
haemodynamic response peaking 4-8 s after the events with held-out r >= 0.35.
"""

from __future__ import annotations

import json
from pathlib import Path

import nitime
import numpy as np

from brainalign.features import FeatureStore, open_table

from .conftest import run_cli

CSV = Path(nitime.__file__).parent / "data" / "event_related_fmri.csv"
TR = 2.0
DELAYS = list(range(0, 9))  # 0..16 s


def test_fir_fit_recovers_hrf_on_real_bold(tmp_path):
    data = np.genfromtxt(CSV, delimiter=",", names=True)
    bold, events = data["bold"], data["events"].astype(int)
    n = bold.size
    assert n == 3360 and set(np.unique(events)) == set(range(7))
    runs = np.repeat(np.arange(1, 7), n // 6).astype(str)
    trs = np.tile(np.arange(n // 6, dtype=np.int32), 6)
    np.save(tmp_path / "bold.npy", bold[:, None].astype(np.float32))
    (tmp_path / "trs.csv").write_text(
        "run,tr\n" + "".join(f"{r},{t}\n" for r, t in zip(runs, trs, strict=True))
    )
    t = tmp_path / "tables"
    res = run_cli(
        "responses",
        "ingest",
        tmp_path / "bold.npy",
        "--tr-table",
        tmp_path / "trs.csv",
        "--tr",
        "2",
        "--dataset",
        "nitime",
        "--subject",
        "sub-mt",
        "--stimulus-set",
        "nitime-events",
        "--root",
        t,
        "--json",
    )
    info = json.loads(res.stdout)
    assert info["n_voxels"] == 1 and len(info["runs"]) == 6 and info["tr_s"] == 2.0

    onehot = (events[:, None] == np.arange(1, 7)[None, :]).astype(np.float32)  # (n, 6) event regressors
    store = FeatureStore.create(
        t / "features.lance", dim=6, provenance={"source": "nitime events", "tr_s": TR}
    )
    store.write(
        {
            "stimulus_set": ["nitime-events"] * n,
            "stimulus_id": [f"{r}-{k}" for r, k in zip(runs, trs, strict=True)],
            "run": runs.tolist(),
            "tr": trs,
            "onset_s": trs * TR,
            "model": ["events"] * n,
            "instruction_id": ["none"] * n,
            "component": ["design"] * n,
            "layer": np.zeros(n, np.int16),
            "pooling": ["indicator"] * n,
        },
        onehot,
    )

    res = run_cli(
        "fit",
        "--root",
        t,
        "--name",
        "fir",
        "--test-run",
        "6",
        "--preset",
        "none",
        "--delays",
        ",".join(map(str, DELAYS)),
        "--folds",
        "blocks:5",
        "--weights",
        tmp_path / "w.npz",
        "--json",
    )
    summary = json.loads(res.stdout)
    assert "cpu" in summary["device"] or "gpu" in summary["device"] or "tpu" in summary["device"]
    assert summary["folds"] == "5 contiguous blocks"
    r = open_table(t / "scores.lance").to_table(columns=["r"]).column("r").to_numpy()
    assert r.shape == (1,) and r[0] >= 0.35, r

    w = np.load(tmp_path / "w.npz")
    coef = w["coef"][0, :, 0].reshape(len(DELAYS), 6)  # (delay, event type)
    hrf = coef.mean(1)
    peak_s = DELAYS[int(np.argmax(hrf))] * TR
    print(f"held-out r {r[0]:.3f}, FIR mean over events by delay {np.round(hrf, 3)}, peak {peak_s} s")
    assert 4.0 <= peak_s <= 8.0, (peak_s, hrf)
    assert hrf[np.argmax(hrf)] > 2 * abs(hrf[0]) and hrf[-1] < 0.5 * hrf.max()  # rises, then decays
