"""core: seeding, devices, strict notebook parameters (also through papermill), safe results and provenance."""
import json

import numpy as np
import pytest
import torch

from uad_notebooks.core import (check_parameters, get_device, prepare_out_dir, provenance, seed_everything,
                                validate_parameters, write_json)

DEFAULTS = "# Default parameters (papermill overrides them with -p NAME VALUE)\nepochs: int = 10\nlr: float = 1e-3\nsmoke = False\nname = 'x'\n"


def test_seed_everything_repeats():
    seed_everything(5); a = torch.rand(4), np.random.rand(3)
    seed_everything(5); b = torch.rand(4), np.random.rand(3)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_seed_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="seed"): seed_everything(bad)


def test_device_errors_name_the_device():
    assert get_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="'gpu0'"): get_device("gpu0")


def test_unknown_parameter_suggests_the_known_one():
    with pytest.raises(ValueError, match="Unknown notebook parameter 'epoch'.*Did you mean 'epochs'"):
        validate_parameters(DEFAULTS, "# Parameters\nepoch = 3\n")


@pytest.mark.parametrize("inj,msg", [("epochs = 'ten'", "expects int"), ("smoke = 1", "expects bool"), ("name = 3", "expects str")])
def test_mistyped_parameter(inj, msg):
    with pytest.raises(ValueError, match=msg): validate_parameters(DEFAULTS, "# Parameters\n" + inj + "\n")


def test_int_accepted_for_float_and_values_returned():
    p = check_parameters([DEFAULTS, "# Parameters\nlr = 1\nepochs = 2\n"])
    assert p == dict(epochs=2, lr=1, smoke=False, name="x")


def test_papermill_misspelled_parameter_is_an_error(tmp_path):
    """Through papermill itself: `-p epoch 3` (for `epochs`) stops the notebook with a clear message."""
    import papermill as pm
    from conftest import NBS
    with pytest.raises(pm.PapermillExecutionError, match="Unknown notebook parameter 'epoch'"):
        pm.execute_notebook(str(NBS / "repro_baseline_ae.ipynb"), str(tmp_path / "o.ipynb"), cwd=str(NBS),
                            parameters=dict(epoch=3, out_dir=str(tmp_path / "o")), progress_bar=False, kernel_name="python3")
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_results_are_never_overwritten(tmp_path):
    write_json({"a": 1}, tmp_path / "metrics.json")
    with pytest.raises(FileExistsError, match="refusing to overwrite"): write_json({"a": 2}, tmp_path / "metrics.json")
    with pytest.raises(FileExistsError, match="finished results"): prepare_out_dir(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1}
    write_json({"a": 2}, tmp_path / "metrics.json", overwrite=True)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 2}


def test_provenance_fields():
    p = provenance({"lr": 0.1}, seed=3, data_hash="h", device="cpu", weights="imagenet")
    for k in ("package_version", "git_commit", "params", "seed", "data_manifest_hash", "device", "torch_version",
              "pretrained_weights", "python_version", "created_at"):
        assert k in p
    assert p["seed"] == 3 and p["pretrained_weights"] == "imagenet" and p["torch_version"] == torch.__version__
