"""The experiment tables built by the workflow: variants × seeds on both tiny demos, sharing cached stages."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY, snakemake

TABLES = Path(__file__).resolve().parent / "data" / "tiny_tables.yaml"
CONFIGS = ("--configfile", TINY, TABLES)  # merged in order over config/config.yaml


@pytest.mark.slow
def test_the_tables_target_builds_main_and_ablation_tables_over_two_seeds(tmp_path):
    out = snakemake(tmp_path, "--cores", "2", *CONFIGS, "--", "tables", configfile=None, timeout=3000)
    assert out.returncode == 0, out.stderr[-4000:]
    tables = tmp_path / "results" / "tables"
    assert sorted(p.name for p in tables.iterdir()) == ["ablation_demo_hard.csv", "ablation_demo_hard.md",
                                                        "main.csv", "main.md"]
    main = pd.read_csv(tables / "main.csv")
    assert set(main["dataset"]) == {"demo", "demo_hard"} and (main["n"] == 2).all()
    assert set(main["probe"]) == {"cluster", "linear", "backbone_kmeans", "backbone_linear"}
    assert main["paper_miou"].isna().all()  # no paper numbers for the demos: blank, not zero
    # The table's means are the means of the runs' own tables.
    runs = [pd.read_csv(tmp_path / "results" / "demo" / "runs" / "default" / f"seed{s}" / "miou.csv") for s in (0, 1)]
    row = main[(main["dataset"] == "demo") & (main["probe"] == "cluster") & main["crf"]].iloc[0]
    seeds = [r[(r["probe"] == "cluster") & r["crf"]]["miou"].iloc[0] for r in runs]
    assert row["miou_mean"] == pytest.approx(sum(seeds) / 2)
    assert "± " in (tables / "main.md").read_text()

    ablation = pd.read_csv(tables / "ablation_demo_hard.csv")
    assert ablation["variant"].tolist() == [
        "default", "default without CRF", "ablate_mlp", "ablate_zero_clamp", "ablate_five_crop",
        "ablate_spatial_centering", "ablate_self", "ablate_knn", "ablate_random"]
    assert (ablation["n"] == 2).all() and ablation["cluster_miou_mean"].between(0, 100).all()
    assert ablation.set_index("variant").loc["ablate_five_crop", "five_crop"]
    assert not ablation.set_index("variant").loc["ablate_knn", "knn"]
    # Only the five-crop ablation extracts again; all other variants share the default's stores.
    features = [p for p in (tmp_path / "results" / "demo_hard" / "features").iterdir() if p.is_dir()]
    assert len(features) == 2
    again = snakemake(tmp_path, "-n", *CONFIGS, "--", "tables", configfile=None)
    assert "Nothing to be done" in again.stdout + again.stderr
