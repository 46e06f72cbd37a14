"""Method 3, Deep Perceptual Autoencoder: public API, VGG slice, weights fallback, feature statistics, growing, data
protocol, demo-preset record, repro smoke."""
import json, time, warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from uad_notebooks.perceptual import (PerceptualLoss, VGG19_LAYERS, VGG19_STATS, vgg19_layer_index, build_vgg19_features,
                                      load_imagenet_stats, load_vgg19_weights, relative_l1, to_vgg_input)
from uad_notebooks.perceptual_ae import (PerceptualAE, dpa_demo, dpa_nih_pa, dpa_camelyon16, dpa_cifar10, stage_steps,
                                         nih_transform, dpa_datasets, DPA_RECIPES, DEMO_LAYERS, NIH_LAYERS)
from uad_notebooks.hparam_search import subject_folds, cross_validate, choose, grid, confined_anomalies

ROOT = Path(__file__).resolve().parents[1]
SELECTION = ROOT / "benchmarks" / "quality" / "dpa_demo_default" / "selection.json"   # the demo preset's record


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
    """The demo preset is what its record (selection.json beside the demo results) chose on validation: the first
    choice (shallow layers, latent 128), then the later look that re-chose the paper's NIH layers."""
    import uad_notebooks.perceptual_ae as pae
    assert not hasattr(pae, "DEMO_SELECTION")                                           # a record, not a module constant
    rec = json.loads(SELECTION.read_text())
    m = quiet(dpa_demo, vgg_weights="random")
    chosen = rec["chosen"]
    assert m.layers == {int(k): v for k, v in chosen["layers"].items()} == NIH_LAYERS
    assert m.encoder.last[-1].out_channels == chosen["latent_dim"] == 128 and m.loss.value_range == (0.0, 1.0)
    pool = rec["candidates"] + rec["later_look"]["candidates"]
    assert chosen == max(pool, key=lambda c: c["val_auroc"])                            # the rule: best validation AUROC
    first = max(rec["candidates"], key=lambda c: c["val_auroc"])                        # the first look alone chose ...
    assert rec["first_choice"] == first and first["latent_dim"] == 128
    assert {int(k): v for k, v in first["layers"].items()} == DEMO_LAYERS               # ... the shallow layers
    assert [c["val_auroc"] for c in rec["candidates"]] == [0.477, 0.494]
    assert [c["val_auroc"] for c in rec["later_look"]["candidates"]] == [0.564, 0.528, 0.493, 0.51]
    assert "re-chosen" in rec["later_look"]["decision"] and "never used for a choice" in rec["criterion"]
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
    rec = json.loads(SELECTION.read_text())                                              # the run used the recorded choice
    assert metrics["selection"]["record"] == str(SELECTION.relative_to(ROOT))
    assert rec["chosen"]["latent_dim"] == metrics["latent_dim"] and rec["chosen"]["layers"] == metrics["vgg_layers"]
    assert metrics["stats_kind"] == "fitted" and metrics["value_range"] == [0.0, 1.0]
    card = {r["point"]: r for r in metrics["protocol"]}                                  # the demo card: rows, no paper protocol
    assert {"image size", "intensity contract", "VGG19 weights", "VGG feature statistics", "split and its checksums",
            "training length per stage", "selection", "test crop", "metric"} <= set(card)
    assert all(r["match"] is None for r in card.values()) and (out / "protocol.md").exists()
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


def _prepared(tmp_path, name, rows, images, steps, params=None):
    "A prepared folder as data_scripts/<name>.py writes it: PNGs, manifest.csv, provenance.json with the intensity contract."
    from PIL import Image
    from uad_notebooks.data import intensity_record
    (tmp_path / "images").mkdir(exist_ok=True)
    for f, a in images.items(): Image.fromarray(a).save(tmp_path / "images" / f)
    (tmp_path / "manifest.csv").write_text("split,subject,label,image,mask,brain,view\n" + "".join(f"{r},\n" if r.count(",") == 5 else f"{r}\n" for r in rows))
    (tmp_path / "provenance.json").write_text(json.dumps(dict(intensity=intensity_record(name), steps=steps, params=params or {})))
    return str(tmp_path)


def test_camelyon16_patches_stay_rgb_with_the_authors_intensity_map(tmp_path):
    """Camelyon16 is colour pathology: the prepared 192x192 patches reach DPA as 3 x 64 x 64 crops, each channel mapped
    by the authors' x / 255 * 2 - 1 (not min-maxed jointly), the test crop central."""
    rng = np.random.default_rng(0)
    imgs = {f"p{i}.png": (rng.random((192, 192, 3)) * 255).astype(np.uint8) for i in range(4)}
    imgs["p3.png"][..., 0] = 10                                                    # a flat red channel
    rows = [f"{split},slide{i},{label},images/p{i}.png,," for i, (split, label) in enumerate([("train", 0), ("train", 0), ("test", 0), ("test", 1)])]
    d = _prepared(tmp_path, "camelyon16", rows, imgs, [dict(name="rescale", to=192), dict(name="patches", size=768)])
    ds = dpa_datasets("camelyon16", data_dir=d)
    assert ds["val"] is None and ds["value_range"] == (-1.0, 1.0)
    assert ds["test"].images.shape == (2, 3, 64, 64)
    assert ds["train"][0]["image"].shape == (3, 64, 64)
    want = torch.from_numpy(imgs["p3.png"]).permute(2, 0, 1).float()[:, 64:128, 64:128] * 2 / 255 - 1
    assert torch.allclose(ds["test"].images[1], want, atol=1e-6)                   # centre crop, per-channel fixed map
    assert ds["prepared"]["stored_size"] == 192 and ds["intensity"]["name"] == "uint8_to_pm1"


