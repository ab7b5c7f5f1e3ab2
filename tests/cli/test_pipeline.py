"""ingest -> fit -> partition -> query -> report on the small study, through the command."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainalign.cli.query import run_query
from brainalign.features import open_table

from .conftest import N_RUNS, N_TRS, run_cli


def test_ingest_wrote_responses_and_voxels(pipeline):
    t = pipeline["tables"]
    resp = open_table(t / "responses.lance")
    assert resp.count_rows() == N_RUNS * N_TRS
    assert resp.schema.field("bold").type.list_size == pipeline["n_voxels"]
    prov = resp.provenance
    assert prov["tr_s"] == 2.0 and prov["space"] == "MNI-toy"
    assert prov["preprocessing"]["zscore_per_run"] is True
    assert set(prov["events"]) == {"1", "2", "3", "4"}
    vox = open_table(t / "voxels.lance").to_table().to_pandas().sort_values("voxel")
    assert list(vox["roi"]) == list(pipeline["roi_of"])
    # coordinates follow the affine
    row = vox.iloc[0]
    assert row["x"] == pytest.approx(3.0 * row["i"] - 6.0) and row["z"] == pytest.approx(3.0 * row["k"] - 4.5)


def test_fit_recovers_driving_layers(pipeline):
    prof = run_query(
        """SELECT v.roi, s.layer, avg(s.r) AS mean_r FROM scores s JOIN voxels v USING (subject, voxel)
           WHERE s.fit = 'main' AND s.model = 'toy/tuned' AND s.instruction_id = 'caption'
           GROUP BY ALL""",
        pipeline["tables"],
    ).to_pandas()
    best = prof.loc[prof.groupby("roi")["mean_r"].idxmax()].set_index("roi")["layer"]
    assert best["early"] == 1 and best["late"] == 3
    assert prof[prof.roi == "null"]["mean_r"].abs().max() < 0.15
    scores = open_table(pipeline["tables"] / "scores.lance")
    assert scores.count_rows() == 2 * 2 * 4 * pipeline["n_voxels"]  # models x instructions x layers x voxels
    assert scores.provenance["test_runs"] == ["4"]


def test_query_mean_r_per_roi_and_layer_matches_pandas(pipeline):
    t = pipeline["tables"]
    res = run_cli(
        "query",
        "--root",
        t,
        "--format",
        "json",
        "SELECT v.roi, s.layer, avg(s.r) AS mean_r FROM scores s JOIN voxels v "
        "ON v.voxel = s.voxel AND v.subject = s.subject WHERE s.fit = 'main' GROUP BY ALL ORDER BY ALL",
    )
    got = pd.DataFrame(json.loads(res.stdout))
    scores = (
        open_table(t / "scores.lance").to_table(columns=["fit", "subject", "voxel", "layer", "r"]).to_pandas()
    )
    vox = open_table(t / "voxels.lance").to_table(columns=["subject", "voxel", "roi"]).to_pandas()
    want = (
        scores[scores.fit == "main"]
        .merge(vox, on=["subject", "voxel"])
        .groupby(["roi", "layer"], as_index=False)["r"]
        .mean()
        .sort_values(["roi", "layer"])
    )
    assert list(got["roi"]) == list(want["roi"]) and list(got["layer"]) == list(want["layer"])
    np.testing.assert_allclose(got["mean_r"], want["r"], rtol=1e-5, atol=1e-6)


def test_query_formats_and_read_only(pipeline, tmp_path):
    t = pipeline["tables"]
    sql = "SELECT instruction_id, text, in_features FROM instructions WHERE in_features ORDER BY 1"
    res = run_cli("query", "--root", t, "--format", "csv", sql)
    assert res.stdout.splitlines()[0] == "instruction_id,text,in_features"
    assert "caption,Describe the scene in one sentence.,True" in res.stdout
    out = tmp_path / "q.parquet"
    run_cli("query", "--root", t, "--format", "parquet", "--output", out, "SELECT * FROM partitions")
    assert len(pd.read_parquet(out)) == 4 * pipeline["n_voxels"]  # cap, vqa, cap&vqa, total
    res = run_cli("query", "--root", t, "SELECT roi, count(*) AS n FROM voxels GROUP BY roi ORDER BY roi")
    assert "early" in res.stdout and "null" in res.stdout
    bad = run_cli("query", "--root", t, "DROP VIEW scores", ok=False)
    assert bad.exit_code == 1 and "read-only" in bad.output


def test_partition_regions_sum_to_total(pipeline):
    p = run_query(
        "SELECT region, voxel, r2 FROM partitions WHERE fit = 'cap-vs-vqa'", pipeline["tables"]
    ).to_pandas()
    wide = p.pivot(index="voxel", columns="region", values="r2")
    assert set(wide.columns) == {"cap", "vqa", "cap&vqa", "total"}
    np.testing.assert_allclose(wide["cap"] + wide["vqa"] + wide["cap&vqa"], wide["total"], atol=1e-5)
    # caption drives the signal ROIs: its unique share beats vqa's there
    roi = dict(zip(range(len(pipeline["roi_of"])), pipeline["roi_of"], strict=True))
    sig = wide[[roi[v] != "null" for v in wide.index]]
    assert sig["cap"].mean() > sig["vqa"].mean() + 0.05


def test_report_page_figures_and_maps(pipeline):
    out = pipeline["report"]
    page = (out / "index.html").read_text()
    for name in ("layer_profiles.png", "instructions.png", "partitions.png", "base_vs_tuned.png"):
        assert (out / name).stat().st_size > 1000 and name in page
    maps = sorted(out.glob("map_*.nii.gz"))
    assert len(maps) == 2 and all((out / m.name.replace(".nii.gz", ".png")).exists() for m in maps)
    img = nib.load(maps[0])
    assert img.shape == (5, 5, 4)
    vol = img.get_fdata()
    assert np.isnan(vol[0, 0, :]).all() and np.isfinite(vol[1:]).all()  # outside the atlas stays empty
    assert "base vs instruction-tuned" in page


def test_report_markdown_and_json(pipeline, tmp_path):
    res = run_cli(
        "report",
        "--root",
        pipeline["tables"],
        "--fit",
        "main",
        "--page",
        "md",
        "--no-maps",
        "--out",
        tmp_path,
        "--json",
    )
    info = json.loads(res.stdout)
    assert info["page"].endswith("index.md")
    md = (tmp_path / "index.md").read_text()
    assert "![layer profile per ROI](layer_profiles.png)" in md and "| roi |" in md
