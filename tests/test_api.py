"""The public API: every name `uad_notebooks` exports resolves, and each method has the three faces."""
import importlib

import pytest
import torch

import uad_notebooks

METHODS = {  # name -> constructor kwargs for a (2, 1, 64, 64) input
    "ConvAE": dict(img_size=64),
    "MAEUAD": dict(img_size=64),
    "MemMCMAE": dict(img_size=64),
    "PerceptualAE": dict(img_size=64),
    "MaskedDDPM": dict(img_size=64),
}


@pytest.mark.parametrize("name", uad_notebooks.__all__)
def test_public_name_resolves(name):
    assert getattr(uad_notebooks, name) is not None


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError):
        uad_notebooks.NoSuchThing


@pytest.mark.parametrize("name", METHODS)
def test_method_has_three_faces(name):
    cls = getattr(uad_notebooks, name)
    torch.manual_seed(0)
    model = cls(**METHODS[name]).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        s = model.anomaly_score(x)
        m = model.anomaly_map(x)
    assert s.shape == (2,) and torch.isfinite(s).all()
    assert m.shape == (2, 1, 64, 64) and torch.isfinite(m).all()
    assert callable(model.training_loss)
