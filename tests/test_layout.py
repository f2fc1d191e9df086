"""The results layout and the logs and benchmarks that mirror it."""

from stego_steps import layout


def test_folders_fill_the_templates_the_rules_write_with():
    assert layout.run_dir("demo", "default", 0) == "results/demo/runs/default/seed0"
    assert layout.baseline_dir("demo", "bk", 1) == "results/demo/baselines/bk/seed1"
    assert layout.features_dir("demo", "fk") == "results/demo/features/fk"
    assert layout.RUN.format(ds="d", variant="v", seed=2) == layout.run_dir("d", "v", 2)


def test_logs_and_benchmarks_mirror_the_results():
    assert layout.RUN_LOGS == "logs/{ds}/runs/{variant}/seed{seed}"
    assert layout.BASELINE_BENCHMARKS == "benchmarks/{ds}/baselines/{bkey}/seed{seed}"
    assert layout.FEATURE_LOGS == "logs/{ds}/features/{fkey}"
    for results, logs in [(layout.RUN, layout.RUN_LOGS), (layout.BASELINE, layout.BASELINE_LOGS),
                          (layout.FEATURES, layout.FEATURE_LOGS)]:
        assert results.removeprefix("results/") == logs.removeprefix("logs/")


def test_tables_figures_and_shards():
    assert layout.table_name(True) == "miou.csv" and layout.table_name(False) == "clusters.csv"
    assert layout.table_files(True, ["x"]) == ["results/tables/main.csv", "results/tables/main.md",
                                               "results/tables/ablation_x.csv", "results/tables/ablation_x.md"]
    assert layout.table_files(False, []) == []
    run = layout.run_dir("d", "v", 0)
    unlabelled = layout.figure_files(run, False, ["cluster_raw"])
    assert unlabelled == [f"{run}/figures/{n}.png" for n in ("panels", "training", "correlations")]
    labelled = layout.figure_files(run, True, ["cluster_raw"])
    assert labelled[3:] == [f"{run}/figures/confusion_cluster_raw.png", f"{run}/figures/per_class_iou.png"]
    assert layout.shard("1-of-4") == (0, 4) and layout.shard("4-of-4") == (3, 4)
