"""Figures from the scores table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import pyarrow as pa

from .query import run_query

LAYER_PROFILE_SQL = """
SELECT v.roi, s.instruction_id, s.layer, avg(s.r) AS mean_r, count(*) AS n_voxels
FROM scores s JOIN voxels v ON v.voxel = s.voxel AND v.subject = s.subject
WHERE s.fit = $fit
GROUP BY ALL ORDER BY v.roi, s.instruction_id, s.layer
"""


def layer_profile(root: str | Path, fit: str) -> pa.Table:
    """Mean held-out r per (ROI, instruction, layer) for one fit."""
    return run_query(LAYER_PROFILE_SQL.replace("$fit", "'" + fit.replace("'", "''") + "'"), root)


def plot_layer_profiles(profile: pa.Table, path: str | Path, *, title: str = "") -> Path:
    """One panel per ROI: mean r across layers, one line per instruction. Writes a PNG."""
    rows = profile.to_pylist()
    rois = list(dict.fromkeys(r["roi"] for r in rows))
    instructions = list(dict.fromkeys(r["instruction_id"] for r in rows))
    fig, axes = plt.subplots(1, len(rois), figsize=(3.2 * len(rois), 3.0), sharey=True, squeeze=False)
    for ax, roi in zip(axes[0], rois, strict=True):
        for ins in instructions:
            pts = sorted((r["layer"], r["mean_r"]) for r in rows if r["roi"] == roi and r["instruction_id"] == ins)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=ins)
        ax.set_title(roi)
        ax.set_xlabel("layer")
        ax.axhline(0, color="0.7", lw=0.8)
    axes[0][0].set_ylabel("mean held-out r")
    axes[0][-1].legend(title="instruction", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