def test_nih_loads_the_prepared_chain_once_with_the_authors_map(tmp_path):
    """NIH images prepared by data_scripts (resize 300, crop 224, [equalise], 64) load as x / 255 * 2 - 1, uncropped
    again; the view must match the prepared equalisation; the paper presets take [-1, 1] and the demo [0, 1]."""
    a = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    rows = ["train,p0,0,images/a.png,,,PA", "test,p1,0,images/a.png,,,PA", "test,p2,1,images/b.png,,,PA"]
    pre = dict(name="preprocess", chain="grey 8-bit -> resize 300 bilinear -> centre crop 224 -> resize 64", equalize=False)
    d = _prepared(tmp_path, "nih_cxr14", rows, {"a.png": a, "b.png": 255 - a}, [pre], dict(img_size=64))
    ds = dpa_datasets("nih_cxr14", data_dir=d, view="pa")
    assert torch.allclose(ds["train"].images[0, 0], torch.from_numpy(a).float() * 2 / 255 - 1, atol=1e-6)
    assert ds["test"].images.shape == (2, 1, 64, 64) and ds["value_range"] == (-1.0, 1.0)
    with pytest.raises(ValueError, match="equalises the AP view only"): dpa_datasets("nih_cxr14", data_dir=d, view="ap")
    assert quiet(dpa_nih_pa, vgg_weights="random").loss.value_range == (-1.0, 1.0)
    assert quiet(dpa_camelyon16, vgg_weights="random").loss.value_range == (-1.0, 1.0)
    assert quiet(dpa_demo, vgg_weights="random").loss.value_range == (0.0, 1.0)


def test_imagenet_weights_use_the_authors_feature_statistics(tmp_path):
    """With ImageNet weights (a weights file or the hub cache) the loss standardises with the authors' ILSVRC2012
    statistics shipped with the package (checksum verified); fit_stats keeps them; a random VGG fits its own."""
    import shutil
    from importlib.resources import files
    shipped = Path(str(files("uad_notebooks").joinpath(VGG19_STATS["file"])))
    import hashlib
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == VGG19_STATS["sha256"]
    st = load_imagenet_stats()
    # the authors' numbers, spot-checked against the original file's magnitudes (relu1_1 std 0.234..1.113, relu4_2 1.569..5.826)
    assert st["relu1_1"][1].min().item() == pytest.approx(0.2336, abs=1e-4) and st["relu4_2"][1].max().item() == pytest.approx(5.8261, abs=1e-4)
    tv = build_vgg19_features(vgg19_layer_index("relu4_2") + 1, seed=5)
    torch.save({f"features.{k}": v for k, v in tv.state_dict().items()}, tmp_path / "vgg19.pth")
    loss = PerceptualLoss("relu3_2", weights=tmp_path / "vgg19.pth", max_layer="relu4_2")
    assert loss.stats_kind == "imagenet" and VGG19_STATS["source_commit"][:7] in loss.stats_source
    assert torch.equal(loss.std_relu3_2, st["relu3_2"][1]) and torch.equal(loss.mean_relu4_2, st["relu4_2"][0])
    hub = tmp_path / "hub" / "checkpoints"; hub.mkdir(parents=True)                   # the same file as the hub cache
    shutil.copy(tmp_path / "vgg19.pth", hub / "vgg19-dcbb9e9d.pth")
    old = torch.hub.get_dir(); torch.hub.set_dir(str(tmp_path / "hub"))
    try: m = dpa_nih_pa()
    finally: torch.hub.set_dir(old)
    assert m.weights_used.startswith("imagenet") and m.loss.stats_kind == "imagenet"
    with pytest.warns(UserWarning, match="kept the authors'"): loss.fit_stats(torch.rand(4, 1, 32, 32))
    assert torch.equal(loss.std_relu3_2, st["relu3_2"][1])
    rnd = PerceptualLoss("relu3_2", weights="random")
    assert rnd.stats_kind == "none" and rnd.fit_stats(torch.rand(4, 1, 32, 32)).stats_kind == "fitted"
    changed = bytearray(shipped.read_bytes()); changed[-300] ^= 1
    (tmp_path / "s.npz").write_bytes(changed)
    with pytest.raises(ValueError, match="SHA-256"): load_imagenet_stats(tmp_path / "s.npz")
