"""Method 3, Deep Perceptual Autoencoder: public API, VGG slice, weights fallback, growing, protocol, repro smoke."""
import time, warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from uad_notebooks.perceptual import (PerceptualLoss, VGG19_LAYERS, vgg19_layer_index, build_vgg19_features,
                                      load_vgg19_weights, relative_l1, to_vgg_input)
from uad_notebooks.perceptual_ae import (PerceptualAE, dpa_demo, dpa_nih_pa, dpa_camelyon16, dpa_cifar10, stage_steps,
                                         nih_transform, dpa_datasets, DPA_RECIPES, DEMO_LAYERS, DEMO_SELECTION, NIH_LAYERS)
from uad_notebooks.hparam_search import subject_folds, cross_validate, choose, grid, confined_anomalies


@pytest.fixture
def empty_hub(tmp_path):
    "Point torch hub's cache at an empty folder, so 'imagenet' weights are absent whatever this machine holds."
    old = torch.hub.get_dir(); torch.hub.set_dir(str(tmp_path / "hub"))
    yield
    torch.hub.set_dir(old)


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def test_public_api_forward():
    from uad_notebooks import PerceptualAE as A, PerceptualLoss as L
    assert A is PerceptualAE and L is PerceptualLoss
    m = quiet(dpa_demo, vgg_weights="random")
    x = torch.rand(2, 1, 64, 64)
    assert m.anomaly_score(x).shape == (2,)
    assert m.anomaly_map(x).shape == (2, 1, 64, 64)
    out = m.training_loss({"image": x})
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])


def test_vgg_slice_matches_torchvision():
    from torchvision.models.vgg import make_layers, cfgs
    tv = make_layers(cfgs["E"])
    kinds = {"conv": torch.nn.Conv2d, "relu": torch.nn.ReLU, "pool": torch.nn.MaxPool2d}
    assert len(tv) == len(VGG19_LAYERS)
    for name, mod in zip(VGG19_LAYERS, tv): assert isinstance(mod, kinds[name[:4]])
    ours = build_vgg19_features(vgg19_layer_index("relu4_2") + 1)
    ours.load_state_dict({k: v for k, v in tv.state_dict().items() if int(k.split(".")[0]) < len(ours)})
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for name, (c, s) in {"relu1_2": (64, 64), "relu2_2": (128, 32), "relu3_2": (256, 16), "relu4_2": (512, 8)}.items():
            i = vgg19_layer_index(name)
            assert ours[:i + 1](x).shape == (1, c, s, s)
            assert torch.allclose(ours[:i + 1](x), tv[:i + 1](x), atol=1e-5)


def test_imagenet_fallback_warns_records_and_is_fast(empty_hub):
    t = time.time()
    with pytest.warns(UserWarning, match="RANDOM VGG19"):
        loss = PerceptualLoss("relu2_2", weights="imagenet")
    assert time.time() - t < 30
    assert loss.weights_used.startswith("random") and "fallback" in loss.weights_used
    m = quiet(dpa_demo)
    assert m.weights_used == loss.weights_used


def test_weights_from_file_and_missing_file(tmp_path):
    f = build_vgg19_features(9, seed=3)
    torch.save({f"features.{k}": v for k, v in f.state_dict().items()}, tmp_path / "vgg.pth")
    loss = PerceptualLoss("relu2_2", weights=tmp_path / "vgg.pth")
    assert loss.weights_used.startswith("file")
    assert torch.equal(loss.features[7].weight, f[7].weight)
    with pytest.raises(FileNotFoundError, match="no such file"):
        PerceptualLoss("relu2_2", weights=tmp_path / "nope.pth")


def test_relative_loss_zero_scale_and_detached_denominator():
    loss = PerceptualLoss("relu2_2", weights="random")
    x = torch.rand(3, 1, 32, 32)
    assert torch.equal(loss(x, x, reduction="none"), torch.zeros(3))
    fa, fb = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert torch.allclose(relative_l1(5 * fa, 5 * fb, "none"), relative_l1(fa, fb, "none"))
    fr = fa.clone().requires_grad_()
    relative_l1(fr, fb, "none").sum().backward()
    expected = torch.sign(fa - fb) / 36 / fa.abs().mean((1, 2, 3)).view(-1, 1, 1, 1)
    assert torch.allclose(fr.grad, expected, atol=1e-6)


