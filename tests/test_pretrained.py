"""The shipped trained models: every manifest entry loads (SHA-256 checked, weights_only) and reproduces the scores it
recorded on the small demo test split; a missing or altered file is a clear error."""
import shutil

import numpy as np
import pytest
import torch

from uad_notebooks.pretrained import WEIGHTS_DIR, list_pretrained, load_pretrained, pretrained_info, read_manifest
from uad_notebooks.evaluate import predict
from uad_notebooks.metrics import image_metrics

NAMES = list_pretrained()


def test_models_are_shipped():
    """Every method's demo model is in the package, small (fp16, under 30 MB in all), with its record."""
    assert {"convae/demo", "mae_uad/demo", "memmc_mae/demo", "dpa/demo", "mddpm/demo"} <= set(NAMES)
    man = read_manifest()
    assert sum(e["size_bytes"] for e in man.values()) < 30e6
    for n, e in man.items():
        for k in ("sha256", "factory", "recipe", "selection", "trained", "command", "metrics", "steps"):
            assert k in e, f"{n}: manifest lacks {k}"
        assert e["selection"]["needs_anomalies"] is False and e["trained"]["commit"]
        assert len(e["metrics"]["check"]["scores"]) == e["metrics"]["check"]["n"]


@pytest.fixture(scope="module")
def small_test():
    from uad_notebooks.compare import load_splits
    return load_splits("demo", size="small")["test"]


@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_reproduces_its_recorded_scores(name, small_test):
    method, preset = name.split("/")
    model = load_pretrained(method, preset)
    rec = pretrained_info(method, preset)["metrics"]["check"]
    pred = predict(model, small_test, maps=False, progress=False)
    np.testing.assert_allclose(pred.scores, np.array(rec["scores"]), rtol=1e-3, atol=1e-5)
    auroc = image_metrics(pred.scores, pred.labels)["auroc"]
    assert auroc == pytest.approx(image_metrics(np.array(rec["scores"]), pred.labels)["auroc"], abs=1e-3)


def test_missing_and_altered_files_are_clear_errors(tmp_path):
    name = NAMES[0]
    method, preset = name.split("/")
    e = pretrained_info(method, preset)
    shutil.copy(WEIGHTS_DIR / "manifest.json", tmp_path / "manifest.json")
    with pytest.raises(FileNotFoundError, match="are missing"):
        load_pretrained(method, preset, folder=tmp_path)
    data = bytearray((WEIGHTS_DIR / e["file"]).read_bytes()); data[-1] ^= 1
    (tmp_path / e["file"]).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="differs from the manifest"):
        load_pretrained(method, preset, folder=tmp_path)
    sd = torch.load(WEIGHTS_DIR / e["file"], weights_only=True)       # plain tensors: loads with weights_only
    assert all(v.dtype in (torch.float16, torch.int64, torch.bool) or not v.is_floating_point() for v in sd.values())
