"""The baseline autoencoder and its reproduction notebook (papermill, smoke mode)."""
import json

import pytest
import torch

from uad_notebooks import ConvAE


def test_convae_faces():
    torch.manual_seed(0)
    m = ConvAE(64)
    x = torch.rand(2, 1, 64, 64)
    assert m(x).shape == x.shape
    assert m.anomaly_map(x).shape == (2, 1, 64, 64) and m.anomaly_score(x).shape == (2,)
    assert m.training_loss({"image": x}).ndim == 0
    with pytest.raises(ValueError, match="power of two"): ConvAE(48)
    with pytest.raises(ValueError, match="loss must be"): ConvAE(64, loss="l3")


def test_repro_baseline_smoke(run_repro):
    m, out = run_repro("repro_baseline_ae")
    assert m["method"] == "ConvAE" and m["dataset"] == "demo" and m["smoke"] is True
    for k in ("auroc", "ap", "f1_max", "sens_at_spec_90"): assert 0 <= m["image"][k] <= 1, k
    for k in ("auroc", "auprc", "best_dice", "dice_at_fpr"): assert 0 <= m["pixel"][k] <= 1, k
    p = m["provenance"]
    assert p["params"]["smoke"] is True and p["seed"] == 0 and len(p["data_manifest_hash"]) == 64
    assert p["pretrained_weights"] == "none" and p["torch_version"] == torch.__version__
    for f in ("loss.png", "roc.png", "anomaly_maps.png", "scores.png", "scores_test.csv", "checkpoints/ae/last.pt"):
        assert (out / f).exists(), f
    # A finished run is never overwritten: running again into the same folder is an error.
    import papermill as pm
    from conftest import NBS
    with pytest.raises(pm.PapermillExecutionError, match="already holds finished results"):
        pm.execute_notebook(str(NBS / "repro_baseline_ae.ipynb"), str(out / "again.ipynb"), cwd=str(NBS),
                            parameters=dict(smoke=True, out_dir=str(out)), progress_bar=False, kernel_name="python3")
    assert json.loads((out / "metrics.json").read_text()) == m