def test_grey_and_range_convention():
    g = torch.rand(2, 1, 8, 8)
    assert torch.allclose(to_vgg_input(g), to_vgg_input(g * 2 - 1, value_range=(-1, 1)), atol=1e-6)
    assert torch.allclose(to_vgg_input(g), to_vgg_input(g.expand(-1, 3, -1, -1)))


def test_random_vgg_is_seeded():
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    v = PerceptualLoss("relu2_2", weights="random", seed=0)(x, y).item()
    assert v == pytest.approx(PerceptualLoss("relu2_2", weights="random", seed=0)(x, y).item())
    assert v != pytest.approx(PerceptualLoss("relu2_2", weights="random", seed=1)(x, y).item())


def test_growing_through_train_switches_resolution_layer_alpha(tmp_path):
    from uad_notebooks.train import train
    from uad_notebooks.data import ArrayDataset
    ds = ArrayDataset(torch.rand(16, 1, 32, 32), torch.zeros(16))
    m = quiet(PerceptualAE, img_size=32, latent_dim=4, enc_dims=(4,) * 4, dec_dims=(4,) * 4, vgg_weights="random")
    seen = []
    for st, n in stage_steps(m.stages, 2, 4, 2).items():
        m.set_stage(st)
        r = train(m, ds, out_dir=tmp_path, stage=st, max_steps=n, batch_size=8, device="cpu", progress=False, log_every=1)
        seen.append((st, m.res, m.layers[m.res], round(m.alpha, 2), r.history[-1]["res"]))
        assert (tmp_path / st / "last.pt").exists()
        torch.load(tmp_path / st / "last.pt", weights_only=True)
    assert [s[1] for s in seen] == [8, 16, 16, 32, 32]
    assert [s[2] for s in seen] == ["relu1_2", "relu2_2", "relu2_2", "relu3_2", "relu3_2"]
    assert seen[1][3] == 0.75 and seen[0][3] == 1.0          # alpha after the last step of a 4-step fade-in: 3/4
    assert [s[4] for s in seen] == [8.0, 16.0, 16.0, 32.0, 32.0]


def test_presets_shapes_and_budgets():
    pa, cam = quiet(dpa_nih_pa, vgg_weights="random"), quiet(dpa_camelyon16, vgg_weights="random")
    assert pa.encoder(torch.rand(1, 1, 64, 64), 64).shape == (1, 16, 1, 1)
    assert cam.encoder(torch.rand(1, 3, 64, 64), 64).shape == (1, 4, 8, 8)
    assert cam.decoder(torch.rand(1, 4, 8, 8), 64).shape == (1, 3, 64, 64)
    assert sum(stage_steps(pa.stages, 20_000, 20_000, 10_000).values()) == 130_000
    c = quiet(dpa_cifar10, 3, vgg_weights="random")
    assert c.stages == ["stab32"] and c.layers[32] == "relu3_2"
    with pytest.raises(ValueError, match="normal_class"): dpa_cifar10(12)
    assert set(DPA_RECIPES) >= {"nih_pa", "nih_ap", "nih_subset", "camelyon16", "demo"}


def test_demo_preset_follows_its_selection():
    """The demo preset is what DEMO_SELECTION chose on validation; the paper's layers stay one argument away."""
    m = quiet(dpa_demo, vgg_weights="random")
    chosen = DEMO_SELECTION["chosen"]
    assert m.layers == {int(k): v for k, v in chosen["layers"].items()} == NIH_LAYERS
    assert m.encoder.last[-1].out_channels == chosen["latent_dim"]
    pool = DEMO_SELECTION["candidates"] + DEMO_SELECTION["later_look"]["candidates"]
    assert chosen == max(pool, key=lambda c: c["val_auroc"])                            # the rule: best validation AUROC
    assert quiet(dpa_demo, layers=DEMO_LAYERS, vgg_weights="random").layers[64] == "relu1_1"


