"""bench/domains.py's pure parts: the label-free criteria and the leave-one-dataset-out choice."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("domains", ROOT / "bench" / "domains.py")
domains = importlib.util.module_from_spec(spec)
spec.loader.exec_module(domains)


def test_criteria_on_toy_codes() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=1)
    assign = torch.arange(200) % 2
    x = torch.nn.functional.normalize(centres[assign] + 0.01 * torch.randn(200, 8, generator=g), dim=1)
    assert domains.silhouette(x, assign, 2) > 0.9
    assert domains.silhouette(x, torch.randint(0, 2, (200,), generator=g), 2) < 0.1
    assert domains.rankme(torch.eye(8)) > 7.9 and domains.rankme(x) < 3
    assert domains.snd(x) > domains.snd(torch.nn.functional.normalize(torch.randn(200, 8, generator=g), dim=1))
    a = np.array([[0, 0, 1, 2]])
    assert domains.matched_agreement(a, 2 - a, 3) == 1.0


def test_leave_one_out_choice(tmp_path: Path) -> None:
    """Each left-out dataset gets the setting best on the others, even where another is best on itself."""
    crf = {("a", "s1"): 50, ("a", "s2"): 40, ("b", "s1"): 30, ("b", "s2"): 20, ("c", "s1"): 10, ("c", "s2"): 15}
    rows = []
    for d in "abc":
        for seed in (0, 1):
            for setting in ("backbone_kmeans", "s1", "s2"):
                m = crf.get((d, setting), 25) + seed
                rows.append({"dataset": d, "seed": seed, "setting": setting, "raw": m - 5, "crf": m, "probe": 1.0,
                             **{c: float(m if c == "crf_agree" else -m) for c in domains.CRITERIA
                                if c != "stability"}})
                np.save(tmp_path / f"{d}_{setting}_seed{seed}.npy", np.zeros((1, 2, 2), np.uint8))
    text, lodo, crit, _ = domains.summarize(pd.DataFrame(rows), tmp_path)
    assert lodo.set_index("dataset")["chosen"].to_dict() == {"a": "s1", "b": "s1", "c": "s1"}
    assert lodo.set_index("dataset")["oracle"].to_dict() == {"a": "s1", "b": "s1", "c": "s2"}
    assert lodo.set_index("dataset").loc["a", "head_crf"] == "50.5 ± 0.7"
    agree = crit[crit["criterion"] == "crf_agree"].set_index("dataset")
    assert (agree["regret"] == 0).all() and (agree["spearman"].isna()).all()  # two settings: no Spearman
    loss = crit[crit["criterion"] == "neg_loss"].set_index("dataset")
    assert loss.loc["c", "regret"] == 5
    assert "| c | 2 | s1 |" in text and lodo["rule_crf"].eq("—").all()


def test_stability_kept_where_maps_are_gone(tmp_path: Path) -> None:
    """A setting whose maps are all present gets its stability recomputed; one whose maps of an earlier run are
    gone keeps the value its CSV recorded."""
    rows = [{"dataset": "a", "seed": seed, "setting": s, "stability": 0.25} for s in ("old", "new") for seed in (0, 1)]
    for seed in (0, 1):
        np.save(tmp_path / f"a_new_seed{seed}.npy", np.array([[[0, 0, 1, 1]]], np.uint8) * (1 + seed))
    out = domains.with_stability(pd.DataFrame(rows), tmp_path).set_index(["setting", "seed"])["stability"]
    assert out.loc[("old", 0)] == 0.25 and out.loc[("old", 1)] == 0.25
    assert out.loc[("new", 0)] == 1.0 and out.loc[("new", 1)] == 1.0  # the same partition, relabelled


def test_calibrate_rule_prefers_the_recipes_steps() -> None:
    """The rule compares the 400-step candidates where a seed has both, the 100-step ones otherwise; the
    attracting candidate wins only at or below 0.8 times the default's CRF changes."""
    def row(seed: int, setting: str, agree: float, crf: float) -> dict:
        return {"seed": seed, "setting": setting, "crf_agree": agree, "crf": crf}
    heads = pd.DataFrame([
        row(0, "q_default", 0.9, 10.0), row(0, "q_attract", 0.95, 11.0),          # 0.05 ≤ 0.8 × 0.1: A
        row(0, "q_default_400", 0.9, 20.0), row(0, "q_attract_400", 0.91, 21.0),  # 0.09 > 0.08: D, and it rules
        row(1, "q_default", 0.9, 30.0), row(1, "q_attract", 0.92, 31.0),          # 0.08 ≤ 0.08: A
        row(2, "q_default", 0.9, 40.0)])                                          # no pair: no pick
    out = domains.current_rule(heads)
    assert out["pick"].tolist() == ["D", "A"] and out["crf"].tolist() == [20.0, 31.0]
