"""The comparison module: the intensity baseline, a recipe, paired tests, and the repro_compare smoke run."""
import numpy as np
import pytest
import torch

from uad_notebooks.compare import (IntensityBaseline, METHODS, STEPS, fit_method, load_splits, paired_tests,
                                   run_comparison, summarize)
from uad_notebooks.evaluate import Predictions, evaluate


def test_intensity_baseline_faces_and_hand_computation():
    x = torch.zeros(2, 1, 5, 5)
    x[0, 0] = torch.arange(25.).view(5, 5) / 25
    x[1, 0, 1:4, 1:4] = torch.tensor([[0.1, 0.9, 0.3], [0.2, 0.5, 0.4], [0.8, 0.6, 0.7]])
    brain = torch.zeros(2, 1, 5, 5)
    brain[0, 0, :, :2] = 1
    brain[1, 0, 1:4, 1:4] = 1
    ib = IntensityBaseline(percentile=90)
    m, s = ib.anomaly_map(x, brain), ib.anomaly_score(x, brain)
    assert m.shape == (2, 1, 5, 5) and s.shape == (2,)
    assert torch.equal(m, x * brain)
    expected = [np.percentile(x[i, 0][brain[i, 0] > 0].numpy(), 90) for i in range(2)]
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-6)
    # without a brain mask the brain is x > brain_threshold: background pixels (0) are left out
    np.testing.assert_allclose(ib.anomaly_score(x[1:])[0].item(), expected[1], rtol=1e-6)
    # smoothing keeps shape and spreads a single bright pixel
    one = torch.zeros(1, 1, 9, 9); one[0, 0, 4, 4] = 1
    sm = IntensityBaseline(sigma=1.0).anomaly_map(one, torch.ones(1, 1, 9, 9))
    assert sm.shape == (1, 1, 9, 9) and sm[0, 0, 4, 4] < 1 and sm[0, 0, 4, 5] > 0
    np.testing.assert_allclose(sm.sum().item(), 1.0, rtol=1e-5)
    with pytest.raises(RuntimeError, match="nothing to train"): ib.training_loss({})
    with pytest.raises(ValueError, match="brain must be"): ib.anomaly_map(x, brain[:, :, :3])


def test_intensity_baseline_evaluates_like_a_method():
    sp = load_splits("demo", size="small")
    r = evaluate(IntensityBaseline(), sp["test"], sp["val"], n_boot=20, progress=False)
    assert 0 <= r["image"]["auroc"] <= 1 and r["pixel"] is not None and "threshold_at_fpr" in r["pixel"]


def test_recipe_trains_a_method_on_the_small_demo(tmp_path):
    sp = load_splits("demo", size="small")
    model, info = fit_method("memmc_mae", sp["train"], budget=2 / STEPS["memmc_mae"]["train"], out_dir=tmp_path, progress=False)
    assert info["steps"] == {"train": 2} and np.isfinite(info["final_loss"]["train"])
    assert (tmp_path / "memmc_mae" / "train" / "last.pt").exists()
    x = sp["test"].images[:2]
    assert model.anomaly_score(x).shape == (2,) and model.anomaly_map(x).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="choose from"): fit_method("nope", sp["train"])
    assert set(METHODS) == {"intensity", "convae", "mae_uad", "memmc_mae", "dpa", "mddpm"}


def test_paired_test_identical_methods_p_is_one():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 15)
    s = rng.normal(size=30) + y
    pred = lambda v: Predictions(v, y, None, None, None, None, [f"s{i // 3}" for i in range(30)])
    res = {"a": {0: dict(pred=pred(s))}, "b": {0: dict(pred=pred(s.copy()))}}
    (row,) = paired_tests(res, n_boot=200)
    assert row["method_a"] == "a" and row["method_b"] == "b" and row["diff"] == 0.0
    assert row["p_value"] == pytest.approx(1.0)


def test_summary_over_seeds():
    sp = load_splits("demo", size="small")
    res = run_comparison(["intensity"], sp, seeds=[0, 1], n_boot=20, progress=False, log=lambda *a: None)
    sm = summarize(res)
    e = sm["intensity"]["image"]["auroc"]
    assert e["n_seeds"] == 1 and e["std"] is None and len(e["per_seed"][0]["ci"]) == 2   # deterministic: one run


def test_repro_compare_smoke(run_repro):
    m, out = run_repro("repro_compare")
    assert m["smoke"] is True and m["dataset"] == "demo"
    assert m["methods"] == list(METHODS)
    for method in METHODS:
        e = m["summary"][method]["image"]["auroc"]
        assert 0 <= e["mean"] <= 1 and e["per_seed"][0]["ci"] is not None
        assert set(m["summary"][method]["pixel"]) == {"auroc", "auprc", "best_dice"}
        assert m["runs"][method][str(m["seeds"][0])]["image"]["n"] == m["n_test"]
    n = len(METHODS)
    assert len(m["paired_tests"]) == n * (n - 1) // 2
    assert all(0 < r["p_value"] <= 1 for r in m["paired_tests"])
    prov = m["provenance"]
    assert prov["params"]["smoke"] is True and prov["git_commit"] and prov["data_manifest_hash"]
    for f in ("table.md", "table.csv", "maps.png", "image_auroc.png", "roc.png"):
        assert (out / f).stat().st_size > 0, f
    assert "| Intensity (no learning) |" in (out / "table.md").read_text()