def test_bad_inputs():
    m = quiet(dpa_demo, vgg_weights="random")
    with pytest.raises(ValueError, match="expected 64x64"): m.anomaly_score(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"): m.anomaly_score(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="not a VGG19 layer"): PerceptualLoss("relu9_9", weights="random")
    with pytest.raises(ValueError, match="view="): nih_transform(torch.rand(1, 1, 300, 300), "lateral")
    with pytest.raises(ValueError, match="needs data_dir"): dpa_datasets("nih_cxr14")
    with pytest.raises(FileNotFoundError, match="no CIFAR-10"): dpa_datasets("cifar10", data_dir="/nonexistent")


def test_protocol_folds_and_choice():
    subs = [f"p{i // 3}" for i in range(30)]
    folds = subject_folds(subs, 3, 0.2, seed=1)
    for f in folds: assert not {subs[i] for i in f["train"]} & {subs[i] for i in f["val"]}
    rows = cross_validate(lambda c, f: dict(val_loss=1 / c["z"], val_auroc=1 - c["z"] / 100), grid(z=[1, 8, 64]), folds, progress=False)
    assert choose(rows, "unsupervised") == 2 and choose(rows, "few_anomaly") == 0
    assert confined_anomalies([1, 1, 0], ["a", "b", ""], "b") == [1]


@pytest.mark.notebook
def test_repro_smoke(run_repro):
    metrics, out = run_repro("repro_perceptual_ae")
    assert metrics["smoke"] is True and metrics["summary"]["n_seeds"] == 1
    assert 0.0 <= metrics["image"]["auroc"] <= 1.0
    assert metrics["vgg_weights"] == metrics["provenance"]["pretrained_weights"]
    assert metrics["vgg_weights"].startswith(("random", "imagenet", "file"))
    assert metrics["feature_stats"].startswith("estimated on")
    for f in ("reconstructions_per_stage.png", "score_hist.png", "roc.png", "loss.png", "scores_test_seed0.csv",
              "scores_val_seed0.csv"):
        assert (out / f).exists(), f
    assert 0.0 <= metrics["per_seed"][0]["val_image"]["auroc"] <= 1.0      # the validation split has both classes
    assert metrics["vgg_layers"] == {str(k): v for k, v in NIH_LAYERS.items()}
    assert metrics["selection"]["chosen"]["latent_dim"] == metrics["latent_dim"]
    # the oracle: the exact lesion-free twin separates perfectly, a blurred one less; our seed's MSE is recorded
    oracle, layer = metrics["oracle"], metrics["vgg_layers"]["64"]
    assert [r["sigma"] for r in oracle][0] == 0 and oracle[0][layer] == 1.0
    assert all(a["mse"] < b["mse"] for a, b in zip(oracle, oracle[1:]))
    assert oracle[-1][layer] < oracle[0][layer] and metrics["per_seed"][0]["test_mse"] > 0
    assert (out / "oracle_sharpness.png").exists()


def test_nih_transform_on_real_images(shared_data):
    from PIL import Image
    d = shared_data / "nih-cxr14-pneumonia-256"
    if not d.exists(): pytest.skip("nih-cxr14-pneumonia-256 is not present")
    files = sorted((d / "normal").glob("*.png"))[:4]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255)[None] for f in files])
    for view in ("pa", "ap"):
        y = nih_transform(x, view)
        assert y.shape == (len(files), 1, 64, 64) and 0 <= y.min() and y.max() <= 1
    assert (nih_transform(x, "ap") - nih_transform(x, "pa")).abs().mean() > 0.01


def test_camelyon16_patches_stay_rgb(tmp_path):
    """Camelyon16 is colour pathology: the prepared 192x192 patches reach DPA as 3 x 64 x 64 crops."""
    import numpy as np
    from PIL import Image
    from uad_notebooks.perceptual_ae import dpa_datasets
    rows = ["split,subject,label,image,mask,brain"]
    for i, (split, label) in enumerate([("train", 0), ("train", 0), ("test", 0), ("test", 1)]):
        Image.fromarray((np.random.rand(192, 192, 3) * 255).astype(np.uint8)).save(tmp_path / f"p{i}.png")
        rows.append(f"{split},slide{i},{label},p{i}.png,,")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    ds = dpa_datasets("camelyon16", data_dir=str(tmp_path))
    assert ds["val"] is None
    assert ds["test"].images.shape == (2, 3, 64, 64)
    assert ds["train"][0]["image"].shape == (3, 64, 64)
